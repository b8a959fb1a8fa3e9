//! The core of Kuma's default profile: what every proxy gets before policies apply.
//!
//! | generator | what it adds |
//! |---|---|
//! | `inbound` | per inbound, listener `inbound:<ip>:<port>` (TCP proxy, or HTTP for `kuma.io/protocol` http, http2, grpc) and the local cluster `localhost:<workload port>` |
//! | `outbound` | per explicit outbound, listener `outbound:<ip>:<port>` and the service's EDS cluster and ready endpoints; the proxy's source-tags extension config (see [`source_tags`]) |
//! | `dns-records` | with transparent proxying, the VIP records for kuma-dp's DNS proxy, served by Envoy on kuma-dp's pipe (see [`DnsRecords`]) |
//! | `transparent-proxy` | with transparent proxying: the passthrough listeners on the redirect ports and a VIP outbound `outbound:<vip>:80` (and one per inbound port) per service (see [`TransparentProxy`]) |
//! | `admin` | cluster `kuma:envoy:admin`; on a non-loopback address also listener `kuma:envoy:admin` exposing `/ready` from kuma-dp (cluster `kuma:readiness`) |
//! | `probes` | virtual probes: listener `probe:listener` mapping `/<port>/<path>` to the workload |
//! | `prometheus` | when the mesh (or the Dataplane) enables a Prometheus backend, listener `_kuma:metrics:prometheus:<backend>` serving Envoy's stats |
//!
//! The outbound listeners, clusters and endpoints are built in the generators' outbound step
//! ([`ResourceGenerator::apply_outbound`]), once for every proxy with the same
//! [`OutboundView`](super::OutboundView).

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, HeaderValue, HeaderValueOption, Pipe,
};
use envoy_types::pb::envoy::config::core::v3::{BindConfig, SocketAddress, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::dataplane::TransparentProxying;
use kuma_core::model::policy::default_route_name;

use super::ResourceGenerator;
use super::context::{Endpoint, MeshContext, Protocol, ProxyContext, addresses};
use super::outbound::{OutboundContext, Reach};
use super::resources::{
    ClusterDraft, ClusterRole, Endpoints, HttpDraft, InboundInfo, ListenerDraft, OutboundInfo,
    ResourceSet, Terminal,
};
use super::source_tags;
use xds_server::envoy::{
    cluster_route, eds_cluster, http_connection_manager, listener, load_assignment, route_table,
    static_cluster, tcp_proxy,
};

/// The core generators, in order.
pub fn core() -> Vec<Box<dyn ResourceGenerator>> {
    vec![
        Box::new(Inbound),
        Box::new(Outbound),
        Box::new(TransparentProxy),
        Box::new(DnsRecords),
        Box::new(Admin),
        Box::new(Probes),
        Box::new(Prometheus),
    ]
}

/// Name of Envoy's admin cluster.
pub const ADMIN_CLUSTER: &str = "kuma:envoy:admin";
/// Name of the readiness cluster (kuma-dp's readiness reporter).
pub const READINESS_CLUSTER: &str = "kuma:readiness";

/// A listener whose terminal filter serves HTTP with one route table.
pub(crate) fn http_listener(
    l: envoy_types::pb::envoy::config::listener::v3::Listener,
    stat_prefix: &str,
    route_name: &str,
    virtual_host: &str,
    routes: Vec<Route>,
) -> ListenerDraft {
    ListenerDraft {
        listener: l,
        network_filters: Vec::new(),
        tls: None,
        terminal: Terminal::Http(Box::new(HttpDraft {
            hcm: http_connection_manager(stat_prefix),
            filters: Vec::new(),
            route: route_table(route_name, virtual_host, routes),
        })),
    }
}

pub(crate) fn prefix(p: &str) -> PathSpecifier {
    PathSpecifier::Prefix(p.to_string())
}

/// Listeners and local clusters of the proxy's inbounds.
#[derive(Debug, Clone, Copy)]
pub struct Inbound;

impl ResourceGenerator for Inbound {
    fn name(&self) -> &str {
        "inbound"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let address = ctx.address();
        for inbound in ctx.dataplane.inbounds() {
            let ip = inbound.address.as_deref().unwrap_or(address);
            let workload_ip = inbound.service_address.as_deref().unwrap_or(address);
            let port = inbound.workload_port();
            let service = inbound.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
            let protocol = Protocol::of_tags(&inbound.tags);
            let cluster = format!("localhost:{port}");
            let name = format!("inbound:{ip}:{}", inbound.port);
            let stat = format!("localhost_{port}");
            rs.add_cluster(
                cluster.clone(),
                ClusterDraft::new(
                    static_cluster(&cluster, &[(workload_ip.to_string(), port)]),
                    ClusterRole::Inbound { port: inbound.port },
                    protocol,
                ),
            );
            let l = listener(&name, ip, inbound.port, TrafficDirection::Inbound);
            let draft = if protocol.is_http() {
                let mut draft = http_listener(
                    l,
                    &stat,
                    &format!("inbound:{service}"),
                    &service,
                    vec![cluster_route(prefix("/"), &cluster)],
                );
                // The caller's tags are for the proxy, not the application.
                if let Some(http) = draft.http_mut() {
                    http.route
                        .request_headers_to_remove
                        .push(source_tags::TAGS_HEADER.into());
                }
                draft
            } else {
                ListenerDraft {
                    listener: l,
                    network_filters: Vec::new(),
                    tls: None,
                    terminal: Terminal::Tcp(Box::new(tcp_proxy(&stat, &cluster))),
                }
            };
            rs.add_listener(name.clone(), draft);
            rs.inbounds.push(InboundInfo {
                listener: name,
                cluster,
                port: inbound.port,
                service,
                protocol,
            });
        }
        Ok(())
    }
}

/// Adds the EDS cluster `name` sending to `service` (its endpoints narrowed to `subset` when
/// given), unless the set has it already.
pub fn add_service_cluster(
    mesh: &MeshContext<'_>,
    rs: &mut ResourceSet,
    name: &str,
    service: &str,
    subset: Option<&Tags>,
) {
    if rs.clusters.contains_key(name) {
        return;
    }
    let role = ClusterRole::Outbound {
        service: service.to_string(),
    };
    if let Some(external) = mesh.external_service(service) {
        // Through this zone's egresses over mesh mTLS, or straight out (see `external`).
        let cluster = if mesh.through_zone_egress() {
            rs.endpoints.insert(
                name.to_string(),
                Endpoints::Owned(load_assignment(name, &mesh.zone_egresses)),
            );
            eds_cluster(name)
        } else {
            super::external::origin_cluster(name, external)
        };
        rs.add_cluster(
            name.to_string(),
            ClusterDraft::new(cluster, role, mesh.protocol(service)),
        );
        return;
    }
    let subset = subset.cloned().unwrap_or_default();
    let endpoints = if subset.is_empty() && name == service {
        Endpoints::Shared(mesh.load_assignment(service))
    } else {
        let matching: Vec<_> = mesh
            .endpoints(service)
            .iter()
            .filter(|e| in_subset(e, &subset))
            .cloned()
            .collect();
        Endpoints::Owned(load_assignment(name, &addresses(&matching)))
    };
    let mut draft = ClusterDraft::new(eds_cluster(name), role, mesh.protocol(service));
    draft.subset = subset;
    rs.add_cluster(name.to_string(), draft);
    rs.endpoints.insert(name.to_string(), endpoints);
}

/// Whether `endpoint` carries every tag of `subset`.
pub fn in_subset(endpoint: &Endpoint, subset: &Tags) -> bool {
    subset.iter().all(|(k, v)| endpoint.tags.get(k) == Some(v))
}

/// Listeners, clusters and endpoints of the proxy's explicit outbounds; for a proxy with
/// outbounds (explicit or transparent), its source-tags extension config
/// ([`source_tags::extension_config`]).
#[derive(Debug, Clone, Copy)]
pub struct Outbound;

impl ResourceGenerator for Outbound {
    fn name(&self) -> &str {
        "outbound"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        if !ctx.dataplane.outbounds().is_empty() || transparent_proxying(ctx).is_some() {
            rs.extensions.insert(
                source_tags::EXTENSION_NAME.into(),
                source_tags::extension_config(ctx.dataplane),
            );
        }
        Ok(())
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        for o in &ctx.view.explicit {
            add_outbound(ctx.mesh, rs, &o.service, (&o.ip, o.port), true);
        }
        Ok(())
    }
}

/// The listener `outbound:<ip>:<port>` sending to `service` (HTTP or TCP by the service's
/// protocol), with the service's cluster. `bind` false: the listener only receives connections
/// redirected to it (transparent proxying), it binds no socket. HTTP listeners add the
/// proxy's source tags to requests ([`source_tags::filter`]).
fn add_outbound(
    mesh: &MeshContext<'_>,
    rs: &mut ResourceSet,
    service: &str,
    (ip, port): (&str, u32),
    bind: bool,
) {
    let name = format!("outbound:{ip}:{port}");
    let protocol = mesh.protocol(service);
    add_service_cluster(mesh, rs, service, service, None);
    let mut l = listener(&name, ip, port, TrafficDirection::Outbound);
    if !bind {
        l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    }
    let draft = if protocol.is_http() {
        let mut draft = http_listener(
            l,
            service,
            &format!("outbound:{service}"),
            service,
            vec![Route {
                name: default_route_name().to_string(),
                ..cluster_route(prefix("/"), service)
            }],
        );
        // Tell the destination who calls (policies with `from` subsets match on it).
        if let Some(http) = draft.http_mut() {
            http.filters.push(source_tags::filter());
        }
        draft
    } else {
        ListenerDraft {
            listener: l,
            network_filters: Vec::new(),
            tls: None,
            terminal: Terminal::Tcp(Box::new(tcp_proxy(service, service))),
        }
    };
    rs.add_listener(name.clone(), draft);
    rs.outbounds.push(OutboundInfo {
        listener: name,
        service: service.to_string(),
        protocol,
    });
}

/// Transparent proxying (the Dataplane's `networking.transparentProxying`): traffic arrives
/// redirected by iptables, so
/// - `outbound:passthrough:ipv4` listens on the outbound redirect port (15001) with the
///   original destination, and sends what no VIP listener takes to where it was going
///   (cluster `outbound:passthrough:ipv4`, ORIGINAL_DST);
/// - `inbound:passthrough:ipv4` listens on the inbound redirect port (15006) likewise, for
///   inbound traffic no inbound listener takes (cluster `inbound:passthrough:ipv4`, from
///   127.0.0.6 as Kuma does);
/// - every service with a VIP (only `reachableServices` when listed) gets the listener
///   `outbound:<vip>:<VIP port>`, and `outbound:<vip>:<port>` for each port its inbounds
///   listen on (so `backend.mesh:8080` works as well as `backend.mesh`); they bind nothing:
///   the redirect hands them the connections to their address.
#[derive(Debug, Clone, Copy)]
pub struct TransparentProxy;

impl ResourceGenerator for TransparentProxy {
    fn name(&self) -> &str {
        "transparent-proxy"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(tp) = transparent_proxying(ctx) else {
            return Ok(());
        };
        for (direction, traffic, port, source) in [
            (
                "outbound",
                TrafficDirection::Outbound,
                tp.redirect_port_outbound.unwrap_or(15001),
                None,
            ),
            (
                "inbound",
                TrafficDirection::Inbound,
                tp.redirect_port_inbound.unwrap_or(15006),
                Some("127.0.0.6"),
            ),
        ] {
            let name = format!("{direction}:passthrough:ipv4");
            let mut cluster = xds_server::envoy::original_destination_cluster(&name);
            if let Some(source) = source {
                cluster.upstream_bind_config = Some(BindConfig {
                    // Any source port (Envoy requires the port to be given).
                    source_address: Some(SocketAddress {
                        address: source.to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(0)),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            rs.add_cluster(
                name.clone(),
                ClusterDraft::new(cluster, ClusterRole::System, Protocol::Tcp),
            );
            let mut l = listener(&name, "0.0.0.0", port, traffic);
            l.use_original_dst = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
            rs.add_listener(
                name.clone(),
                ListenerDraft {
                    listener: l,
                    network_filters: Vec::new(),
                    tls: None,
                    terminal: Terminal::Tcp(Box::new(tcp_proxy(&name, &name))),
                },
            );
        }
        Ok(())
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(reach) = &ctx.view.transparent else {
            return Ok(());
        };
        // Only the reached services' VIPs are looked at: a proxy reaching a few services of
        // a large mesh does not walk every VIP.
        let vips: Vec<(&String, &std::net::Ipv4Addr)> = match reach {
            Reach::Every => ctx.mesh.vips.iter().collect(),
            Reach::Only(services) => services
                .iter()
                .filter_map(|s| ctx.mesh.vips.get_key_value(s))
                .collect(),
        };
        for (service, vip) in vips {
            // An external service is served on its own port(s) only, as Kuma records it.
            let ports = match ctx.mesh.external_service(service) {
                Some(_) => ctx.mesh.external.ports(service),
                None => {
                    let mut ports = std::collections::BTreeSet::from([ctx.mesh.vip_port]);
                    if let Some(s) = ctx.mesh.service(service) {
                        ports.extend(&s.ports);
                    }
                    ports
                }
            };
            let vip = vip.to_string();
            for port in ports {
                add_outbound(ctx.mesh, rs, service, (&vip, port), false);
            }
        }
        // External services' hosts with VIPs of their own (`httpbin.org`), on their ports.
        for h in ctx.mesh.external_hosts.iter() {
            let reached = match reach {
                Reach::Every => true,
                Reach::Only(services) => services.binary_search(&h.service).is_ok(),
            };
            if reached && ctx.mesh.external_service(&h.service).is_some() {
                add_outbound(ctx.mesh, rs, &h.service, (&h.ip.to_string(), h.port), false);
            }
        }
        Ok(())
    }
}

/// The proxy's transparent proxying settings (`None`: it is not a transparent proxy).
fn transparent_proxying<'a>(ctx: &ProxyContext<'a>) -> Option<&'a TransparentProxying> {
    ctx.dataplane
        .networking
        .as_ref()?
        .transparent_proxying
        .as_ref()
}

/// The services with a VIP a transparent proxy reaches: all of them, or its
/// `reachableServices` when it lists some.
fn reachable_vips<'a>(
    mesh: &'a MeshContext<'_>,
    reachable: &'a [String],
) -> impl Iterator<Item = (&'a String, &'a std::net::Ipv4Addr)> {
    mesh.vips
        .iter()
        .filter(move |(service, _)| reachable.is_empty() || reachable.contains(*service))
}

/// The DNS records of a transparent proxy's VIP outbounds, for kuma-dp's DNS proxy, the way
/// Kuma hands them over: Envoy's listener `_kuma:dynamicconfig` on the pipe
/// `<workdir>/kuma-mesh-metric-config.sock` answers `GET /dns` with
/// `{"records": [{"name": "backend.mesh", "ips": ["240.0.0.1"]}], "ttl": 30}` and an `Etag`,
/// and 304 to a request whose `If-None-Match` is that tag.
#[derive(Debug, Clone, Copy)]
pub struct DnsRecords;

/// The name of the dynamic configuration listener.
pub const DYNAMIC_CONFIG_LISTENER: &str = "_kuma:dynamicconfig";

impl ResourceGenerator for DnsRecords {
    fn name(&self) -> &str {
        "dns-records"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let (Some(tp), Some(workdir)) =
            (transparent_proxying(ctx), ctx.metadata.workdir.as_deref())
        else {
            return Ok(());
        };
        let records = ctx.mesh.dns_records(&tp.reachable_services, || {
            let records: Vec<serde_json::Value> = reachable_vips(ctx.mesh, &tp.reachable_services)
                .flat_map(|(service, vip)| {
                    kuma_core::model::common::service_dns_names(service)
                        .into_iter()
                        .map(move |n| (n, vip))
                })
                .map(|(name, vip)| {
                    serde_json::json!({
                        "name": format!("{name}.{}", ctx.mesh.vip_domain),
                        "ips": [vip.to_string()],
                    })
                })
                .chain(
                    ctx.mesh
                        .external_hosts
                        .iter()
                        .filter(|h| {
                            tp.reachable_services.is_empty()
                                || tp.reachable_services.contains(&h.service)
                        })
                        .map(|h| serde_json::json!({"name": h.host, "ips": [h.ip.to_string()]})),
                )
                .collect();
            let body = serde_json::json!({"records": records, "ttl": 30}).to_string();
            let etag = format!("{:016x}", xds_server::cache::content_hash(body.as_bytes()));
            (body, etag)
        });
        let (body, etag) = (records.0.clone(), records.1.clone());
        let direct = |status: u32, body: Option<String>| {
            Some(Action::DirectResponse(DirectResponseAction {
                status,
                body: body.map(|b| DataSource {
                    specifier: Some(Specifier::InlineString(b)),
                    ..Default::default()
                }),
                ..Default::default()
            }))
        };
        let not_modified = Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Path("/dns".into())),
                headers: vec![HeaderMatcher {
                    name: "If-None-Match".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(etag.clone())),
                            ignore_case: false,
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: direct(304, None),
            ..Default::default()
        };
        let records = Route {
            name: format!("{DYNAMIC_CONFIG_LISTENER}:dns"),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Path("/dns".into())),
                ..Default::default()
            }),
            response_headers_to_add: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "Etag".into(),
                    value: etag,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            action: direct(200, Some(body)),
            ..Default::default()
        };
        let l = Listener {
            name: DYNAMIC_CONFIG_LISTENER.into(),
            address: Some(Address {
                address: Some(AddressKind::Pipe(Pipe {
                    path: super::context::dynamic_config_pipe(workdir),
                    mode: 0,
                })),
            }),
            ..Default::default()
        };
        rs.add_listener(
            DYNAMIC_CONFIG_LISTENER,
            http_listener(
                l,
                "_kuma_dynamicconfig",
                DYNAMIC_CONFIG_LISTENER,
                DYNAMIC_CONFIG_LISTENER,
                vec![not_modified, records],
            ),
        );
        Ok(())
    }
}

/// Envoy's admin cluster; the admin listener exposing readiness on the proxy's address.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl ResourceGenerator for Admin {
    fn name(&self) -> &str {
        "admin"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(admin) = ctx.metadata.admin_port else {
            return Ok(());
        };
        let loopback = "127.0.0.1".to_string();
        rs.add_cluster(
            ADMIN_CLUSTER,
            ClusterDraft::new(
                static_cluster(ADMIN_CLUSTER, &[(loopback.clone(), admin)]),
                ClusterRole::System,
                Protocol::Http,
            ),
        );
        let address = ctx.address();
        // On loopback the listener would clash with Envoy's own admin.
        let Some(readiness) = ctx.metadata.readiness_port else {
            return Ok(());
        };
        if matches!(address, "127.0.0.1" | "0.0.0.0" | "" | "::1" | "::") {
            return Ok(());
        }
        rs.add_cluster(
            READINESS_CLUSTER,
            ClusterDraft::new(
                static_cluster(READINESS_CLUSTER, &[(loopback, readiness)]),
                ClusterRole::System,
                Protocol::Http,
            ),
        );
        let l = listener(ADMIN_CLUSTER, address, admin, TrafficDirection::Inbound);
        rs.add_listener(
            ADMIN_CLUSTER,
            http_listener(
                l,
                "kuma_envoy_admin",
                ADMIN_CLUSTER,
                ADMIN_CLUSTER,
                vec![cluster_route(prefix("/ready"), READINESS_CLUSTER)],
            ),
        );
        Ok(())
    }
}

/// Virtual probes: `GET /<port>/<path>` on the probe port reaches the workload's `/<path>`.
#[derive(Debug, Clone, Copy)]
pub struct Probes;

impl ResourceGenerator for Probes {
    fn name(&self) -> &str {
        "probes"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(probes) = ctx.dataplane.probes.as_ref().filter(|p| p.port != 0) else {
            return Ok(());
        };
        let address = ctx.address();
        let mut routes = Vec::new();
        for p in &probes.endpoints {
            let cluster = format!("localhost:{}", p.inbound_port);
            if !rs.clusters.contains_key(&cluster) {
                let workload_ip = ctx
                    .dataplane
                    .inbounds()
                    .iter()
                    .find(|i| i.workload_port() == p.inbound_port)
                    .and_then(|i| i.service_address.as_deref())
                    .unwrap_or(address);
                rs.add_cluster(
                    cluster.clone(),
                    ClusterDraft::new(
                        static_cluster(&cluster, &[(workload_ip.to_string(), p.inbound_port)]),
                        ClusterRole::System,
                        Protocol::Http,
                    ),
                );
            }
            let mut route = cluster_route(PathSpecifier::Path(p.path.clone()), &cluster);
            if let Some(Action::Route(action)) = route.action.as_mut() {
                action.prefix_rewrite = p.inbound_path.clone();
            }
            routes.push(route);
        }
        let l = listener(
            "probe:listener",
            address,
            probes.port,
            TrafficDirection::Inbound,
        );
        rs.add_listener(
            "probe:listener",
            http_listener(
                l,
                "probe_listener",
                "probe:route_configuration",
                "probe",
                routes,
            ),
        );
        Ok(())
    }
}

/// The Prometheus scrape listener, when a Prometheus backend is enabled.
#[derive(Debug, Clone, Copy)]
pub struct Prometheus;

impl ResourceGenerator for Prometheus {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        // Settings that do not decode (validated at write, so only from an older store) cost
        // the proxy its metrics listener, not its configuration.
        let endpoint = match ctx
            .mesh
            .spec
            .prometheus_endpoint(ctx.dataplane.metrics.as_ref())
        {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(mesh = ctx.mesh.mesh, error = %kuma_core::errors::Chain(&e), "no metrics listener");
                return Ok(());
            }
        };
        if ctx.metadata.admin_port.is_none() {
            return Ok(()); // nothing to serve the stats from yet
        }
        let backend_name = &endpoint.backend;
        let name = format!("_kuma:metrics:prometheus:{backend_name}");
        let mut route = cluster_route(
            PathSpecifier::Path(endpoint.path().to_string()),
            ADMIN_CLUSTER,
        );
        if let Some(Action::Route(action)) = route.action.as_mut() {
            action.prefix_rewrite = "/stats/prometheus".into();
        }
        let l = listener(
            &name,
            ctx.address(),
            endpoint.port(),
            TrafficDirection::Inbound,
        );
        rs.add_listener(
            name.clone(),
            http_listener(
                l,
                &format!("_kuma_metrics_prometheus_{backend_name}"),
                &name,
                &name,
                vec![route],
            ),
        );
        Ok(())
    }
}
