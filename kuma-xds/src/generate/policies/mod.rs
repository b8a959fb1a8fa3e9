//! One generator per policy type, applying the merged rules of the policy engine
//! ([`kuma_core::rules`]) to what the core generators built. They run in this order: routes
//! first (they add clusters), then what configures clusters, routes and listeners.

mod access_log;
mod circuit_breaker;
mod fault_injection;
mod health_check;
mod http_route;
mod load_balancing;
mod rate_limit;
mod retry;
mod tcp_route;
mod timeout;
pub(crate) mod traffic_permission;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, Route, RouteConfiguration};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use kuma_core::model::common::Tags;
use kuma_core::model::policy::{
    BackendRef, HeaderMatch, HeaderMatchType, HeaderModifier, TargetRefKind,
};
use kuma_core::resource::ResourceType;
use kuma_core::rules::{ProxyRules, Rule};
use serde::de::DeserializeOwned;

use super::ResourceGenerator;
use super::context::MeshContext;
use super::profile::add_service_cluster;
use super::resources::{ClusterRole, ResourceSet};
use xds_server::envoy::string_struct;

pub use access_log::MeshAccessLog;
pub use circuit_breaker::MeshCircuitBreaker;
pub use fault_injection::MeshFaultInjection;
pub use health_check::MeshHealthCheck;
pub use http_route::MeshHttpRoute;
pub use load_balancing::MeshLoadBalancingStrategy;
pub use rate_limit::MeshRateLimit;
pub use retry::MeshRetry;
pub use tcp_route::MeshTcpRoute;
pub use timeout::MeshTimeout;
pub use traffic_permission::MeshTrafficPermission;

/// Every policy generator, in the order they apply.
pub fn all() -> Vec<Box<dyn ResourceGenerator>> {
    vec![
        Box::new(MeshTcpRoute),
        Box::new(MeshHttpRoute),
        Box::new(MeshLoadBalancingStrategy),
        Box::new(MeshCircuitBreaker),
        Box::new(MeshHealthCheck),
        Box::new(MeshTimeout),
        Box::new(MeshRetry),
        Box::new(MeshRateLimit),
        Box::new(MeshFaultInjection),
        Box::new(MeshAccessLog),
        Box::new(MeshTrafficPermission),
    ]
}

/// A string matcher of one pattern.
fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

/// An exact header value match.
fn string_exact(value: &str) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Exact(value.to_string())))
}

/// An Envoy header matcher from a policy's header match.
fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    let value = h.value.clone().unwrap_or_default();
    let specifier = match h.kind.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Exact => string_exact(&value),
        HeaderMatchType::Prefix => {
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Prefix(value)))
        }
        HeaderMatchType::RegularExpression => HeaderMatchSpecifier::StringMatch(string_matcher(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: value,
                ..Default::default()
            }),
        )),
        HeaderMatchType::Present => HeaderMatchSpecifier::PresentMatch(true),
        HeaderMatchType::Absent => HeaderMatchSpecifier::PresentMatch(false),
    };
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// Endpoint metadata (`envoy.lb`) holding `tags`.
fn lb_metadata(tags: Option<&Tags>) -> Metadata {
    let fields = tags
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()));
    Metadata {
        filter_metadata: [("envoy.lb".to_string(), string_struct(fields))].into(),
        ..Default::default()
    }
}

/// The typed conf of `rule`, or an error naming the policies it came from.
fn typed<T: DeserializeOwned>(rtype: ResourceType, rule: &Rule) -> Result<T, String> {
    rule.conf_as().map_err(|e| {
        let names: Vec<&str> = rule.origins.iter().map(|o| o.name.as_str()).collect();
        format!("{rtype} {names:?}: merged conf does not fit: {e}")
    })
}

/// The typed conf for traffic to `service`.
fn to_conf<T: DeserializeOwned>(rules: &ProxyRules, service: &str) -> Result<Option<T>, String> {
    rules
        .to_rule(service)
        .map(|r| typed(rules.rtype, r))
        .transpose()
}

/// Every route of `table`, in order.
fn routes_mut(table: &mut RouteConfiguration) -> impl Iterator<Item = &mut Route> {
    table
        .virtual_hosts
        .iter_mut()
        .flat_map(|vh| vh.routes.iter_mut())
}

/// Calls `apply` with every route of `table` (traffic to `service`) that a rule covers, and
/// the typed conf for it: what route-targeted policies set for the route (by its name) over
/// the service's conf, else the service's. Each rule is decoded once, however many routes
/// share it.
fn each_route_conf<T: DeserializeOwned>(
    rules: &ProxyRules,
    service: &str,
    table: &mut RouteConfiguration,
    mut apply: impl FnMut(&mut Route, &T),
) -> Result<(), String> {
    let mut decoded: Vec<(&Rule, T)> = Vec::new();
    for route in routes_mut(table) {
        let Some(rule) = rules.to_rule_for_route(service, &route.name) else {
            continue;
        };
        let at = match decoded.iter().position(|(r, _)| std::ptr::eq(*r, rule)) {
            Some(at) => at,
            None => {
                decoded.push((rule, typed(rules.rtype, rule)?));
                decoded.len() - 1
            }
        };
        apply(route, &decoded[at].1);
    }
    Ok(())
}

/// The typed conf for a cluster: the `to` rule of an outbound cluster's service, the `from`
/// rule of an inbound's local cluster, none for the proxy's own clusters.
fn cluster_conf<T: DeserializeOwned>(
    rules: &ProxyRules,
    role: &ClusterRole,
) -> Result<Option<T>, String> {
    match role {
        ClusterRole::Outbound { service } => to_conf(rules, service),
        ClusterRole::Inbound { port } => from_conf(rules, *port),
        ClusterRole::System => Ok(None),
    }
}

/// The typed conf for traffic into the inbound on `port`.
fn from_conf<T: DeserializeOwned>(rules: &ProxyRules, port: u32) -> Result<Option<T>, String> {
    rules
        .from_rule(port)
        .map(|r| typed(rules.rtype, r))
        .transpose()
}

/// Headers to add (`add`: appended) and set (`set`: overwritten).
fn header_values(m: &HeaderModifier) -> Vec<HeaderValueOption> {
    let option = |key: &str, value: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut out = Vec::new();
    for kv in m.add.iter().flatten() {
        out.push(option(
            &kv.name,
            &kv.value,
            HeaderAppendAction::AppendIfExistsOrAdd,
        ));
    }
    for kv in m.set.iter().flatten() {
        out.push(option(
            &kv.name,
            &kv.value,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    out
}

/// The cluster a route backend sends to, added to the set when missing: the service's own
/// cluster for `MeshService`, a cluster of the matching endpoints for `MeshServiceSubset`.
/// `None` for kinds this control plane has no resources for yet.
fn backend_cluster(mesh: &MeshContext<'_>, rs: &mut ResourceSet, b: &BackendRef) -> Option<String> {
    let service = b.name.as_deref()?;
    match b.kind {
        TargetRefKind::MeshService => {
            add_service_cluster(mesh, rs, service, service, None);
            Some(service.to_string())
        }
        TargetRefKind::MeshServiceSubset => {
            let tags = b.tags.clone().unwrap_or_default();
            if tags.is_empty() {
                add_service_cluster(mesh, rs, service, service, None);
                return Some(service.to_string());
            }
            let name = format!("{service}-{:016x}", fnv1a(&tags));
            add_service_cluster(mesh, rs, &name, service, Some(&tags));
            Some(name)
        }
        _ => None,
    }
}

/// A stable 64-bit FNV-1a hash of tags (cluster names must not change between runs).
fn fnv1a(tags: &Tags) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in tags {
        for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b';']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
