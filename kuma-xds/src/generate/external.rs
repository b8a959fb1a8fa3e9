//! External services (Kuma's `ExternalService`): services outside the mesh that its proxies
//! send to by `kuma.io/service`, like any other.
//!
//! A mesh's ExternalServices are read with the rest of the mesh-wide inputs
//! ([`ExternalServices::load`]: their TLS data sources are read then, from the mesh's
//! Secrets, inline values or files). How a proxy reaches one depends on the mesh:
//! - directly (`routing.zoneEgress` off): the service's cluster holds the external addresses
//!   (`STRICT_DNS` when one is a domain name, `STATIC` otherwise), and TLS, when the
//!   ExternalService enables it, is originated by the proxy itself ([`origin_cluster`]): one
//!   transport socket per ExternalService, chosen by endpoint metadata, sending `serverName`
//!   (or the host, when it is a domain name) as SNI and verifying the server against `caCert`
//!   (no `caCert`: no verification, as in Kuma);
//! - through the zone egress (`routing.zoneEgress: true`): the cluster's endpoints are this
//!   zone's egresses, reached over mesh mTLS with the SNI `<service>{mesh=<mesh>}` and
//!   accepting only the egress's identity `spiffe://<mesh>/zone-egress`; the egress
//!   terminates that, applies MeshTrafficPermission and connects out as above
//!   ([`super::zone_egress`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, TransportSocketMatch,
};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Metadata, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::UInt32Value;
use kuma_core::manager::ResourceManager;
use kuma_core::model::common::{DataSource as SourceSpec, Tags, is_ip};
use kuma_core::model::external_service::ExternalServiceSpec;
use kuma_core::resource::Resource;
use xds_server::envoy::{any, ordered_map, socket_address, string_struct};

use super::context::Protocol;

/// The `kuma.io/service` of a zone egress's identity: `spiffe://<mesh>/zone-egress`.
pub const ZONE_EGRESS_SERVICE: &str = "zone-egress";

/// The metadata key an external endpoint's transport socket is chosen by (the
/// ExternalService's name).
const MATCH_KEY: &str = "kuma.io/external-service-name";

/// An external service's host with a VIP (Kuma's `1:<host>` VIP entry): a transparent proxy
/// serves `service` on `ip:port`, and kuma-dp's DNS proxy resolves `host` to `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalHost {
    /// The host name (lowercase).
    pub host: String,
    /// Its VIP.
    pub ip: std::net::Ipv4Addr,
    /// The external service behind it.
    pub service: String,
    /// The port it is reached on.
    pub port: u32,
}

/// One ExternalService of a service: where it is and how to speak TLS to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEndpoint {
    /// The ExternalService's name.
    pub name: String,
    /// Its host (a domain name or an IP address).
    pub host: String,
    /// Its port.
    pub port: u32,
    /// Its tags.
    pub tags: Tags,
    /// TLS to originate, when enabled.
    pub tls: Option<OriginTls>,
}

/// TLS a proxy originates to an external service, its data sources read.
#[derive(Clone, PartialEq, Eq)]
pub struct OriginTls {
    /// PEM roots the server must chain to (`None`: the server is not verified).
    pub ca_pem: Option<String>,
    /// PEM client certificate and key to present.
    pub client: Option<(String, String)>,
    /// Let the server renegotiate.
    pub allow_renegotiation: bool,
    /// The SNI (and the name the certificate must carry); default: the host, when a domain.
    pub server_name: Option<String>,
    /// Accept a certificate for any name the CA signed.
    pub skip_hostname_verification: bool,
}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key is a secret: never printed.
        f.debug_struct("OriginTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A mesh's ExternalServices, by the service they provide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalServices {
    services: BTreeMap<String, Vec<ExternalEndpoint>>,
}

impl ExternalServices {
    /// The ExternalServices of `mesh` (`resources`), their TLS data sources read through
    /// `manager`. One whose address does not parse or whose data source cannot be read is
    /// left out, with a warning naming it (as Kuma leaves its endpoint out).
    pub async fn load(manager: &ResourceManager, mesh: &str, resources: &[Resource]) -> Self {
        let mut services: BTreeMap<String, Vec<ExternalEndpoint>> = BTreeMap::new();
        for r in resources {
            let Some(spec) = r.spec_as::<ExternalServiceSpec>() else {
                continue;
            };
            let (Some(service), Some((host, port))) = (spec.service(), spec.host_port()) else {
                continue;
            };
            let tls = match spec.tls() {
                None => None,
                Some(tls) => {
                    let read = |source: &Option<SourceSpec>| {
                        let source = source.clone();
                        async move {
                            match source {
                                None => Ok(None),
                                Some(s) => read_source(manager, mesh, &s).await.map(Some),
                            }
                        }
                    };
                    let loaded = async {
                        let ca_pem = read(&tls.ca_cert).await.map_err(|e| ("caCert", e))?;
                        let cert = read(&tls.client_cert)
                            .await
                            .map_err(|e| ("clientCert", e))?;
                        let key = read(&tls.client_key).await.map_err(|e| ("clientKey", e))?;
                        Ok::<_, (&str, String)>(OriginTls {
                            ca_pem,
                            client: cert.zip(key),
                            allow_renegotiation: tls.allow_renegotiation.unwrap_or(false),
                            server_name: tls.server_name.clone().filter(|s| !s.is_empty()),
                            skip_hostname_verification: tls
                                .skip_hostname_verification
                                .unwrap_or(false),
                        })
                    };
                    match loaded.await {
                        Ok(tls) => Some(tls),
                        Err((field, reason)) => {
                            tracing::warn!(mesh, external_service = %r.meta.name, field, %reason, "external service left out: its TLS data source cannot be read");
                            continue;
                        }
                    }
                }
            };
            services
                .entry(service.to_string())
                .or_default()
                .push(ExternalEndpoint {
                    name: r.meta.name.clone(),
                    host: host.to_string(),
                    port,
                    tags: spec.tags.clone(),
                    tls,
                });
        }
        for endpoints in services.values_mut() {
            endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        }
        ExternalServices { services }
    }

    /// The ExternalServices from already-read endpoints (tests, embedders).
    pub fn from_endpoints(endpoints: impl IntoIterator<Item = (String, ExternalEndpoint)>) -> Self {
        let mut services: BTreeMap<String, Vec<ExternalEndpoint>> = BTreeMap::new();
        for (service, e) in endpoints {
            services.entry(service).or_default().push(e);
        }
        ExternalServices { services }
    }

    /// The ExternalServices providing `service` (`None`: it is not external).
    pub fn get(&self, service: &str) -> Option<&[ExternalEndpoint]> {
        self.services.get(service).map(Vec::as_slice)
    }

    /// Every external service, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[ExternalEndpoint])> {
        self.services
            .iter()
            .map(|(s, e)| (s.as_str(), e.as_slice()))
    }

    /// True when the mesh has none.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The protocol of `service` (`kuma.io/protocol` of its ExternalServices; TCP when they
    /// differ or say nothing).
    pub fn protocol(&self, service: &str) -> Option<Protocol> {
        self.get(service)?
            .iter()
            .map(|e| Protocol::of_tags(&e.tags))
            .reduce(Protocol::common)
    }

    /// The ports `service` listens on: where a transparent proxy serves its VIP.
    pub fn ports(&self, service: &str) -> BTreeSet<u32> {
        self.get(service)
            .into_iter()
            .flatten()
            .map(|e| e.port)
            .collect()
    }
}

/// The text of `source`: a Secret of `mesh`, a file on this host, or inline.
async fn read_source(
    manager: &ResourceManager,
    mesh: &str,
    source: &SourceSpec,
) -> Result<String, String> {
    match kuma_ca::mesh_ca::read_data_source(manager, mesh, source).await {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(match (&source.secret, &source.file) {
            (Some(name), _) => format!("secret {name:?} does not exist in mesh {mesh:?}"),
            (_, Some(path)) => format!("file {path:?} cannot be read"),
            _ => "not valid UTF-8 text".into(),
        }),
        Err(e) => Err(kuma_core::errors::Chain(&e).to_string()),
    }
}

/// The cluster `name` that connects straight to `endpoints` (see the module docs): the
/// addresses inline, one TLS transport socket per ExternalService that enables TLS.
pub fn origin_cluster(name: &str, endpoints: &[ExternalEndpoint]) -> Cluster {
    let by_name = endpoints.iter().any(|e| !is_ip(&e.host));
    let discovery = if by_name {
        DiscoveryType::StrictDns
    } else {
        DiscoveryType::Static
    };
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(&e.host, e.port)),
                ..Default::default()
            })),
            metadata: e.tls.as_ref().map(|_| Metadata {
                filter_metadata: ordered_map([(
                    "envoy.transport_socket_match".to_string(),
                    string_struct([(MATCH_KEY.to_string(), e.name.clone())]),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let transport_socket_matches = endpoints
        .iter()
        .filter_map(|e| {
            let tls = e.tls.as_ref()?;
            Some(TransportSocketMatch {
                name: e.name.clone(),
                r#match: Some(string_struct([(MATCH_KEY.to_string(), e.name.clone())])),
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(SocketConfig::TypedConfig(any(&origin_tls_context(
                        &e.host, tls,
                    )))),
                }),
            })
        })
        .collect();
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(xds_server::envoy::duration(std::time::Duration::from_secs(
            5,
        ))),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket_matches,
        ..Default::default()
    }
}

/// The TLS a proxy originates to `host` (Kuma's): SNI `serverName`, else the host when it
/// is a domain name; with a CA, the server must chain to it and (unless told to skip it)
/// carry the SNI, or the host, as a DNS or IP SAN.
fn origin_tls_context(host: &str, tls: &OriginTls) -> UpstreamTlsContext {
    let sni = tls
        .server_name
        .clone()
        .or_else(|| (!is_ip(host)).then(|| host.to_string()))
        .unwrap_or_default();
    let inline = |pem: &str| {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
            ..Default::default()
        })
    };
    let mut common = CommonTlsContext::default();
    if let Some((cert, key)) = &tls.client {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..Default::default()
        }];
    }
    if let Some(ca) = &tls.ca_pem {
        let expected = if sni.is_empty() { host } else { &sni };
        let names = if tls.skip_hostname_verification {
            Vec::new()
        } else {
            [SanType::Dns, SanType::IpAddress]
                .into_iter()
                .map(|san_type| SubjectAltNameMatcher {
                    san_type: san_type as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(expected.to_string())),
                        ignore_case: false,
                    }),
                    oid: String::new(),
                })
                .collect()
        };
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(ca),
                match_typed_subject_alt_names: names,
                ..Default::default()
            },
        ));
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        allow_renegotiation: tls.allow_renegotiation,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kuma_core::manager::ManagerOptions;
    use kuma_core::resource::parse_yaml;
    use prost::Message as _;

    #[tokio::test]
    async fn external_services_read_their_tls_sources_and_leave_out_those_that_fail() {
        let store = std::sync::Arc::new(kuma_store::MemoryStore::new());
        let manager = ResourceManager::new(store, ManagerOptions::default());
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode("CA PEM");
        manager
            .create(parse_yaml("type: Mesh\nname: default\n").unwrap())
            .await
            .unwrap();
        manager
            .create(
                parse_yaml(&format!(
                    "type: Secret\nmesh: default\nname: ext-ca\ndata: {ca}\n"
                ))
                .unwrap(),
            )
            .await
            .unwrap();
        let resources: Vec<Resource> = [
            "type: ExternalService\nmesh: default\nname: plain\nnetworking: {address: \"10.9.0.1:80\"}\ntags: {kuma.io/service: web-ext, kuma.io/protocol: http}\n",
            "type: ExternalService\nmesh: default\nname: secure\nnetworking:\n  address: api.example.test:443\n  tls: {enabled: true, caCert: {secret: ext-ca}}\ntags: {kuma.io/service: api, kuma.io/protocol: http}\n",
            "type: ExternalService\nmesh: default\nname: broken\nnetworking:\n  address: other.example.test:443\n  tls: {enabled: true, caCert: {secret: missing}}\ntags: {kuma.io/service: other}\n",
        ]
        .iter()
        .map(|y| parse_yaml(y).unwrap())
        .collect();
        let es = ExternalServices::load(&manager, "default", &resources).await;
        let names: Vec<&str> = es.iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["api", "web-ext"], "the broken one is left out");
        let api = &es.get("api").unwrap()[0];
        assert_eq!(api.tls.as_ref().unwrap().ca_pem.as_deref(), Some("CA PEM"));
        assert_eq!(es.protocol("api"), Some(Protocol::Http));
        assert_eq!(es.ports("api"), BTreeSet::from([443]));

        // A domain name: STRICT_DNS, and the TLS socket matched to its endpoint, with SNI and
        // SAN checks on the host.
        let cluster = origin_cluster("api", es.get("api").unwrap());
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        assert_eq!(cluster.transport_socket_matches.len(), 1);
        let socket = cluster.transport_socket_matches[0]
            .transport_socket
            .clone()
            .unwrap();
        let Some(SocketConfig::TypedConfig(config)) = socket.config_type else {
            panic!("typed config");
        };
        let tls = UpstreamTlsContext::decode(config.value.as_slice()).unwrap();
        assert_eq!(tls.sni, "api.example.test");
        let Some(ValidationContextType::ValidationContext(v)) =
            tls.common_tls_context.unwrap().validation_context_type
        else {
            panic!("a validation context");
        };
        assert_eq!(v.match_typed_subject_alt_names.len(), 2);
        // An IP address without TLS: STATIC, no transport socket, no metadata.
        let cluster = origin_cluster("web-ext", es.get("web-ext").unwrap());
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        assert!(cluster.transport_socket_matches.is_empty());
    }
}
