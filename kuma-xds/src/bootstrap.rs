//! Envoy's bootstrap for a data-plane proxy: the [`BootstrapRequest`] kuma-dp sends to
//! `POST /bootstrap`, the Dataplane it carries ([`dataplane_of`]), and the bootstrap Envoy
//! starts with ([`envoy_bootstrap`]): the node and its metadata, the admin listener, and TLS
//! clusters to the control plane for ADS (and SDS when it has a port of its own), as Kuma's
//! bootstrap has them.
//!
//! Serving the request (authentication, the mesh's existence, the response format) is the
//! control plane's.

use kuma_core::model::common::SERVICE_TAG;
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::resource::{ParseError, Resource, ResourceType};
use kuma_core::validation::{Path, ValidationError};
use serde_json::{Value, json};

use crate::config::BootstrapParams;
use crate::lifecycle::{ADMIN_PORT, DATAPLANE_RESOURCE, READINESS_PORT, WORKDIR};

pub use kuma_core::bootstrap::BootstrapRequest;

/// The bootstrap's cluster for the SDS port (split layout): TLS contexts of mesh mTLS fetch
/// their secrets through it.
pub const SDS_CLUSTER: &str = "sds_cluster";

/// Where and how Envoy reaches the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneTarget {
    /// `bootstrapServer.params`.
    pub params: BootstrapParams,
    /// Port of the dp-server (the xDS port given to Envoy unless params say otherwise).
    pub dp_server_port: u16,
    /// Port of the SDS server in the split layout: the bootstrap then has [`SDS_CLUSTER`].
    pub sds_port: Option<u16>,
    /// CA of the dp-server certificate, PEM: Envoy verifies the control plane with it.
    pub ca_pem: String,
}

/// The Dataplane a bootstrap request carries (`dataplaneResource`, YAML or JSON), with the
/// request's `mesh` and `name` filled in where it leaves them out; an error names the field.
/// Parsing is bounded (see [`kuma_core::resource::parse_yaml`]), but not cheap: call it off
/// the async workers.
pub fn dataplane_of(req: &BootstrapRequest) -> Result<Resource, ValidationError> {
    proxy_resource_of(req, ResourceType::Dataplane)
}

/// The proxy resource a bootstrap request carries (`dataplaneResource`), which must be of
/// type `rtype`: a Dataplane (`proxyType: dataplane`), ZoneIngress (`ingress`) or ZoneEgress
/// (`egress`); a Dataplane's `mesh` and every resource's `name` are filled in from the
/// request where it leaves them out. As [`dataplane_of`] otherwise.
pub fn proxy_resource_of(
    req: &BootstrapRequest,
    rtype: ResourceType,
) -> Result<Resource, ValidationError> {
    let at = Path::at("dataplaneResource");
    if req.dataplane_resource.is_empty() {
        return Err(ValidationError::single(
            at.to_string(),
            "must be defined (universal proxies send their Dataplane)",
        ));
    }
    let mut dp = kuma_core::resource::parse_yaml(&req.dataplane_resource).map_err(|e| match e {
        ParseError::Invalid(violations) => {
            let mut err = ValidationError::new();
            err.extend_at(&at, violations);
            err
        }
        other => ValidationError::single(at.to_string(), other.to_string()),
    })?;
    if dp.rtype() != rtype {
        return Err(ValidationError::single(
            at.to_string(),
            format!("expected a {rtype}, got {}", dp.rtype()),
        ));
    }
    // Zone proxies belong to no mesh.
    let meta = &mut dp.meta;
    let mut fields = Vec::with_capacity(2);
    if rtype == ResourceType::Dataplane {
        fields.push(("mesh", &req.mesh, &mut meta.mesh));
    }
    fields.push(("name", &req.name, &mut meta.name));
    for (field, given, in_resource) in fields {
        if in_resource.is_empty() {
            *in_resource = given.clone();
        } else if !given.is_empty() && given != in_resource {
            return Err(ValidationError::single(
                field,
                format!("{given:?} does not match the dataplaneResource's {in_resource:?}"),
            ));
        }
    }
    Ok(dp)
}

/// Envoy's bootstrap (as JSON) for the proxy of `dp`, which asked with `req` through the
/// control plane's `host` (the name or address it used, kept for TLS name checks unless
/// `bootstrapServer.params.xdsHost` names another). `dp` should be [`dataplane_of`]`(req)`,
/// validated.
pub fn envoy_bootstrap(
    state: &ControlPlaneTarget,
    req: &BootstrapRequest,
    dp: &Resource,
    host: &str,
) -> Value {
    let spec = dp.spec_as::<DataplaneSpec>();
    let service = spec
        .and_then(|s| {
            s.inbounds()
                .first()
                .and_then(|i| i.tags.get(SERVICE_TAG).cloned())
        })
        .or_else(|| {
            spec.and_then(|s| s.networking.as_ref())
                .and_then(|n| n.gateway.as_ref())
                .and_then(|g| g.tags.get(SERVICE_TAG).cloned())
        })
        .unwrap_or_else(|| dp.meta.name.clone());
    let admin = match &dp.spec {
        kuma_core::resource::Spec::ZoneIngress(zi) => {
            zi.networking.as_ref().and_then(|n| n.admin.as_ref())
        }
        kuma_core::resource::Spec::ZoneEgress(ze) => {
            ze.networking.as_ref().and_then(|n| n.admin.as_ref())
        }
        _ => spec
            .and_then(|s| s.networking.as_ref())
            .and_then(|n| n.admin.as_ref()),
    };
    let admin_port = admin
        .map(|a| a.port)
        .filter(|p| *p != 0)
        .unwrap_or(u32::from(state.params.admin_port));
    let readiness_port = if req.readiness_port == 0 {
        9902
    } else {
        req.readiness_port
    };
    let xds_host = if state.params.xds_host.is_empty() {
        host
    } else {
        state.params.xds_host.as_str()
    };
    let xds_port = if state.params.xds_port == 0 {
        state.dp_server_port
    } else {
        state.params.xds_port
    };
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut metadata = json!({
        DATAPLANE_RESOURCE: dp.to_json(),
        ADMIN_PORT: admin_port.to_string(),
        "dataplane.admin.address": state.params.admin_address,
        READINESS_PORT: readiness_port.to_string(),
        WORKDIR: req.workdir,
    });
    if !req.version.is_null()
        && let Some(m) = metadata.as_object_mut()
    {
        m.insert("version".into(), req.version.clone());
    }
    // The token goes with every ADS stream, as Kuma's bootstrap sends it.
    let token = req.dataplane_token.trim();
    let mut ads_service = json!({"envoy_grpc": {"cluster_name": "ads_cluster"}});
    if !token.is_empty() {
        ads_service["initial_metadata"] = json!([{"key": "authorization", "value": token}]);
    }
    let mut clusters = vec![control_plane_cluster(
        state,
        "ads_cluster",
        xds_host,
        xds_port,
        None,
    )];
    if let Some(port) = state.sds_port {
        let filters = (!token.is_empty()).then(|| token_filters(token));
        clusters.push(control_plane_cluster(
            state,
            SDS_CLUSTER,
            xds_host,
            port,
            filters,
        ));
    }
    json!({
        "node": {
            "id": crate::generate::node_id(&dp.meta.mesh, &dp.meta.name),
            "cluster": service,
            "metadata": metadata,
        },
        "admin": {
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": state.params.admin_access_log_path,
                },
            }],
            "address": {"socket_address": {"address": state.params.admin_address, "port_value": admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ads_service],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": clusters},
    })
}

/// A static gRPC cluster to the control plane at `host:port`, over TLS.
fn control_plane_cluster(
    state: &ControlPlaneTarget,
    name: &str,
    host: &str,
    port: u16,
    http_filters: Option<Value>,
) -> Value {
    let mut options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    });
    if let Some(filters) = http_filters {
        options["http_filters"] = filters;
    }
    let mut cluster = json!({
        "name": name,
        "connect_timeout": state.params.xds_connect_timeout.as_str(),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
        },
        "transport_socket": ads_tls(state, host),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    });
    // As Kuma: an address is used as it is, a name is resolved.
    if host.parse::<std::net::IpAddr>().is_ok() {
        cluster["type"] = json!("STATIC");
    } else {
        cluster["type"] = json!("STRICT_DNS");
        // Our listeners are IPv4: `localhost` must reach one even where ::1 resolves first
        // (Kuma, which listens on both families, says AUTO).
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    cluster
}

/// Upstream HTTP filters that put `authorization: <token>` on every request to a cluster:
/// how the SDS streams, whose config source comes over xDS and carries no metadata, prove the
/// proxy's identity without the token ever being part of the generated config.
fn token_filters(token: &str) -> Value {
    json!([
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"append": {
                    "header": {"key": "authorization", "value": token},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }}]},
            },
        },
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
            },
        },
    ])
}

/// Envoy's TLS to the control plane: trust its CA, check the name it is reached by.
fn ads_tls(state: &ControlPlaneTarget, xds_host: &str) -> Value {
    let is_ip = xds_host.parse::<std::net::IpAddr>().is_ok();
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"inline_string": state.ca_pem},
                "match_typed_subject_alt_names": [{
                    "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                    "matcher": {"exact": xds_host},
                }],
            },
        },
    });
    if !is_ip && let Some(t) = tls.as_object_mut() {
        t.insert("sni".into(), Value::String(xds_host.to_string()));
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": tls})
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuma_dp::bootstrap::pin_control_plane_ca;

    #[test]
    fn pinning_replaces_the_trusted_ca_of_every_control_plane_cluster() {
        let state = ControlPlaneTarget {
            params: BootstrapParams::default(),
            dp_server_port: 5678,
            sds_port: Some(5677),
            ca_pem: "SERVED CA".into(),
        };
        let req = BootstrapRequest {
            dataplane_token: "TOKEN".into(),
            ..Default::default()
        };
        let dp = kuma_core::resource::parse_yaml("type: Dataplane\nmesh: default\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n").unwrap();
        let yaml = serde_norway::to_string(&envoy_bootstrap(&state, &req, &dp, "cp")).unwrap();
        assert_eq!(yaml.matches("SERVED CA").count(), 2, "{yaml}");
        let pinned = pin_control_plane_ca(&yaml, "OWN CA").unwrap();
        assert!(!pinned.contains("SERVED CA") && pinned.matches("OWN CA").count() == 2);
        // The SDS cluster carries the token on each request; ADS in its initial metadata.
        let v: Value = serde_norway::from_str(&pinned).unwrap();
        let sds = &v["static_resources"]["clusters"][1];
        assert_eq!(sds["name"], SDS_CLUSTER);
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            5677
        );
        let filters = &sds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"];
        assert_eq!(
            filters[0]["typed_config"]["mutations"]["request_mutations"][0]["append"]["header"],
            json!({"key": "authorization", "value": "TOKEN"})
        );
        assert!(pin_control_plane_ca("{not yaml", "x").is_err());
        // TLS stripped from a cluster (a bootstrap tampered with on its way): refused.
        let mut stripped = v.clone();
        stripped["static_resources"]["clusters"][1]
            .as_object_mut()
            .unwrap()
            .remove("transport_socket");
        let stripped = serde_norway::to_string(&stripped).unwrap();
        let refused = pin_control_plane_ca(&stripped, "OWN CA").unwrap_err();
        assert!(refused.contains("sds_cluster"), "{refused}");

        // A control plane named by address is a STATIC cluster, as in Kuma; by name, DNS.
        for (host, kind, family) in [
            ("10.0.0.7", "STATIC", Value::Null),
            ("::1", "STATIC", Value::Null),
            ("cp.example", "STRICT_DNS", json!("V4_PREFERRED")),
        ] {
            let b = envoy_bootstrap(&state, &req, &dp, host);
            let ads = &b["static_resources"]["clusters"][0];
            assert_eq!(ads["type"], kind, "{host}");
            assert_eq!(ads["dns_lookup_family"], family, "{host}");
        }
    }

    #[test]
    fn the_dataplane_comes_from_the_request_and_errors_name_the_field() {
        let req = |mesh: &str, resource: &str| BootstrapRequest {
            mesh: mesh.into(),
            name: "dp-1".into(),
            dataplane_resource: resource.into(),
            ..Default::default()
        };
        let dp = dataplane_of(&req(
            "default",
            "type: Dataplane\nnetworking:\n  address: 127.0.0.1\n",
        ))
        .unwrap();
        assert_eq!(
            (dp.meta.mesh.as_str(), dp.meta.name.as_str()),
            ("default", "dp-1")
        );
        for (mesh, resource, field) in [
            ("default", "", "dataplaneResource"),
            ("default", "type: Mesh\nname: m\n", "dataplaneResource"),
            ("default", "{not yaml", "dataplaneResource"),
            ("other", "type: Dataplane\nmesh: default\n", "mesh"),
        ] {
            let err = dataplane_of(&req(mesh, resource)).unwrap_err();
            assert!(
                err.violations().iter().all(|v| v.field.starts_with(field)),
                "{resource:?}: {err}"
            );
        }
    }
}
