//! A zone ingress's config, as Kuma 2.x generates it: one listener on the ingress's address
//! and port with a TLS inspector, and per service it offers one filter chain matching the SNI
//! other zones' proxies send (`<service>{mesh=<mesh>}`), a TCP proxy to a cluster of the
//! service's endpoints in this zone (`<mesh>:<service>`). The TLS of mesh mTLS passes through:
//! the ingress holds no certificate and terminates nothing. An ingress offering nothing
//! answers every connection with `{"proxy":"<node id>","zone":"<zone>"}`.
//!
//! What an ingress offers is its ZoneIngress's `availableServices` (kept current by the zone
//! control plane, see [`available_services`]); the endpoints are those of the services' mesh
//! ([`MeshContext::endpoints`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{DataSource, TrafficDirection, data_source};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::zone::{AvailableService, ZoneIngressSpec};
use kuma_core::resource::Resource;
use xds_server::cache::{EncodedResource, Snapshot};
use xds_server::envoy::{any, eds_cluster, listener, load_assignment, tcp_proxy};

use super::context::{MeshContext, addresses};
use super::mtls::sni;

/// The name of an ingress's cluster for `service` of `mesh` (Kuma's `<mesh>:<service>`).
pub fn cluster_name(mesh: &str, service: &str) -> String {
    format!("{mesh}:{service}")
}

/// The services an ingress forwards to, by mesh: what its `availableServices` name.
pub fn offered(spec: &ZoneIngressSpec) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_mesh: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &spec.available_services {
        let (Some(mesh), Some(service)) = (s.mesh.as_deref(), s.tags.get(SERVICE_TAG)) else {
            continue;
        };
        if s.external_service == Some(true) {
            continue; // reached through a zone egress, not an ingress
        }
        by_mesh
            .entry(mesh.to_string())
            .or_default()
            .insert(service.clone());
    }
    by_mesh
}

/// The snapshot of the ingress `resource` (node id `node_id`) in `zone`, with the endpoints
/// of the meshes it offers services of (`meshes`, by name; a mesh missing there offers
/// nothing).
pub fn ingress_snapshot(
    resource: &Resource,
    node_id: &str,
    zone: &str,
    meshes: &BTreeMap<String, &MeshContext<'_>>,
) -> Option<Snapshot> {
    let spec = resource.spec_as::<ZoneIngressSpec>()?;
    let net = spec.networking.as_ref()?;
    let address = net.address.as_deref().unwrap_or("0.0.0.0");
    let name = format!("inbound:{address}:{}", net.port);
    let mut ingress = listener(&name, address, net.port, TrafficDirection::Inbound);
    ingress.stat_prefix = name.replace(':', "_");
    let mut resources: Vec<(String, EncodedResource)> = Vec::new();
    for (mesh, services) in offered(spec) {
        let Some(context) = meshes.get(&mesh) else {
            continue;
        };
        for service in services {
            let cluster = cluster_name(&mesh, &service);
            ingress
                .filter_chains
                .push(sni_passthrough(&service, &mesh, &cluster));
            let endpoints = addresses(context.endpoints(&service));
            resources.extend(eds_resources(
                &cluster,
                &load_assignment(&cluster, &endpoints),
            ));
        }
    }
    if ingress.filter_chains.is_empty() {
        ingress.filter_chains.push(direct_response(node_id, zone));
    } else {
        ingress.listener_filters.push(tls_inspector());
    }
    resources.push((name, EncodedResource::from_message(&ingress)));
    Some(Snapshot::new(resources))
}

/// A filter chain for connections whose TLS names `service` of `mesh` (the SNI
/// `<service>{mesh=<mesh>}`): a TCP proxy to `cluster`, the TLS passing through.
pub(crate) fn sni_passthrough(service: &str, mesh: &str, cluster: &str) -> FilterChain {
    FilterChain {
        name: format!("{service}_{mesh}"),
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            server_names: vec![sni(service, mesh, &Tags::new())],
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(FilterConfig::TypedConfig(any(&tcp_proxy(cluster, cluster)))),
        }],
        ..Default::default()
    }
}

/// The listener filter that reads the SNI of incoming TLS.
pub(crate) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The EDS cluster `cluster` and its endpoints `assignment`, encoded.
pub(crate) fn eds_resources(
    cluster: &str,
    assignment: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> [(String, EncodedResource); 2] {
    [
        (
            cluster.to_string(),
            EncodedResource::from_message(assignment),
        ),
        (
            cluster.to_string(),
            EncodedResource::from_message(&eds_cluster(cluster)),
        ),
    ]
}

/// Kuma's answer of an ingress that offers nothing.
fn direct_response(node_id: &str, zone: &str) -> FilterChain {
    let body = serde_json::json!({"proxy": node_id, "zone": zone}).to_string();
    FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.direct_response".into(),
            config_type: Some(FilterConfig::TypedConfig(any(&DirectResponse {
                response: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(body)),
                    ..Default::default()
                }),
            }))),
        }],
        ..Default::default()
    }
}

/// What a zone's ingresses offer, as Kuma's zone control plane lists it: per mesh, per tag set
/// of ready inbounds (tags whose keys start with one of `tag_filters` only, when it is not
/// empty; `kuma.io/service` always), how many such inbounds there are; sorted by mesh, then by
/// tags.
pub fn available_services<'a>(
    dataplanes: impl IntoIterator<Item = &'a Resource>,
    tag_filters: &[String],
) -> Vec<AvailableService> {
    let mut counts: BTreeMap<(String, Vec<(String, String)>), u32> = BTreeMap::new();
    for dp in dataplanes {
        let Some(spec) = dp.spec_as::<DataplaneSpec>() else {
            continue;
        };
        for inbound in spec.inbounds() {
            if inbound
                .health
                .as_ref()
                .is_some_and(|h| h.ready == Some(false))
            {
                continue;
            }
            if !inbound.tags.contains_key(SERVICE_TAG) {
                continue;
            }
            let tags: Vec<(String, String)> = inbound
                .tags
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == SERVICE_TAG
                        || tag_filters.is_empty()
                        || tag_filters.iter().any(|f| k.starts_with(f.as_str()))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            *counts.entry((dp.meta.mesh.clone(), tags)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((mesh, tags), instances)| AvailableService {
            tags: tags.into_iter().collect(),
            instances: Some(instances),
            mesh: Some(mesh),
            external_service: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
    use kuma_core::resource::parse_yaml;
    use prost::Message as _;

    fn dataplane(name: &str, ip: &str, service: &str, version: &str, ready: bool) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - port: 80\n    tags: {{kuma.io/service: {service}, version: {version}, team.io/owner: a}}\n    health: {{ready: {ready}}}\n"
        ))
        .unwrap()
    }

    fn listener_of(snapshot: &Snapshot, name: &str) -> EnvoyListener {
        let any = snapshot
            .get("type.googleapis.com/envoy.config.listener.v3.Listener")
            .unwrap()
            .get(name)
            .unwrap()
            .to_any();
        EnvoyListener::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn available_services_count_ready_instances_per_tag_set() {
        let dps = [
            dataplane("b-1", "10.0.0.1", "backend", "v1", true),
            dataplane("b-2", "10.0.0.2", "backend", "v1", true),
            dataplane("b-3", "10.0.0.3", "backend", "v2", true),
            dataplane("b-4", "10.0.0.4", "backend", "v2", false),
        ];
        let all = available_services(&dps, &[]);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].instances, Some(2));
        assert_eq!(all[0].tags.get("version").unwrap(), "v1");
        assert_eq!(all[1].instances, Some(1), "b-4 is not ready");
        // Filtered to `team.io/` tags (the service tag stays): one tag set.
        let filtered = available_services(&dps, &["team.io/".to_string()]);
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].instances, Some(3));
        assert!(!filtered[0].tags.contains_key("version"));
    }

    #[test]
    fn an_ingress_passes_each_services_tls_through_by_sni() {
        let dps = [
            dataplane("b-1", "10.0.0.1", "backend", "v1", true),
            dataplane("b-2", "10.0.0.2", "backend", "v2", true),
        ];
        let mesh = MeshContext::new("default", &dps);
        let mut ingress = parse_yaml(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 10.0.0.9\n  port: 10001\n  advertisedAddress: 192.0.2.9\n  advertisedPort: 10001\n",
        )
        .unwrap();
        let meshes = BTreeMap::from([("default".to_string(), &mesh)]);

        // Nothing offered yet: Kuma's direct response.
        let empty = ingress_snapshot(&ingress, ".ingress-1", "zone-2", &meshes).unwrap();
        let l = listener_of(&empty, "inbound:10.0.0.9:10001");
        assert_eq!(l.filter_chains.len(), 1);
        let Some(FilterConfig::TypedConfig(config)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("a typed config")
        };
        let answer = DirectResponse::decode(config.value.as_slice()).unwrap();
        let Some(data_source::Specifier::InlineString(body)) = answer.response.unwrap().specifier
        else {
            panic!("an inline answer")
        };
        assert_eq!(body, r#"{"proxy":".ingress-1","zone":"zone-2"}"#);

        let kuma_core::resource::Spec::ZoneIngress(spec) = &mut ingress.spec else {
            panic!()
        };
        spec.available_services = available_services(&dps, &[]);
        let snapshot = ingress_snapshot(&ingress, ".ingress-1", "zone-2", &meshes).unwrap();
        let l = listener_of(&snapshot, "inbound:10.0.0.9:10001");
        assert_eq!(
            l.listener_filters[0].name,
            "envoy.filters.listener.tls_inspector"
        );
        // One chain per service (two tag sets of backend share it), matched by SNI.
        assert_eq!(l.filter_chains.len(), 1);
        let chain = &l.filter_chains[0];
        let m = chain.filter_chain_match.as_ref().unwrap();
        assert_eq!(m.server_names, ["backend{mesh=default}"]);
        assert_eq!(m.transport_protocol, "tls");
        assert!(chain.transport_socket.is_none(), "no TLS is terminated");
        assert_eq!(chain.filters[0].name, "envoy.filters.network.tcp_proxy");
        let cla = snapshot
            .get("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment")
            .unwrap();
        assert!(cla.contains("default:backend"));
        let clusters = snapshot
            .get("type.googleapis.com/envoy.config.cluster.v3.Cluster")
            .unwrap();
        assert!(clusters.contains("default:backend"));
    }
}
