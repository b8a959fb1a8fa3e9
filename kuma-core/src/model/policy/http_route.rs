//! MeshHTTPRoute: HTTP routing by path, method, headers and query, with filters and weighted backends.

use serde::{Deserialize, Serialize};

use super::{
    BackendRef, HeaderMatch, HeaderMatchType, HeaderModifier, TargetRef, TargetRefKind,
    TargetRefKind::*, TargetRefRules, kinds, validate_header_modifier, validate_target_ref,
    validate_top,
};
use crate::model::common::{IntOrString, is_ip, validate_percentage};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshHTTPRoute`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshHttpRouteSpec {
    /// Proxies whose outbound traffic is routed.
    pub target_ref: Option<TargetRef>,
    /// Routes per destination.
    pub to: Option<Vec<HttpRouteTo>>,
}

/// Routes towards one destination.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTo {
    /// Hostnames (gateways only).
    pub hostnames: Option<Vec<String>>,
    /// The destination.
    pub target_ref: TargetRef,
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Requests the rule applies to (all match conditions of one entry must hold).
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    /// What happens to matched requests.
    #[serde(default)]
    pub default: HttpRouteConf,
}

/// An HTTP request match.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Path match.
    pub path: Option<PathMatch>,
    /// Method match.
    pub method: Option<String>,
    /// Query parameter matches.
    pub query_params: Option<Vec<QueryParamsMatch>>,
    /// Header matches.
    pub headers: Option<Vec<HeaderMatch>>,
}

/// A path match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// The path or pattern.
    pub value: String,
    /// `Exact`, `PathPrefix` or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: PathMatchType,
}

/// How a path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    /// Equal.
    Exact,
    /// `/`-separated prefix.
    PathPrefix,
    /// Regex.
    RegularExpression,
}

/// A query parameter match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParamsMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: QueryMatchType,
    /// Parameter name.
    pub name: String,
    /// Value or pattern.
    pub value: String,
}

/// How a query parameter is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryMatchType {
    /// Equal.
    Exact,
    /// Regex.
    RegularExpression,
}

/// The action of a rule.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteConf {
    /// Filters applied in order.
    pub filters: Option<Vec<HttpFilter>>,
    /// Weighted backends.
    pub backend_refs: Option<Vec<BackendRef>>,
}

/// A route filter.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFilter {
    /// The filter kind.
    #[serde(rename = "type")]
    pub kind: HttpFilterType,
    /// Request header changes.
    pub request_header_modifier: Option<HeaderModifier>,
    /// Response header changes.
    pub response_header_modifier: Option<HeaderModifier>,
    /// A redirect.
    pub request_redirect: Option<RequestRedirect>,
    /// A URL rewrite.
    pub url_rewrite: Option<UrlRewrite>,
    /// Mirroring to another backend.
    pub request_mirror: Option<RequestMirror>,
}

/// Route filter kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpFilterType {
    /// Change request headers.
    RequestHeaderModifier,
    /// Change response headers.
    ResponseHeaderModifier,
    /// Redirect.
    RequestRedirect,
    /// Rewrite the URL.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Mirror requests.
    RequestMirror,
}

/// A redirect.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Target host.
    pub hostname: Option<String>,
    /// Path rewrite.
    pub path: Option<PathRewrite>,
    /// Target port.
    pub port: Option<u16>,
    /// HTTP status (301, 302, 303, 307 or 308).
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// A path rewrite.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewrite {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: PathRewriteType,
    /// The new path.
    pub replace_full_path: Option<String>,
    /// The new prefix.
    pub replace_prefix_match: Option<String>,
}

/// Path rewrite kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathRewriteType {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the matched prefix.
    ReplacePrefixMatch,
}

/// A URL rewrite.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// New host header.
    pub hostname: Option<String>,
    /// Path rewrite.
    pub path: Option<PathRewrite>,
    /// Use the backend's hostname as host header (gateways only).
    pub host_to_backend_hostname: Option<bool>,
}

/// Mirroring.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    /// Share of mirrored requests (default 100).
    pub percentage: Option<IntOrString>,
    /// Where to mirror.
    pub backend_ref: BackendRef,
}

const HTTP_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];
const REDIRECT_CODES: &[u16] = &[301, 302, 303, 307, 308];

/// Backend kinds routes may send traffic to.
pub const ROUTE_BACKEND_KINDS: &[TargetRefKind] = &[
    MeshService,
    MeshServiceSubset,
    MeshExternalService,
    MeshMultiZoneService,
];

/// Checks a list of route backends.
pub fn validate_backend_refs(p: &Path, refs: &[BackendRef], err: &mut ValidationError) {
    for (i, b) in refs.iter().enumerate() {
        let bp = p.index(i);
        validate_target_ref(
            &bp,
            &b.target_ref(),
            TargetRefRules {
                kinds: ROUTE_BACKEND_KINDS,
                ..Default::default()
            },
            err,
        );
        if matches!(b.kind, MeshService | MeshMultiZoneService)
            && b.port.is_some_and(|port| port == 0 || port > 65535)
        {
            err.add(&bp.field("port"), "port must be a valid (1-65535)");
        }
    }
}

fn validate_hostname(p: &Path, h: &str, err: &mut ValidationError) {
    if is_ip(h) {
        err.add(p, "cannot be an IP address");
    } else if !crate::model::common::is_dns_subdomain(h) {
        err.add(p, "must be a valid DNS subdomain");
    }
}

fn validate_path_rewrite(p: &Path, r: &PathRewrite, all_prefix: bool, err: &mut ValidationError) {
    match r.kind {
        PathRewriteType::ReplaceFullPath if r.replace_full_path.is_none() => {
            err.add(&p.field("replaceFullPath"), "must be defined");
        }
        PathRewriteType::ReplacePrefixMatch => {
            if r.replace_prefix_match.is_none() {
                err.add(&p.field("replacePrefixMatch"), "must be defined");
            } else if !all_prefix {
                err.add(
                    &p.field("replacePrefixMatch"),
                    "can only appear if all matches match a path prefix",
                );
            }
        }
        _ => {}
    }
}

fn validate_matches(p: &Path, matches: &[HttpMatch], err: &mut ValidationError) {
    for (i, m) in matches.iter().enumerate() {
        let mp = p.index(i);
        if let Some(path) = &m.path {
            let vp = mp.field("path").field("value");
            match path.kind {
                PathMatchType::RegularExpression => {}
                PathMatchType::PathPrefix if path.value == "/" => {}
                PathMatchType::PathPrefix => {
                    if path.value.ends_with('/') {
                        err.add(
                            &vp,
                            "does not need a trailing slash because only a `/`-separated prefix or an entire path is matched",
                        );
                    }
                    if !path.value.starts_with('/') {
                        err.add(&vp, "must be an absolute path");
                    }
                }
                PathMatchType::Exact if !path.value.starts_with('/') => {
                    err.add(&vp, "must be an absolute path")
                }
                PathMatchType::Exact => {}
            }
        }
        if let Some(method) = &m.method
            && !HTTP_METHODS.contains(&method.as_str())
        {
            err.add(
                &mp.field("method"),
                format!("must be one of: {}", HTTP_METHODS.join(", ")),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (qi, q) in m.query_params.iter().flatten().enumerate() {
            if !seen.insert(q.name.as_str()) {
                err.add(
                    &mp.field("queryParams").index(qi).field("name"),
                    format!("multiple entries for name {}", q.name),
                );
            }
        }
        for (hi, h) in m.headers.iter().flatten().enumerate() {
            let kind = h.kind.unwrap_or(HeaderMatchType::Exact);
            if matches!(kind, HeaderMatchType::Present | HeaderMatchType::Absent)
                && h.value.as_deref().is_some_and(|v| !v.is_empty())
            {
                err.add(
                    &mp.field("headers").index(hi).field("value"),
                    "must not be defined",
                );
            }
            if h.name.is_empty() {
                err.add(
                    &mp.field("headers").index(hi).field("name"),
                    "must not be empty",
                );
            }
        }
    }
}

impl HttpRouteRule {
    fn validate(&self, p: &Path, top: TargetRefKind, err: &mut ValidationError) {
        validate_matches(&p.field("matches"), &self.matches, err);
        let all_prefix = self.matches.iter().all(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
        });
        let fp = p.field("default").field("filters");
        let filters = self.default.filters.as_deref().unwrap_or_default();
        for (i, f) in filters.iter().enumerate() {
            let fp = fp.index(i);
            match f.kind {
                HttpFilterType::RequestHeaderModifier | HttpFilterType::ResponseHeaderModifier => {
                    let (field, m) = if f.kind == HttpFilterType::RequestHeaderModifier {
                        ("requestHeaderModifier", &f.request_header_modifier)
                    } else {
                        ("responseHeaderModifier", &f.response_header_modifier)
                    };
                    match m {
                        None => err.add(&fp.field(field), "must be defined"),
                        Some(m) => validate_header_modifier(&fp.field(field), m, err),
                    }
                }
                HttpFilterType::RequestRedirect => match &f.request_redirect {
                    None => err.add(&fp.field("requestRedirect"), "must be defined"),
                    Some(r) => {
                        let rp = fp.field("requestRedirect");
                        if let Some(h) = &r.hostname {
                            validate_hostname(&rp.field("hostname"), h, err);
                        }
                        if let Some(pr) = &r.path {
                            validate_path_rewrite(&rp.field("path"), pr, all_prefix, err);
                        }
                        if let Some(s) = &r.scheme
                            && s != "http"
                            && s != "https"
                        {
                            err.add(&rp.field("scheme"), "must be one of: http, https");
                        }
                        if !REDIRECT_CODES.contains(&r.status_code) {
                            err.add(
                                &rp.field("statusCode"),
                                "must be one of: 301, 302, 303, 307, 308",
                            );
                        }
                        if r.port == Some(0) {
                            err.add(&rp.field("port"), "port must be in the range [1, 65535]");
                        }
                    }
                },
                HttpFilterType::UrlRewrite => match &f.url_rewrite {
                    None => err.add(&fp.field("urlRewrite"), "must be defined"),
                    Some(r) => {
                        let rp = fp.field("urlRewrite");
                        if let Some(h) = &r.hostname {
                            validate_hostname(&rp.field("hostname"), h, err);
                        }
                        if let Some(pr) = &r.path {
                            validate_path_rewrite(&rp.field("path"), pr, all_prefix, err);
                        }
                        if r.host_to_backend_hostname == Some(true) {
                            if top != MeshGateway {
                                err.add(
                                    &rp.field("hostToBackendHostname"),
                                    "can only be set with MeshGateway",
                                );
                            }
                            if r.hostname.is_some() {
                                err.add(
                                    &rp.field("hostToBackendHostname"),
                                    "cannot be set together with hostname",
                                );
                            }
                        }
                    }
                },
                HttpFilterType::RequestMirror => match &f.request_mirror {
                    None => err.add(&fp.field("requestMirror"), "must be defined"),
                    Some(m) => {
                        let mp = fp.field("requestMirror");
                        if let Some(pct) = &m.percentage {
                            validate_percentage(&mp.field("percentage"), pct, err);
                        }
                        validate_backend_refs(
                            &mp.field("backendRef"),
                            std::slice::from_ref(&m.backend_ref),
                            err,
                        );
                    }
                },
            }
        }
        let bp = p.field("default").field("backendRefs");
        let backends = self.default.backend_refs.as_deref().unwrap_or_default();
        if backends.is_empty()
            && top == MeshGateway
            && !filters
                .iter()
                .any(|f| f.kind == HttpFilterType::RequestRedirect)
        {
            err.add(&bp, "must not be empty");
        }
        validate_backend_refs(&bp, backends, err);
    }
}

impl MeshHttpRouteSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            ..Default::default()
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        for (i, to) in self.to.iter().flatten().enumerate() {
            let p = Path::at("spec").field("to").index(i);
            validate_target_ref(
                &p.field("targetRef"),
                &to.target_ref,
                route_to_rules(top_kind),
                &mut err,
            );
            for (ri, r) in to.rules.iter().enumerate() {
                r.validate(&p.field("rules").index(ri), top_kind, &mut err);
            }
            if top_kind != MeshGateway && to.hostnames.as_ref().is_some_and(|h| !h.is_empty()) {
                err.add(&p.field("hostnames"), "must not be defined");
            }
        }
        err
    }
}

/// What a route's `to[].targetRef` may name under a given top-level kind.
pub(crate) fn route_to_rules(top: TargetRefKind) -> TargetRefRules<'static> {
    let kinds: &'static [TargetRefKind] = if top == MeshGateway {
        &[Mesh]
    } else {
        &[MeshService, MeshExternalService, MeshMultiZoneService]
    };
    TargetRefRules {
        kinds,
        ..Default::default()
    }
}

/// The name Kuma gives the routes of a rule with `matches`: the standard base64 of the SHA-256
/// of the matches as Kuma serializes them (Go's JSON: fields in declaration order, absent ones
/// left out, `<`, `>`, `&`, U+2028 and U+2029 escaped). Policies with a top-level targetRef
/// `MeshHTTPRoute` reach a rule's routes through it (see
/// [`RULE_MATCHES_HASH_TAG`](crate::rules::RULE_MATCHES_HASH_TAG)).
pub fn matches_hash(matches: &[HttpMatch]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let json = go_json_matches(matches);
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(json.as_bytes()))
}

/// The match of every request: a path prefix `/` and nothing else.
pub fn catch_all_match() -> HttpMatch {
    HttpMatch {
        path: Some(PathMatch {
            value: "/".into(),
            kind: PathMatchType::PathPrefix,
        }),
        ..Default::default()
    }
}

/// The name of the default route of every HTTP outbound (the [`matches_hash`] of
/// [`catch_all_match`]), as Kuma names it.
pub fn default_route_name() -> &'static str {
    static NAME: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| matches_hash(&[catch_all_match()]));
    &NAME
}

/// `matches` as Go's `encoding/json` writes Kuma's `[]Match`.
fn go_json_matches(matches: &[HttpMatch]) -> String {
    fn string(out: &mut String, s: &str) {
        // serde_json escapes as Go does, except for Go's HTML-safe escapes.
        let json = serde_json::Value::from(s).to_string();
        for c in json.chars() {
            match c {
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        }
    }
    fn enum_name<T: Serialize>(out: &mut String, v: &T) {
        let name = serde_json::to_value(v)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        string(out, &name);
    }
    // Writes `"key":` preceded by a comma unless it opens the object.
    fn key(out: &mut String, first: &mut bool, k: &str) {
        if !std::mem::take(first) {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
    }
    let mut out = String::from("[");
    for (i, m) in matches.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        let mut first = true;
        if let Some(p) = &m.path {
            key(&mut out, &mut first, "path");
            out.push_str("{\"value\":");
            string(&mut out, &p.value);
            out.push_str(",\"type\":");
            enum_name(&mut out, &p.kind);
            out.push('}');
        }
        if let Some(method) = &m.method {
            key(&mut out, &mut first, "method");
            string(&mut out, method);
        }
        if let Some(query) = &m.query_params {
            key(&mut out, &mut first, "queryParams");
            out.push('[');
            for (qi, q) in query.iter().enumerate() {
                if qi > 0 {
                    out.push(',');
                }
                out.push_str("{\"type\":");
                enum_name(&mut out, &q.kind);
                out.push_str(",\"name\":");
                string(&mut out, &q.name);
                out.push_str(",\"value\":");
                string(&mut out, &q.value);
                out.push('}');
            }
            out.push(']');
        }
        if let Some(headers) = &m.headers {
            key(&mut out, &mut first, "headers");
            out.push('[');
            for (hi, h) in headers.iter().enumerate() {
                if hi > 0 {
                    out.push(',');
                }
                out.push('{');
                let mut first = true;
                if let Some(kind) = &h.kind {
                    key(&mut out, &mut first, "type");
                    enum_name(&mut out, kind);
                }
                key(&mut out, &mut first, "name");
                string(&mut out, &h.name);
                if let Some(v) = h.value.as_deref().filter(|v| !v.is_empty()) {
                    key(&mut out, &mut first, "value");
                    string(&mut out, v);
                }
                out.push('}');
            }
            out.push(']');
        }
        out.push('}');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    fn prefix(value: &str) -> HttpMatch {
        HttpMatch {
            path: Some(PathMatch {
                value: value.into(),
                kind: PathMatchType::PathPrefix,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn matches_serialize_as_go_does() {
        let m = HttpMatch {
            path: Some(PathMatch {
                value: "/a&b<c>".into(),
                kind: PathMatchType::Exact,
            }),
            method: Some("GET".into()),
            query_params: Some(vec![QueryParamsMatch {
                kind: QueryMatchType::Exact,
                name: "q".into(),
                value: "1".into(),
            }]),
            headers: Some(vec![
                HeaderMatch {
                    kind: None,
                    name: "x".into(),
                    value: Some("\"v\"\n".into()),
                },
                HeaderMatch {
                    kind: Some(HeaderMatchType::Present),
                    name: "y".into(),
                    value: Some(String::new()),
                },
            ]),
        };
        assert_eq!(
            go_json_matches(&[m, HttpMatch::default()]),
            r#"[{"path":{"value":"/a\u0026b\u003cc\u003e","type":"Exact"},"method":"GET","queryParams":[{"type":"Exact","name":"q","value":"1"}],"headers":[{"name":"x","value":"\"v\"\n"},{"type":"Present","name":"y"}]},{}]"#
        );
    }

    #[test]
    fn catch_all_route_hash_is_kumas() {
        // sha256 of `[{"path":{"value":"/","type":"PathPrefix"}}]`, as Kuma names the default
        // route of every HTTP outbound.
        let json = go_json_matches(&[prefix("/")]);
        assert_eq!(json, r#"[{"path":{"value":"/","type":"PathPrefix"}}]"#);
        assert_eq!(
            matches_hash(&[prefix("/")]),
            "9Zuf5Tg79OuZcQITwBbQykxAk2u4fRKrwYn3//AL4Yo="
        );
        assert_eq!(default_route_name(), matches_hash(&[catch_all_match()]));
        assert_ne!(matches_hash(&[prefix("/")]), matches_hash(&[prefix("/a")]));
    }
}
