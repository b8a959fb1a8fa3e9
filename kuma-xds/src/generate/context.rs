//! What generators read: the mesh (its Dataplanes indexed by service) and one proxy.

use std::collections::{BTreeMap, BTreeSet};

use kuma_core::model::common::{PROTOCOL_TAG, SERVICE_TAG, Tags};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::{Labels, Resource, ResourceType};
use kuma_core::rules::{MeshPolicies, ProxyRules, ProxyView};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::GenerateError;
use super::external::{ExternalEndpoint, ExternalHost, ExternalServices};
use super::index::MeshIndex;
use super::outbound::{OutboundCache, OutboundContext, OutboundView, SharedOutbounds};
use super::reach::ReachGraph;
use xds_server::cache::EncodedResource;
use xds_server::envoy::load_assignment;

/// What a proxy told the control plane about itself (node metadata from its bootstrap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    /// Envoy's admin port (bound on 127.0.0.1).
    pub admin_port: Option<u32>,
    /// kuma-dp's readiness port (on 127.0.0.1).
    pub readiness_port: Option<u32>,
    /// kuma-dp's work directory, where its access-log pipe lives.
    pub workdir: Option<String>,
}

pub use kuma_core::dataplane_files::{access_log_pipe, dynamic_config_pipe};

/// Mesh mTLS as generation needs it: whether plaintext is still accepted, and the roots every
/// proxy of the mesh trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMtls {
    /// `PERMISSIVE`: inbounds accept plaintext as well as mTLS.
    pub permissive: bool,
    /// The mesh CA's root certificate(s), PEM.
    pub ca_pem: String,
    /// Workload certificates carry one `spiffe://` URI SAN only, so permissions on tags other
    /// than `kuma.io/service` are resolved by the control plane (to the services whose
    /// endpoints carry them) instead of matched against `kuma://` SANs.
    pub strict_spiffe: bool,
    /// Where proxies fetch their secrets: `None` over ADS (Kuma's default), or from the SDS
    /// server behind this static cluster of their bootstrap (an SDS port of its own).
    pub sds_cluster: Option<String>,
}

/// A proxy's workload certificate and its private key (PEM). `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The application protocol of an inbound or a service (`kuma.io/protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Plain TCP (also the default, and the common protocol of a mixed set).
    Tcp,
    /// HTTP/1.1.
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Kafka (proxied as TCP).
    Kafka,
}

impl Protocol {
    /// The protocol a `kuma.io/protocol` tag names (absent or unknown: TCP).
    pub fn of_tags(tags: &Tags) -> Self {
        match tags.get(PROTOCOL_TAG).map(String::as_str) {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            Some("kafka") => Protocol::Kafka,
            _ => Protocol::Tcp,
        }
    }

    /// True for protocols proxied by Envoy's HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// True for protocols that need HTTP/2 towards the upstream.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// The protocol both sides speak: grpc < http2 < tcp, http < tcp, kafka < tcp.
    pub fn common(self, other: Protocol) -> Protocol {
        use Protocol::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Grpc, Http2) | (Http2, Grpc) => Http2,
            _ => Tcp,
        }
    }
}

/// One endpoint of a service: an inbound of some Dataplane of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where other proxies reach it.
    pub ip: String,
    /// The inbound's port.
    pub port: u32,
    /// The inbound's tags (of an endpoint in another zone: the tags its zone ingress
    /// lists).
    pub tags: Tags,
    /// Its weight among the service's endpoints (0: none given). An endpoint in another zone
    /// is that zone's ingress, weighted by the instances behind it.
    pub weight: u32,
}

impl Endpoint {
    /// The zone it is in (`kuma.io/zone`), when its tags say.
    pub fn zone(&self) -> Option<&str> {
        self.tags
            .get(kuma_core::model::common::ZONE_TAG)
            .map(String::as_str)
    }
}

/// One service of the mesh: its ready endpoints, their common protocol, and its endpoints
/// encoded once for every proxy that sends traffic to it.
#[derive(Debug, Clone)]
pub struct Service {
    /// Ready endpoints, sorted by address.
    pub endpoints: Vec<Endpoint>,
    /// The protocol every inbound of the service speaks (TCP when they differ).
    pub protocol: Protocol,
    /// The ports its inbounds listen on, ready or not (a transparent proxy serves the
    /// service's VIP on each).
    pub ports: BTreeSet<u32>,
    /// Under strict SPIFFE, the services naming the certificates of the proxies that provide
    /// this one (each proxy's identity is its first service in name order, see
    /// [`strict_spiffe_service`]).
    pub strict_identities: BTreeSet<String>,
    pub(super) load_assignment: EncodedResource,
}

/// A Dataplane with one inbound at `address:port` carrying `tags`: what stands for something
/// that is not a Dataplane (an external service, a zone proxy) where policies are matched or
/// certificates issued as for proxies.
pub(crate) fn stand_in_dataplane(address: &str, port: u32, tags: &Tags) -> DataplaneSpec {
    use kuma_core::model::dataplane::{Inbound, Networking};
    DataplaneSpec {
        networking: Some(Networking {
            address: Some(address.to_string()),
            inbound: vec![Inbound {
                port,
                tags: tags.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The service in a proxy's strict SPIFFE identity `spiffe://<mesh>/<service>`: the first, in
/// name order, of its inbounds' services (`None` when it has none).
pub fn strict_spiffe_service(dp: &DataplaneSpec) -> Option<&str> {
    dp.inbounds()
        .iter()
        .filter_map(|i| i.tags.get(SERVICE_TAG).map(String::as_str))
        .min()
}

/// What every proxy of a mesh shares during one regeneration of the mesh.
#[derive(Debug)]
pub struct MeshContext<'a> {
    /// The mesh's name.
    pub mesh: &'a str,
    /// The Mesh resource's spec (default when the mesh is not known).
    pub spec: &'a MeshSpec,
    /// Every Dataplane of the mesh, indexed by service.
    index: Cow<'a, MeshIndex>,
    /// The mesh's targetRef policies, prepared for matching.
    pub policies: Arc<MeshPolicies>,
    /// mTLS, when the mesh enables it and its CA is available.
    pub mtls: Option<MeshMtls>,
    /// The VIP of each service that has one.
    pub vips: Arc<BTreeMap<String, std::net::Ipv4Addr>>,
    /// The port of VIP outbounds (Kuma: 80).
    pub vip_port: u32,
    /// The DNS domain VIPs are named in (Kuma: `mesh`).
    pub vip_domain: String,
    /// The mesh's external services (ExternalService resources), by service.
    pub external: Arc<ExternalServices>,
    /// The hosts of its external services with VIPs.
    pub external_hosts: Arc<Vec<ExternalHost>>,
    /// Where this zone's egresses listen: the endpoints of external services (and of other
    /// zones' services) when the mesh routes through the zone egress.
    pub zone_egresses: Arc<Vec<(String, u32)>>,
    /// Which services transparent proxies may reach, when outbounds are trimmed to it.
    reach: Option<Arc<ReachGraph>>,
    /// What is built once for every proxy that needs it.
    builds: Arc<SharedBuilds>,
}

/// What a mesh context builds once for all the proxies that need it: each outbound view's
/// outbounds, and kuma-dp's DNS records for each reachable set. A context starts with its own;
/// contexts of the same inputs may share them (see [`MeshContext::with_shared_builds`]).
#[derive(Default)]
pub struct SharedBuilds {
    outbounds: OutboundCache,
    /// kuma-dp's DNS records (body and tag) by the reachable services they are for.
    dns_records: Mutex<HashMap<Vec<String>, Arc<DnsRecordsBody>>>,
}

impl SharedBuilds {
    /// How many outbound views were built into these (each once).
    pub fn outbound_builds(&self) -> usize {
        self.outbounds.builds()
    }
}

impl std::fmt::Debug for SharedBuilds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuilds")
            .field("outbound_builds", &self.outbound_builds())
            .finish_non_exhaustive()
    }
}

/// kuma-dp's DNS records as served: the body and its tag.
pub(crate) type DnsRecordsBody = (String, String);

static DEFAULT_MESH: std::sync::LazyLock<MeshSpec> = std::sync::LazyLock::new(MeshSpec::default);

impl<'a> MeshContext<'a> {
    /// Indexes `dataplanes` (the whole mesh) by service.
    pub fn new(mesh: &'a str, dataplanes: &[Resource]) -> Self {
        Self::with_index(mesh, Cow::Owned(MeshIndex::new(dataplanes.iter().cloned())))
    }

    /// The context of a mesh whose Dataplanes `index` holds (kept between regenerations, see
    /// [`MeshIndex`]).
    pub fn indexed(mesh: &'a str, index: &'a MeshIndex) -> Self {
        Self::with_index(mesh, Cow::Borrowed(index))
    }

    fn with_index(mesh: &'a str, index: Cow<'a, MeshIndex>) -> Self {
        MeshContext {
            mesh,
            spec: &DEFAULT_MESH,
            index,
            policies: Arc::default(),
            mtls: None,
            vips: Arc::default(),
            vip_port: 80,
            vip_domain: "mesh".into(),
            external: Arc::default(),
            external_hosts: Arc::default(),
            zone_egresses: Arc::default(),
            reach: None,
            builds: Arc::default(),
        }
    }

    /// Uses the Mesh resource's spec (metrics backends, mTLS, ...).
    pub fn with_spec(mut self, spec: &'a MeshSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Gives transparent proxies an outbound per service VIP, on `port`.
    pub fn with_vips(
        mut self,
        vips: impl Into<Arc<BTreeMap<String, std::net::Ipv4Addr>>>,
        port: u32,
    ) -> Self {
        self.vips = vips.into();
        self.vip_port = port;
        self
    }

    /// Names VIPs `<service>.<domain>` in the DNS records given to proxies.
    pub fn with_vip_domain(mut self, domain: &str) -> Self {
        self.vip_domain = domain.trim_end_matches('.').to_string();
        self
    }

    /// Uses the mesh's external services (see [`super::external`]).
    pub fn with_external_services(mut self, external: impl Into<Arc<ExternalServices>>) -> Self {
        self.external = external.into();
        self
    }

    /// Gives transparent proxies an outbound (and a DNS record) per external service host
    /// with a VIP.
    pub fn with_external_hosts(mut self, hosts: impl Into<Arc<Vec<ExternalHost>>>) -> Self {
        self.external_hosts = hosts.into();
        self
    }

    /// Gives the addresses of this zone's egresses (used when the Mesh routes through them).
    pub fn with_zone_egresses(mut self, egresses: impl Into<Arc<Vec<(String, u32)>>>) -> Self {
        self.zone_egresses = egresses.into();
        self
    }

    /// Whether the mesh sends external traffic through the zone egress
    /// (`routing.zoneEgress: true`).
    pub fn through_zone_egress(&self) -> bool {
        self.spec
            .routing
            .as_ref()
            .and_then(|r| r.zone_egress)
            .unwrap_or(false)
    }

    /// The ExternalServices providing `service`, when it is an external service (a service
    /// some Dataplane provides is never one).
    pub fn external_service(&self, service: &str) -> Option<&[ExternalEndpoint]> {
        if self.service(service).is_some() {
            return None;
        }
        self.external.get(service)
    }

    /// Turns mTLS on for the mesh's proxies.
    pub fn with_mtls(mut self, mtls: MeshMtls) -> Self {
        self.mtls = Some(mtls);
        self
    }

    /// Gives transparent proxies without `reachableServices` outbounds only for the services
    /// `graph` lets them reach (`experimental.autoReachableServices`; meaningful under mTLS,
    /// where permissions are enforced).
    pub fn with_reach_graph(mut self, graph: impl Into<Arc<ReachGraph>>) -> Self {
        self.reach = Some(graph.into());
        self
    }

    /// Keeps what this context builds once in `builds`, and uses what they hold already: the
    /// builds of an earlier context of the same mesh, made from the same inputs (the Mesh,
    /// its policies, VIPs, mTLS and reachable-services graph, and its services' Dataplanes).
    /// Keeping that promise is the caller's part; the reconciler shares them between batches
    /// that change none of those.
    pub fn with_shared_builds(mut self, builds: Arc<SharedBuilds>) -> Self {
        self.builds = builds;
        self
    }

    /// The graph transparent proxies' outbounds are trimmed to, if any.
    pub fn reach_graph(&self) -> Option<&ReachGraph> {
        self.reach.as_deref()
    }

    /// Uses `policies` (every targetRef policy of the mesh; other resources are ignored).
    pub fn with_policies<'p>(self, policies: impl IntoIterator<Item = &'p Resource>) -> Self {
        self.with_policy_engine(Arc::new(MeshPolicies::new(policies)))
    }

    /// Uses the mesh's policies as `engine` prepared them (kept while they do not change).
    pub fn with_policy_engine(mut self, engine: Arc<MeshPolicies>) -> Self {
        self.policies = engine;
        self
    }

    /// Every Dataplane of the mesh, by name.
    pub fn dataplanes(&self) -> impl Iterator<Item = &Resource> {
        self.index.dataplanes()
    }

    /// The outbounds of `view`: built by `build` for the first proxy with this view, the same
    /// (shared) for every later one generated with this context.
    pub fn shared_outbounds(
        &self,
        view: &OutboundView,
        build: impl FnOnce(&OutboundContext<'_>) -> Result<SharedOutbounds, GenerateError>,
    ) -> Result<Arc<SharedOutbounds>, GenerateError> {
        self.builds
            .outbounds
            .get_or_build(view, || build(&OutboundContext { mesh: self, view }))
    }

    /// How many distinct outbound views were built into this context's builds (by it, or by
    /// the earlier contexts it shares them with).
    pub fn outbound_builds(&self) -> usize {
        self.builds.outbound_builds()
    }

    /// kuma-dp's DNS records for proxies reaching `reachable` (empty: every service), as
    /// `build` makes them (body, tag): once per context and reachable set.
    pub(crate) fn dns_records(
        &self,
        reachable: &[String],
        build: impl FnOnce() -> (String, String),
    ) -> Arc<DnsRecordsBody> {
        let mut memo = self
            .builds
            .dns_records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(records) = memo.get(reachable) {
            return records.clone();
        }
        let records = Arc::new(build());
        memo.insert(reachable.to_vec(), records.clone());
        records
    }

    /// A service of the mesh.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.index.service(name)
    }

    /// Every service of the mesh, by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.index.services()
    }

    /// Ready endpoints of `service`, sorted.
    pub fn endpoints(&self, service: &str) -> &[Endpoint] {
        self.service(service)
            .map(|s| s.endpoints.as_slice())
            .unwrap_or_default()
    }

    /// The protocol of `service` (TCP when unknown).
    pub fn protocol(&self, service: &str) -> Protocol {
        match self.service(service) {
            Some(s) => s.protocol,
            None => self.external.protocol(service).unwrap_or(Protocol::Tcp),
        }
    }

    /// The endpoints of `service` as a `ClusterLoadAssignment` named after it: encoded once per
    /// mesh when the service exists, built on the spot (empty) otherwise.
    pub fn load_assignment(&self, service: &str) -> EncodedResource {
        match self.service(service) {
            Some(s) => s.load_assignment.clone(),
            None => EncodedResource::from_message(&load_assignment(service, &[])),
        }
    }
}

/// `endpoints` as one locality of `cluster`'s load assignment: each with its weight (none
/// when 0), the locality as [`load_assignment`] makes it (weight 1, no zone yet).
pub(crate) fn weighted_locality<'e>(
    cluster: &str,
    endpoints: impl IntoIterator<Item = &'e Endpoint>,
) -> envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
    let endpoints: Vec<&Endpoint> = endpoints.into_iter().collect();
    let pairs: Vec<(String, u32)> = endpoints.iter().map(|e| (e.ip.clone(), e.port)).collect();
    let mut locality = load_assignment(cluster, &pairs)
        .endpoints
        .into_iter()
        .next()
        .unwrap_or_default();
    for (lb, e) in locality.lb_endpoints.iter_mut().zip(endpoints) {
        lb.load_balancing_weight = (e.weight > 0)
            .then_some(envoy_types::pb::google::protobuf::UInt32Value { value: e.weight });
    }
    locality
}

/// `(ip, port)` pairs of `endpoints`.
pub fn addresses(endpoints: &[Endpoint]) -> Vec<(String, u32)> {
    endpoints.iter().map(|e| (e.ip.clone(), e.port)).collect()
}

/// What a generator sees: one proxy and its mesh.
#[derive(Debug, Clone)]
pub struct ProxyContext<'a> {
    /// The proxy's mesh and what its proxies share.
    pub mesh: &'a MeshContext<'a>,
    /// The proxy's Dataplane name.
    pub name: &'a str,
    /// The proxy's Dataplane labels.
    pub labels: &'a Labels,
    /// The proxy's Dataplane.
    pub dataplane: &'a DataplaneSpec,
    /// What the proxy reported about itself (default when not connected yet).
    pub metadata: ProxyMetadata,
    /// The proxy's workload certificate, when its mesh has mTLS.
    pub identity: Option<&'a WorkloadCertificate>,
}

impl<'a> ProxyContext<'a> {
    /// The context of the Dataplane `resource` (`None` for other types).
    pub fn new(
        mesh: &'a MeshContext<'a>,
        resource: &'a Resource,
        metadata: ProxyMetadata,
    ) -> Option<Self> {
        Some(ProxyContext {
            mesh,
            name: &resource.meta.name,
            labels: &resource.meta.labels,
            dataplane: resource.spec_as()?,
            metadata,
            identity: None,
        })
    }

    /// Gives the proxy its workload certificate.
    pub fn with_identity(mut self, identity: &'a WorkloadCertificate) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The proxy as the policy engine sees it.
    pub fn view(&self) -> ProxyView<'a> {
        ProxyView {
            name: self.name,
            labels: self.labels,
            spec: self.dataplane,
        }
    }

    /// The rules of policy type `rtype` for this proxy's own config: `from` and single-item
    /// rules. Its `to` rules configure outbounds, which see them through
    /// [`OutboundContext::rules`].
    pub fn rules(&self, rtype: ResourceType) -> ProxyRules {
        self.mesh.policies.inbound_rules(rtype, &self.view())
    }

    /// The proxy's address (`127.0.0.1` when it has none).
    pub fn address(&self) -> &'a str {
        self.dataplane
            .networking
            .as_ref()
            .and_then(|n| n.address.as_deref())
            .unwrap_or("127.0.0.1")
    }
}
