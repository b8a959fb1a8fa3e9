//! MeshTimeout: connection, idle and HTTP timeouts on clusters, listeners and routes.
//!
//! - `to` (per destination service): the service's clusters get `connectTimeout` and HTTP
//!   idle/connection/stream limits; the outbound listener gets the idle timeout (TCP proxy, or
//!   the HTTP connection manager with stream idle and request headers timeouts) and every route
//!   the request timeout, stream idle timeout and max stream duration; policies with a
//!   top-level targetRef `MeshHTTPRoute` override those for the routes of that route's rules.
//! - `from`/`rules` (per inbound): the same on the inbound listener and its local cluster.

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CommonHttp;
use envoy_types::pb::envoy::config::route::v3::Route;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::MaxStreamDuration;
use kuma_core::model::policy::TimeoutConf;
use kuma_core::resource::ResourceType;

use super::{cluster_conf, each_route_conf, from_conf, routes_mut, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::context::ProxyContext;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::{ClusterDraft, ResourceSet, Terminal};
use kuma_core::rules::ProxyRules;
use xds_server::envoy::duration;

/// Applies MeshTimeout.
#[derive(Debug, Clone, Copy)]
pub struct MeshTimeout;

impl ResourceGenerator for MeshTimeout {
    fn name(&self) -> &str {
        "MeshTimeout"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        configure(&ctx.rules(ResourceType::MeshTimeout), rs)
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        configure(&ctx.rules(ResourceType::MeshTimeout), rs)
    }
}

/// Applies `rules` to what `rs` holds: inbounds and their clusters, or outbounds and theirs.
fn configure(rules: &ProxyRules, rs: &mut ResourceSet) -> Result<(), crate::generate::BoxError> {
    if rules.is_empty() {
        return Ok(());
    }
    for cluster in rs.clusters.values_mut() {
        let conf = cluster_conf::<TimeoutConf>(rules, &cluster.role)?;
        if let Some(conf) = conf {
            cluster_timeouts(cluster, &conf);
        }
    }
    let outbound: Vec<(String, String)> = rs
        .outbounds
        .iter()
        .map(|o| (o.listener.clone(), o.service.clone()))
        .collect();
    for (listener, service) in outbound {
        let Some(l) = rs.listeners.get_mut(&listener) else {
            continue;
        };
        if let Some(conf) = to_conf::<TimeoutConf>(rules, &service)? {
            listener_timeouts(&mut l.terminal, &conf);
        }
        // Routes: a route-targeted policy's conf for the route, the service's otherwise.
        if let Terminal::Http(http) = &mut l.terminal {
            each_route_conf(rules, &service, &mut http.route, route_timeouts)?;
        }
    }
    let inbound: Vec<(String, u32)> = rs
        .inbounds
        .iter()
        .map(|i| (i.listener.clone(), i.port))
        .collect();
    for (listener, port) in inbound {
        if let (Some(conf), Some(l)) = (
            from_conf::<TimeoutConf>(rules, port)?,
            rs.listeners.get_mut(&listener),
        ) {
            listener_timeouts(&mut l.terminal, &conf);
            if let Terminal::Http(http) = &mut l.terminal {
                routes_mut(&mut http.route).for_each(|route| route_timeouts(route, &conf));
            }
        }
    }
    Ok(())
}

fn cluster_timeouts(cluster: &mut ClusterDraft, conf: &TimeoutConf) {
    if let Some(t) = &conf.connection_timeout {
        cluster.cluster.connect_timeout = Some(duration(t.get()));
    }
    if !cluster.protocol.is_http() {
        return;
    }
    let common = cluster
        .http_options
        .common_http_protocol_options
        .get_or_insert_with(CommonHttp::default);
    if let Some(t) = &conf.idle_timeout {
        common.idle_timeout = Some(duration(t.get()));
    }
    if let Some(http) = &conf.http {
        if let Some(t) = &http.max_connection_duration {
            common.max_connection_duration = Some(duration(t.get()));
        }
        if let Some(t) = &http.max_stream_duration {
            common.max_stream_duration = Some(duration(t.get()));
        }
    }
}

fn listener_timeouts(terminal: &mut Terminal, conf: &TimeoutConf) {
    match terminal {
        Terminal::Tcp(tcp) => {
            if let Some(t) = &conf.idle_timeout {
                tcp.idle_timeout = Some(duration(t.get()));
            }
        }
        Terminal::Http(http) => {
            if let Some(t) = &conf.idle_timeout {
                http.hcm
                    .common_http_protocol_options
                    .get_or_insert_with(CommonHttp::default)
                    .idle_timeout = Some(duration(t.get()));
            }
            if let Some(h) = &conf.http {
                if let Some(t) = &h.stream_idle_timeout {
                    http.hcm.stream_idle_timeout = Some(duration(t.get()));
                }
                if let Some(t) = &h.request_headers_timeout {
                    http.hcm.request_headers_timeout = Some(duration(t.get()));
                }
            }
        }
    }
}

/// Sets the request timeout, stream idle timeout and max stream duration on `route`.
fn route_timeouts(route: &mut Route, conf: &TimeoutConf) {
    let (Some(h), Some(Action::Route(action))) = (&conf.http, route.action.as_mut()) else {
        return;
    };
    if let Some(t) = &h.request_timeout {
        action.timeout = Some(duration(t.get()));
    }
    if let Some(t) = &h.stream_idle_timeout {
        action.idle_timeout = Some(duration(t.get()));
    }
    if let Some(t) = &h.max_stream_duration {
        action.max_stream_duration = Some(MaxStreamDuration {
            max_stream_duration: Some(duration(t.get())),
            ..Default::default()
        });
    }
}
