//! Kuma config generation: from a Dataplane and its mesh to an xDS [`Snapshot`].
//!
//! This first generator set gives each proxy TCP proxying with Kuma's resource names:
//! - per inbound, listener `inbound:<ip>:<port>` to the local cluster `localhost:<servicePort>`;
//! - per explicit outbound, listener `outbound:<ip>:<port>` to cluster `<service>`, whose
//!   endpoints are every inbound in the mesh tagged with that `kuma.io/service`;
//! - when the proxy's address is not where Envoy's admin binds (127.0.0.1), listener
//!   `kuma:envoy:admin` on `<address>:<admin port>` exposing `/ready` from kuma-dp's readiness
//!   reporter (cluster `kuma:readiness`), plus cluster `kuma:envoy:admin`, as Kuma does.

use std::collections::BTreeMap;

use kuma_core::model::common::SERVICE_TAG;
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::resource::Resource;

use crate::cache::{EncodedResource, Snapshot};
use crate::envoy::{
    eds_cluster, http_route_listener, load_assignment, static_cluster, tcp_proxy_listener,
};

/// Envoy's node id for a Dataplane: `<mesh>.<name>`.
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

/// What a proxy told the control plane about itself (node metadata from its bootstrap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    /// Envoy's admin port (bound on 127.0.0.1).
    pub admin_port: Option<u32>,
    /// kuma-dp's readiness port (on 127.0.0.1).
    pub readiness_port: Option<u32>,
}

/// What every proxy of a mesh shares, computed once per regeneration of the mesh: the
/// endpoints of each service, and each service's outbound cluster and endpoints encoded once
/// (every proxy's snapshot holds the same bytes).
#[derive(Debug)]
pub struct MeshContext<'a> {
    /// The mesh.
    pub mesh: &'a str,
    /// Every Dataplane of the mesh.
    pub dataplanes: &'a [Resource],
    services: BTreeMap<String, ServiceResources>,
}

#[derive(Debug)]
struct ServiceResources {
    endpoints: Vec<(String, u32)>,
    cluster: EncodedResource,
    load_assignment: EncodedResource,
}

impl ServiceResources {
    fn new(service: &str, endpoints: Vec<(String, u32)>) -> Self {
        ServiceResources {
            cluster: EncodedResource::from_message(&eds_cluster(service)),
            load_assignment: EncodedResource::from_message(&load_assignment(service, &endpoints)),
            endpoints,
        }
    }
}

impl<'a> MeshContext<'a> {
    /// Indexes `dataplanes` (the whole mesh) by service, in one pass.
    pub fn new(mesh: &'a str, dataplanes: &'a [Resource]) -> Self {
        let mut endpoints: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
        for dp in dataplanes
            .iter()
            .filter_map(|r| r.spec_as::<DataplaneSpec>())
        {
            for inbound in dp.inbounds() {
                let (Some(service), Some(ip)) = (
                    inbound.tags.get(SERVICE_TAG),
                    reachable_ip(dp, inbound.address.as_deref()),
                ) else {
                    continue;
                };
                endpoints
                    .entry(service)
                    .or_default()
                    .push((ip.to_string(), inbound.port));
            }
        }
        let services = endpoints
            .into_iter()
            .map(|(service, mut list)| {
                list.sort();
                list.dedup();
                (service.to_string(), ServiceResources::new(service, list))
            })
            .collect();
        MeshContext {
            mesh,
            dataplanes,
            services,
        }
    }

    /// Endpoints of `service`: `(ip, inbound port)` of every inbound tagged with it, sorted.
    pub fn endpoints(&self, service: &str) -> &[(String, u32)] {
        self.services
            .get(service)
            .map(|s| s.endpoints.as_slice())
            .unwrap_or_default()
    }

    /// The outbound cluster and endpoints of `service`: shared when the service has endpoints,
    /// built on the spot (empty) when it has none.
    fn outbound_resources(&self, service: &str) -> (EncodedResource, EncodedResource) {
        match self.services.get(service) {
            Some(s) => (s.cluster.clone(), s.load_assignment.clone()),
            None => {
                let s = ServiceResources::new(service, Vec::new());
                (s.cluster, s.load_assignment)
            }
        }
    }
}

/// What a generator sees: one proxy and its mesh.
#[derive(Debug, Clone, Copy)]
pub struct ProxyContext<'a> {
    /// The proxy's mesh and what its proxies share.
    pub mesh: &'a MeshContext<'a>,
    /// The proxy's Dataplane name.
    pub name: &'a str,
    /// The proxy's Dataplane.
    pub dataplane: &'a DataplaneSpec,
    /// What the proxy reported about itself (default when not connected yet).
    pub metadata: ProxyMetadata,
}

/// Turns a proxy's context into its xDS snapshot. Implement it to generate your own config.
pub trait SnapshotGenerator: Send + Sync + 'static {
    /// The snapshot for the proxy.
    fn generate(&self, ctx: &ProxyContext<'_>) -> Snapshot;
}

/// The built-in generators (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultGenerator;

/// Where other proxies reach `inbound` of `dp`: advertised address, inbound address, address.
fn reachable_ip<'a>(dp: &'a DataplaneSpec, inbound_address: Option<&'a str>) -> Option<&'a str> {
    let n = dp.networking.as_ref()?;
    n.advertised_address
        .as_deref()
        .or(inbound_address)
        .or(n.address.as_deref())
}

impl SnapshotGenerator for DefaultGenerator {
    fn generate(&self, ctx: &ProxyContext<'_>) -> Snapshot {
        let dp = ctx.dataplane;
        let address = dp
            .networking
            .as_ref()
            .and_then(|n| n.address.as_deref())
            .unwrap_or("127.0.0.1");
        let mut resources: Vec<(String, EncodedResource)> = Vec::new();
        for inbound in dp.inbounds() {
            let ip = inbound.address.as_deref().unwrap_or(address);
            let workload_ip = inbound.service_address.as_deref().unwrap_or(address);
            let port = inbound.workload_port();
            let cluster = format!("localhost:{port}");
            let listener = format!("inbound:{ip}:{}", inbound.port);
            resources.push((
                cluster.clone(),
                EncodedResource::from_message(&static_cluster(
                    &cluster,
                    &[(workload_ip.to_string(), port)],
                )),
            ));
            let stat = format!("localhost_{port}");
            resources.push((
                listener.clone(),
                EncodedResource::from_message(&tcp_proxy_listener(
                    &listener,
                    ip,
                    inbound.port,
                    &stat,
                    &cluster,
                )),
            ));
        }
        let mut services = BTreeMap::new();
        for outbound in dp.outbounds() {
            let Some(service) = outbound.service() else {
                continue;
            };
            let ip = outbound.address.as_deref().unwrap_or("127.0.0.1");
            let listener = format!("outbound:{ip}:{}", outbound.port);
            resources.push((
                listener.clone(),
                EncodedResource::from_message(&tcp_proxy_listener(
                    &listener,
                    ip,
                    outbound.port,
                    service,
                    service,
                )),
            ));
            services.insert(service.to_string(), ());
        }
        if let (Some(admin), Some(readiness)) =
            (ctx.metadata.admin_port, ctx.metadata.readiness_port)
            && !matches!(address, "127.0.0.1" | "0.0.0.0" | "")
        {
            let loopback = "127.0.0.1".to_string();
            resources.push((
                "kuma:envoy:admin".into(),
                EncodedResource::from_message(&static_cluster(
                    "kuma:envoy:admin",
                    &[(loopback.clone(), admin)],
                )),
            ));
            resources.push((
                "kuma:readiness".into(),
                EncodedResource::from_message(&static_cluster(
                    "kuma:readiness",
                    &[(loopback, readiness)],
                )),
            ));
            let listener = http_route_listener(
                "kuma:envoy:admin",
                address,
                admin,
                "kuma_envoy_admin",
                &[("/ready", "kuma:readiness")],
            );
            resources.push((
                "kuma:envoy:admin".into(),
                EncodedResource::from_message(&listener),
            ));
        }
        for service in services.keys() {
            let (cluster, endpoints) = ctx.mesh.outbound_resources(service);
            resources.push((service.clone(), cluster));
            resources.push((service.clone(), endpoints));
        }
        Snapshot::new(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CLUSTER, ENDPOINT, LISTENER};
    use kuma_core::resource::parse_yaml;

    fn dp(name: &str, address: &str, extra: &str) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn names_follow_kuma() {
        let web = dp(
            "web",
            "10.0.0.1",
            "  inbound:\n  - port: 8080\n    servicePort: 18080\n    tags: {kuma.io/service: web}\n  outbound:\n  - port: 33033\n    tags: {kuma.io/service: backend}\n",
        );
        let b1 = dp(
            "b1",
            "10.0.0.2",
            "  inbound:\n  - port: 9000\n    tags: {kuma.io/service: backend}\n",
        );
        let b2 = dp(
            "b2",
            "10.0.0.3",
            "  advertisedAddress: 192.168.1.3\n  inbound:\n  - port: 9000\n    tags: {kuma.io/service: backend}\n",
        );
        let all = vec![web.clone(), b1, b2];
        let mesh = MeshContext::new("default", &all);
        let metadata = ProxyMetadata {
            admin_port: Some(9901),
            readiness_port: Some(9902),
        };
        let ctx = ProxyContext {
            mesh: &mesh,
            name: "web",
            dataplane: web.spec_as().unwrap(),
            metadata,
        };
        let snap = DefaultGenerator.generate(&ctx);
        let names = |t: &str| {
            snap.get(t)
                .map(|r| r.resources().keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(
            names(LISTENER),
            [
                "inbound:10.0.0.1:8080",
                "kuma:envoy:admin",
                "outbound:127.0.0.1:33033"
            ]
        );
        assert_eq!(
            names(CLUSTER),
            [
                "backend",
                "kuma:envoy:admin",
                "kuma:readiness",
                "localhost:18080"
            ]
        );
        // On 127.0.0.1 the admin listener would clash with Envoy's own admin: none is generated.
        let local = dp(
            "local",
            "127.0.0.1",
            "  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n",
        );
        let ctx = ProxyContext {
            mesh: &mesh,
            name: "local",
            dataplane: local.spec_as().unwrap(),
            metadata,
        };
        let local_snap = DefaultGenerator.generate(&ctx);
        assert!(
            !local_snap
                .get(LISTENER)
                .unwrap()
                .resources()
                .contains_key("kuma:envoy:admin")
        );
        assert_eq!(names(ENDPOINT), ["backend"]);
        assert_eq!(
            mesh.endpoints("backend"),
            [
                ("10.0.0.2".to_string(), 9000),
                ("192.168.1.3".to_string(), 9000)
            ]
        );
        assert!(mesh.endpoints("nobody").is_empty());
        // A second proxy of the mesh with the same outbound gets the very same bytes.
        let twin = DefaultGenerator.generate(&ProxyContext {
            mesh: &mesh,
            name: "web-2",
            dataplane: web.spec_as().unwrap(),
            metadata,
        });
        for t in [CLUSTER, ENDPOINT] {
            let mine = &snap.get(t).unwrap().resources()["backend"];
            let theirs = &twin.get(t).unwrap().resources()["backend"];
            assert!(mine.shares_bytes_with(theirs), "{t} encoded once per mesh");
        }
        assert_eq!(node_id("default", "web"), "default.web");
    }
}
