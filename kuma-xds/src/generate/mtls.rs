//! Mesh mTLS: the proxy's identity and its mesh's roots as SDS secrets, TLS on inbound
//! listeners and on clusters to mesh services.
//!
//! As Kuma does it:
//! - secrets `identity_cert:secret:<mesh>` (the workload certificate and key) and
//!   `mesh_ca:secret:<mesh>` (the roots), delivered over ADS;
//! - inbound listeners require a client certificate from the mesh: issued by its CA, with a URI
//!   SAN starting `spiffe://<mesh>/`; `PERMISSIVE` serves plaintext on a second filter chain;
//!   HTTP inbounds pass the caller's URI SANs to the workload in `x-forwarded-client-cert`;
//! - clusters to a service present the proxy's certificate, send SNI
//!   `<service>{mesh=<mesh>[,<subset tag>=<value>...]}`, offer ALPN `kuma` and accept only a
//!   peer with URI SAN `spiffe://<mesh>/<service>` (under strict SPIFFE, where a proxy's one SAN
//!   names its first service, the SANs of the proxies providing the service).
//!
//! Runs after the policy generators, so clusters they added are secured too.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::BoolValue;

use super::ResourceGenerator;
use super::context::{ProxyContext, WorkloadCertificate};
use super::outbound::OutboundContext;
use super::resources::{ClusterRole, ListenerTls, ResourceSet};
use xds_server::envoy::{ads_config_source, any};

/// Name of the SDS secret holding a proxy's workload certificate and key.
pub fn identity_secret_name(mesh: &str) -> String {
    format!("identity_cert:secret:{mesh}")
}

/// Name of the SDS secret holding the roots of `mesh`.
pub fn mesh_ca_secret_name(mesh: &str) -> String {
    format!("mesh_ca:secret:{mesh}")
}

/// The SNI a proxy sends to `service` (narrowed to `subset`), as Kuma spells it:
/// `backend{mesh=default,version=v1}` (tags sorted by name).
pub fn sni(service: &str, mesh: &str, subset: &kuma_core::model::common::Tags) -> String {
    let mut tags: Vec<(&str, &str)> = subset
        .iter()
        .filter(|(k, _)| k.as_str() != kuma_core::model::common::SERVICE_TAG)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    tags.push(("mesh", mesh));
    tags.sort();
    let inner: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{service}{{{}}}", inner.join(","))
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// Secret `name`, fetched over ADS or from the SDS server behind `cluster`.
fn sds(name: String, cluster: Option<&str>) -> SdsSecretConfig {
    let sds_config = match cluster {
        None => ads_config_source(),
        Some(cluster) => xds_server::envoy::grpc_config_source(cluster),
    };
    SdsSecretConfig {
        name,
        sds_config: Some(sds_config),
    }
}

fn uri_san(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// The TLS context both directions share: our certificate, the mesh's roots and which peer
/// SANs are accepted.
fn common_context(
    mesh: &str,
    peers: Vec<MatchPattern>,
    sds_cluster: Option<&str>,
) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(identity_secret_name(mesh), sds_cluster)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: peers.into_iter().map(uri_san).collect(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(
                    mesh_ca_secret_name(mesh),
                    sds_cluster,
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A proxy's identity and the roots of `mesh`, as the secrets its TLS contexts name.
pub(crate) fn mesh_secrets(
    mesh: &str,
    identity: &WorkloadCertificate,
    ca_pem: &str,
) -> [Secret; 2] {
    [
        Secret {
            name: identity_secret_name(mesh),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&identity.cert_pem),
                private_key: inline(&identity.key_pem),
                ..Default::default()
            })),
        },
        Secret {
            name: mesh_ca_secret_name(mesh),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca_pem),
                    ..Default::default()
                },
            )),
        },
    ]
}

/// What a listener terminating `mesh`'s mTLS asks of clients: a certificate from the mesh.
pub(crate) fn downstream_context(mesh: &str, sds_cluster: Option<&str>) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(common_context(
            mesh,
            vec![MatchPattern::Prefix(format!("spiffe://{mesh}/"))],
            sds_cluster,
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The secrets and TLS settings of mesh mTLS (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct MutualTls;

impl ResourceGenerator for MutualTls {
    fn name(&self) -> &str {
        "mtls"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(mtls) = &ctx.mesh.mtls else {
            return Ok(());
        };
        let Some(identity) = ctx.identity else {
            return Err("the mesh has mTLS but the proxy has no workload certificate".into());
        };
        let mesh = ctx.mesh.mesh;
        for secret in mesh_secrets(mesh, identity, &mtls.ca_pem) {
            rs.secrets.insert(secret.name.clone(), secret);
        }
        let downstream = downstream_context(mesh, mtls.sds_cluster.as_deref());
        for inbound in &rs.inbounds {
            if let Some(l) = rs.listeners.get_mut(&inbound.listener) {
                l.tls = Some(ListenerTls {
                    context: downstream.clone(),
                    plaintext_too: mtls.permissive,
                });
                // The workload learns its caller's identity from `x-forwarded-client-cert`.
                if let Some(http) = l.http_mut() {
                    http.hcm.forward_client_cert_details =
                        ForwardClientCertDetails::SanitizeSet as i32;
                    http.hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                        uri: true,
                        ..Default::default()
                    });
                }
            }
        }
        Ok(())
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        // Without a certificate the proxy's own step fails: it gets no config at all.
        let (Some(mtls), true) = (&ctx.mesh.mtls, ctx.view.identity) else {
            return Ok(());
        };
        let mesh = ctx.mesh.mesh;
        for draft in rs.clusters.values_mut() {
            let ClusterRole::Outbound { service } = &draft.role else {
                continue;
            };
            // An external service is reached through the zone egress (whose identity is
            // accepted), or directly with the TLS it asks for, outside mesh mTLS.
            let external = ctx.mesh.external_service(service).is_some();
            if external && !ctx.mesh.through_zone_egress() {
                continue;
            }
            // Under strict SPIFFE a proxy's one SAN names its first service: accept those of
            // the proxies providing this one.
            let identities = if external {
                vec![super::external::ZONE_EGRESS_SERVICE.to_string()]
            } else {
                ctx.mesh
                    .service(service)
                    .filter(|_| mtls.strict_spiffe)
                    .map(|s| s.strict_identities.iter().cloned().collect::<Vec<_>>())
                    .filter(|ids| !ids.is_empty())
                    .unwrap_or_else(|| vec![service.clone()])
            };
            let peers = identities
                .iter()
                .map(|id| MatchPattern::Exact(format!("spiffe://{mesh}/{id}")))
                .collect();
            let mut common = common_context(mesh, peers, mtls.sds_cluster.as_deref());
            // Tells the peer this is mesh mTLS, as Kuma does.
            common.alpn_protocols = vec!["kuma".into()];
            let upstream = UpstreamTlsContext {
                common_tls_context: Some(common),
                sni: sni(service, mesh, &draft.subset),
                ..Default::default()
            };
            draft.cluster.transport_socket = Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfig::TypedConfig(any(&upstream))),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;

    /// Where each secret of the TLS context comes from: ADS, or the named cluster.
    fn sources(context: &CommonTlsContext) -> Vec<String> {
        let validation = match &context.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                c.validation_context_sds_secret_config.clone()
            }
            _ => None,
        };
        context
            .tls_certificate_sds_secret_configs
            .iter()
            .cloned()
            .chain(validation)
            .map(
                |s| match s.sds_config.and_then(|c| c.config_source_specifier) {
                    Some(ConfigSourceSpecifier::Ads(_)) => "ads".to_string(),
                    Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
                        match &api.grpc_services[0].target_specifier {
                            Some(TargetSpecifier::EnvoyGrpc(g)) => g.cluster_name.clone(),
                            other => format!("{other:?}"),
                        }
                    }
                    other => format!("{other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn secrets_come_over_ads_or_from_the_sds_cluster() {
        assert_eq!(sources(&common_context("m", vec![], None)), ["ads", "ads"]);
        assert_eq!(
            sources(&common_context("m", vec![], Some("sds_cluster"))),
            ["sds_cluster", "sds_cluster"]
        );
    }
}
