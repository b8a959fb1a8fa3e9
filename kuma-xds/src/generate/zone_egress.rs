//! A zone egress's config, as Kuma 2.x generates it: one listener on the egress's address and
//! port with a TLS inspector and, for each mesh with mTLS, per external service of the mesh
//! one filter chain matching the SNI the mesh's proxies send (`<service>{mesh=<mesh>}`).
//!
//! Other zones' services of a mesh that routes through the egress (`routing.zoneEgress`) get
//! a chain each too, matching the same kind of SNI: a TCP proxy to the cluster
//! `<mesh>:<service>` of the other zones' ingresses offering it, weighted by the instances
//! behind each. The mesh mTLS passes through untouched, end to end between the proxies.
//!
//! Each chain terminates the mesh's mTLS with the egress's own identity in that mesh
//! (`spiffe://<mesh>/zone-egress`, secrets `identity_cert:secret:<mesh>` and
//! `mesh_ca:secret:<mesh>`), admits only callers that the mesh's MeshTrafficPermissions allow
//! to reach the external service (policies whose top-level targetRef selects its tags, as
//! Kuma matches them on egresses; none: nobody), then proxies HTTP or TCP, as the service's
//! `kuma.io/protocol` says, to the cluster `<mesh>:<service>`, which connects out as
//! [`super::external::origin_cluster`] does. An egress with nothing to serve gets no listener.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::zone::ZoneEgressSpec;
use kuma_core::resource::Resource;
use xds_server::cache::{EncodedResource, Snapshot};
use xds_server::envoy::{cluster_route, listener, load_assignment, tcp_proxy};

use super::BoxError;
use super::context::{
    Endpoint, MeshContext, WorkloadCertificate, stand_in_dataplane, weighted_locality,
};
use super::external::origin_cluster;
use super::index::merge_remote;
use super::mtls::{downstream_context, mesh_secrets, sni};
use super::policies::{MeshFaultInjection, MeshRateLimit, MeshTrafficPermission};
use super::profile::{http_listener, prefix};
use super::resources::{
    ClusterDraft, ClusterRole, InboundInfo, ListenerDraft, ListenerTls, ResourceSet, Terminal,
};
use super::zone_ingress::{eds_resources, sni_passthrough, tls_inspector};
use super::{ProxyContext, ProxyMetadata, ResourceGenerator};

/// One mesh an egress serves: the mesh's context (its external services, policies and mTLS),
/// the egress's certificate in it, and its services in other zones.
pub struct EgressMesh<'a> {
    /// The mesh.
    pub context: &'a MeshContext<'a>,
    /// The egress's identity in the mesh (`spiffe://<mesh>/zone-egress`); without one, its
    /// external services are left out.
    pub identity: Option<&'a WorkloadCertificate>,
    /// The endpoints of its services in other zones (their zones' ingresses), when the mesh
    /// routes to them through the egress.
    pub remote: Option<&'a BTreeMap<String, Vec<Endpoint>>>,
}

/// The name of an egress's cluster for `service` of `mesh` (Kuma's `<mesh>:<service>`).
pub fn cluster_name(mesh: &str, service: &str) -> String {
    format!("{mesh}:{service}")
}

/// The snapshot of the egress `resource` serving `meshes` (those without mTLS are skipped:
/// the egress routes by the SNI of mesh mTLS).
pub fn egress_snapshot(
    resource: &Resource,
    meshes: &[EgressMesh<'_>],
) -> Result<Snapshot, BoxError> {
    let spec = resource
        .spec_as::<ZoneEgressSpec>()
        .ok_or("not a ZoneEgress")?;
    let net = spec
        .networking
        .as_ref()
        .ok_or("the ZoneEgress has no networking")?;
    let address = net.address.as_deref().unwrap_or("0.0.0.0");
    let name = format!("inbound:{address}:{}", net.port);
    let mut egress = listener(&name, address, net.port, TrafficDirection::Inbound);
    egress.stat_prefix = name.replace(':', "_");
    let mut resources: Vec<(String, EncodedResource)> = Vec::new();
    for m in meshes {
        let ctx = m.context;
        let Some(mtls) = &ctx.mtls else {
            continue;
        };
        let mesh = ctx.mesh;
        for (service, endpoints) in m.remote.into_iter().flatten() {
            if endpoints.is_empty() || ctx.external_service(service).is_some() {
                continue;
            }
            let cluster = cluster_name(mesh, service);
            egress
                .filter_chains
                .push(sni_passthrough(service, mesh, &cluster));
            let mut assignment = load_assignment(&cluster, &[]);
            assignment.endpoints = vec![weighted_locality(&cluster, &merge_remote(endpoints))];
            resources.extend(eds_resources(&cluster, &assignment));
        }
        let Some(identity) = m.identity else {
            continue;
        };
        if ctx.external.is_empty() {
            continue;
        }
        let downstream = downstream_context(mesh, None);
        for (service, endpoints) in ctx.external.iter() {
            if ctx.service(service).is_some() {
                continue; // a mesh service of that name wins, as on sidecars
            }
            let cluster = cluster_name(mesh, service);
            let protocol = ctx
                .external
                .protocol(service)
                .unwrap_or(super::Protocol::Tcp);
            let stat_prefix = format!("{service}_{mesh}");
            let mut chain = if protocol.is_http() {
                http_listener(
                    Default::default(),
                    &stat_prefix,
                    &format!("outbound:{service}"),
                    service,
                    vec![cluster_route(prefix("/"), &cluster)],
                )
            } else {
                ListenerDraft {
                    listener: Default::default(),
                    network_filters: Vec::new(),
                    tls: None,
                    terminal: Terminal::Tcp(Box::new(tcp_proxy(&stat_prefix, &cluster))),
                }
            };
            chain.tls = Some(ListenerTls {
                context: downstream.clone(),
                plaintext_too: false,
            });
            let mut tags = endpoints
                .first()
                .map(|e| e.tags.clone())
                .unwrap_or_default();
            tags.insert(SERVICE_TAG.to_string(), service.to_string());
            let chain = apply_inbound_policies(ctx, chain, &cluster, &tags, protocol)?;
            let mut built = chain.build().filter_chains;
            let Some(mut filter_chain) = built.pop() else {
                continue;
            };
            filter_chain.name = stat_prefix;
            filter_chain.filter_chain_match = Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                server_names: vec![sni(service, mesh, &Tags::new())],
                ..Default::default()
            });
            egress.filter_chains.push(filter_chain);
            let draft = ClusterDraft::new(
                origin_cluster(&cluster, endpoints),
                ClusterRole::Outbound {
                    service: service.to_string(),
                },
                protocol,
            );
            resources.push((
                cluster.clone(),
                EncodedResource::from_message(&draft.build()),
            ));
        }
        for secret in mesh_secrets(mesh, identity, &mtls.ca_pem) {
            resources.push((secret.name.clone(), EncodedResource::from_message(&secret)));
        }
    }
    if !egress.filter_chains.is_empty() {
        egress.listener_filters.push(tls_inspector());
        resources.push((name, EncodedResource::from_message(&egress)));
    }
    Ok(Snapshot::new(resources))
}

/// What the policies selecting the external service (tags `tags`) do to its chain: the
/// `from` rules of MeshTrafficPermission (RBAC; none: nobody passes), MeshFaultInjection and
/// MeshRateLimit, as Kuma applies them on egresses. The sidecar generators run over the chain
/// as the one inbound of a stand-in proxy carrying the external service's tags, which is how
/// policies whose top-level targetRef selects those tags (`Mesh`, `MeshSubset`,
/// `MeshService` by name...) find it.
fn apply_inbound_policies(
    ctx: &MeshContext<'_>,
    chain: ListenerDraft,
    cluster: &str,
    tags: &Tags,
    protocol: super::Protocol,
) -> Result<ListenerDraft, BoxError> {
    const PORT: u32 = 1;
    const LISTENER: &str = "egress";
    let spec = stand_in_dataplane("127.0.0.1", PORT, tags);
    let stand_in = Resource::new(ctx.mesh, "zone-egress", spec);
    let proxy = ProxyContext::new(ctx, &stand_in, ProxyMetadata::default())
        .ok_or("the external service's stand-in is not a Dataplane")?;
    let mut rs = ResourceSet::default();
    rs.add_listener(LISTENER, chain);
    rs.inbounds.push(InboundInfo {
        listener: LISTENER.into(),
        cluster: cluster.to_string(),
        port: PORT,
        service: tags.get(SERVICE_TAG).cloned().unwrap_or_default(),
        protocol,
    });
    let generators: [&dyn ResourceGenerator; 3] =
        [&MeshTrafficPermission, &MeshFaultInjection, &MeshRateLimit];
    for g in generators {
        g.apply(&proxy, &mut rs)
            .map_err(|e| format!("{} on the egress: {e}", g.name()))?;
    }
    rs.listeners
        .remove(LISTENER)
        .map(|draft| *draft)
        .ok_or_else(|| "the chain went missing".into())
}
