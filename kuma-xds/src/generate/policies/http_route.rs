//! MeshHTTPRoute: the routes of HTTP outbounds.
//!
//! Each rule becomes one route per match (a rule's matches are alternatives), ordered as Kuma
//! orders them (see `Specificity`: a match with a path first, exact before prefix before
//! regular expression, longer values first, then method, header and query matches; ties keep
//! the merged order, in which the strongest policy comes first), followed by the outbound's
//! default route (unless a rule matches every request). Routes are named as Kuma names them,
//! by the hash of their rule's matches. Backends are weighted clusters (a `MeshServiceSubset`
//! gets its own cluster of the matching endpoints); filters map to header mutations,
//! redirects, rewrites and mirrors.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier as RedirectPath, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction, RouteMatch,
    WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use kuma_core::model::common::IntOrString;
use kuma_core::model::policy::{
    BackendRef, HttpFilterType, HttpMatch, HttpRouteConf, HttpRouteRule, PathMatchType,
    PathRewriteType, QueryMatchType, catch_all_match, default_route_name, matches_hash,
};
use kuma_core::resource::ResourceType;

use super::{
    add_service_cluster, backend_cluster, header_matcher, header_values, string_exact,
    string_matcher,
};
use crate::generate::ResourceGenerator;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::ResourceSet;
use xds_server::envoy::cluster_route;

/// Applies MeshHTTPRoute.
#[derive(Debug, Clone, Copy)]
pub struct MeshHttpRoute;

#[derive(serde::Deserialize)]
struct MergedRules {
    #[serde(default)]
    rules: Vec<HttpRouteRule>,
}

impl ResourceGenerator for MeshHttpRoute {
    fn name(&self) -> &str {
        "MeshHTTPRoute"
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshHTTPRoute);
        if rules.is_empty() {
            return Ok(());
        }
        let outbounds: Vec<_> = rs
            .outbounds
            .iter()
            .filter(|o| o.protocol.is_http())
            .map(|o| (o.listener.clone(), o.service.clone()))
            .collect();
        for (listener, service) in outbounds {
            let Some(merged) = super::to_conf::<MergedRules>(&rules, &service)? else {
                continue;
            };
            let mut routes: Vec<(Specificity, Route)> = Vec::new();
            let catch_all = catch_all_match();
            let mut has_catch_all = false;
            for rule in &merged.rules {
                let action = route_action(ctx, rs, &service, &rule.default);
                // Kuma names the routes of a rule by its matches: route-targeted policies
                // find them so.
                let name = matches_hash(&rule.matches);
                for m in &rule.matches {
                    has_catch_all |= *m == catch_all;
                    let mut route = Route {
                        name: name.clone(),
                        r#match: Some(route_match(m)),
                        ..Default::default()
                    };
                    apply_action(&mut route, &action, &rule.default);
                    routes.push((Specificity::of(m), route));
                }
            }
            routes.sort_by_key(|r| std::cmp::Reverse(r.0));
            let Some(http) = rs.listeners.get_mut(&listener).and_then(|l| l.http_mut()) else {
                continue;
            };
            let mut table: Vec<Route> = routes.into_iter().map(|(_, r)| r).collect();
            if !has_catch_all {
                let mut default = cluster_route(PathSpecifier::Prefix("/".into()), &service);
                default.name = default_route_name().to_string();
                table.push(default);
            }
            if let Some(vh) = http.route.virtual_hosts.first_mut() {
                vh.routes = table;
            }
        }
        Ok(())
    }
}

/// The precedence of a match, as Kuma orders them (Gateway API's rules): larger comes first.
/// A match with a path beats one without; then exact beats prefix beats regular expression,
/// and between two prefixes or two expressions the longer value wins; then a method match;
/// then more header matches; then more query matches. Ties keep the merged rules' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// No path 0, regular expression 1, prefix 2, exact 3.
    path_kind: u8,
    /// The prefix or expression length (0 for exact paths, which tie).
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

impl Specificity {
    fn of(m: &HttpMatch) -> Self {
        let (path_kind, path_len) = match &m.path {
            None => (0, 0),
            Some(p) => match p.kind {
                PathMatchType::RegularExpression => (1, p.value.len()),
                PathMatchType::PathPrefix => (2, p.value.len()),
                PathMatchType::Exact => (3, 0),
            },
        };
        Specificity {
            path_kind,
            path_len,
            method: m.method.is_some(),
            headers: m.headers.as_ref().map_or(0, Vec::len),
            query: m.query_params.as_ref().map_or(0, Vec::len),
        }
    }
}

fn route_match(m: &HttpMatch) -> RouteMatch {
    let path = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(p) => match p.kind {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::PathPrefix => {
                let trimmed = p.value.trim_end_matches('/');
                if trimmed.is_empty() {
                    PathSpecifier::Prefix("/".into())
                } else {
                    PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
                }
            }
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(RegexMatcher {
                regex: p.value.clone(),
                ..Default::default()
            }),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().flatten().map(header_matcher).collect();
    if let Some(method) = &m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(string_exact(method)),
            ..Default::default()
        });
    }
    let query_parameters = m
        .query_params
        .iter()
        .flatten()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                string_matcher(match q.kind {
                    QueryMatchType::Exact => MatchPattern::Exact(q.value.clone()),
                    QueryMatchType::RegularExpression => MatchPattern::SafeRegex(RegexMatcher {
                        regex: q.value.clone(),
                        ..Default::default()
                    }),
                }),
            )),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// The cluster name and weight of each backend (the outbound's own service when none).
fn backends(
    ctx: &OutboundContext<'_>,
    rs: &mut ResourceSet,
    service: &str,
    refs: Option<&Vec<BackendRef>>,
) -> Vec<(String, u32)> {
    match refs {
        None => {
            add_service_cluster(ctx.mesh, rs, service, service, None);
            vec![(service.to_string(), 1)]
        }
        Some(refs) => refs
            .iter()
            .filter_map(|b| Some((backend_cluster(ctx.mesh, rs, b)?, b.weight.unwrap_or(1))))
            .collect(),
    }
}

fn cluster_specifier(backends: &[(String, u32)]) -> Option<ClusterSpecifier> {
    match backends {
        [] => None,
        [(name, _)] => Some(ClusterSpecifier::Cluster(name.clone())),
        many => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// What a rule does: forward (to clusters, possibly rewritten and mirrored) or redirect.
fn route_action(
    ctx: &OutboundContext<'_>,
    rs: &mut ResourceSet,
    service: &str,
    conf: &HttpRouteConf,
) -> Action {
    let filters = conf.filters.as_deref().unwrap_or_default();
    if let Some(r) = filters
        .iter()
        .find(|f| f.kind == HttpFilterType::RequestRedirect)
        .and_then(|f| f.request_redirect.as_ref())
    {
        let response_code = match r.status_code {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        };
        return Action::Redirect(RedirectAction {
            host_redirect: r.hostname.clone().unwrap_or_default(),
            port_redirect: r.port.map_or(0, u32::from),
            response_code: response_code as i32,
            scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: r.path.as_ref().and_then(|p| match p.kind {
                PathRewriteType::ReplaceFullPath => {
                    p.replace_full_path.clone().map(RedirectPath::PathRedirect)
                }
                PathRewriteType::ReplacePrefixMatch => p
                    .replace_prefix_match
                    .clone()
                    .map(RedirectPath::PrefixRewrite),
            }),
            ..Default::default()
        });
    }
    let targets = backends(ctx, rs, service, conf.backend_refs.as_ref());
    let mut action = RouteAction {
        cluster_specifier: cluster_specifier(&targets),
        ..Default::default()
    };
    if targets.is_empty() {
        // Every backend was unknown: Envoy answers 503 rather than guessing.
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(service.to_string()));
    }
    for f in filters {
        match f.kind {
            HttpFilterType::UrlRewrite => {
                let Some(u) = &f.url_rewrite else { continue };
                if let Some(h) = &u.hostname {
                    action.host_rewrite_specifier =
                        Some(HostRewriteSpecifier::HostRewriteLiteral(h.clone()));
                } else if u.host_to_backend_hostname == Some(true) {
                    action.host_rewrite_specifier =
                        Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                            value: true,
                        }));
                }
                if let Some(p) = &u.path {
                    match p.kind {
                        PathRewriteType::ReplacePrefixMatch => {
                            action.prefix_rewrite =
                                p.replace_prefix_match.clone().unwrap_or_default();
                        }
                        PathRewriteType::ReplaceFullPath => {
                            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                                pattern: Some(RegexMatcher {
                                    regex: ".*".into(),
                                    ..Default::default()
                                }),
                                substitution: p.replace_full_path.clone().unwrap_or_default(),
                            });
                        }
                    }
                }
            }
            HttpFilterType::RequestMirror => {
                let Some(m) = &f.request_mirror else { continue };
                let Some(cluster) = backend_cluster(ctx.mesh, rs, &m.backend_ref) else {
                    continue;
                };
                let percent = m
                    .percentage
                    .as_ref()
                    .and_then(IntOrString::as_f64)
                    .unwrap_or(100.0);
                action.request_mirror_policies.push(RequestMirrorPolicy {
                    cluster,
                    runtime_fraction: Some(RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
                            denominator: DenominatorType::Million as i32,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            _ => {}
        }
    }
    Action::Route(action)
}

/// Sets the action and the header modifiers of a rule on `route`.
fn apply_action(route: &mut Route, action: &Action, conf: &HttpRouteConf) {
    route.action = Some(action.clone());
    for f in conf.filters.iter().flatten() {
        match f.kind {
            HttpFilterType::RequestHeaderModifier => {
                if let Some(m) = &f.request_header_modifier {
                    route.request_headers_to_add.extend(header_values(m));
                    route
                        .request_headers_to_remove
                        .extend(m.remove.iter().flatten().cloned());
                }
            }
            HttpFilterType::ResponseHeaderModifier => {
                if let Some(m) = &f.response_header_modifier {
                    route.response_headers_to_add.extend(header_values(m));
                    route
                        .response_headers_to_remove
                        .extend(m.remove.iter().flatten().cloned());
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(json: serde_json::Value) -> HttpMatch {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn matches_are_ordered_as_kuma_orders_them() {
        let matches = [
            (
                "headers only",
                m(serde_json::json!({"headers": [{"name": "a", "value": "1"}]})),
            ),
            (
                "regex",
                m(serde_json::json!({"path": {"type": "RegularExpression", "value": "/a.*"}})),
            ),
            (
                "short prefix",
                m(serde_json::json!({"path": {"type": "PathPrefix", "value": "/"}})),
            ),
            (
                "prefix + header",
                m(
                    serde_json::json!({"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": "a", "value": "1"}]}),
                ),
            ),
            (
                "prefix + method",
                m(
                    serde_json::json!({"path": {"type": "PathPrefix", "value": "/"}, "method": "GET"}),
                ),
            ),
            (
                "long prefix",
                m(serde_json::json!({"path": {"type": "PathPrefix", "value": "/api/v1"}})),
            ),
            (
                "exact",
                m(serde_json::json!({"path": {"type": "Exact", "value": "/x"}})),
            ),
            ("nothing", m(serde_json::json!({}))),
        ];
        let mut ordered: Vec<_> = matches
            .iter()
            .map(|(name, m)| (Specificity::of(m), *name))
            .collect();
        ordered.sort_by_key(|r| std::cmp::Reverse(r.0));
        let names: Vec<&str> = ordered.into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            names,
            [
                "exact",
                "long prefix",
                "prefix + method",
                "prefix + header",
                "short prefix",
                "regex",
                "headers only",
                "nothing"
            ]
        );
    }
}
