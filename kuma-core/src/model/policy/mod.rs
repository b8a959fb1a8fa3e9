//! The targetRef policy envelope shared by every `Mesh*` policy, and the typed specs.
//!
//! A policy selects proxies with a top-level `targetRef`, then lists `to` entries (outbound
//! destinations), `from` entries (inbound sources) or `rules` (inbound, match-based), each with a
//! `default` configuration. The typed specs live one module per policy type.

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
mod traffic_permission;

pub use access_log::*;
pub use circuit_breaker::*;
pub use fault_injection::*;
pub use health_check::*;
pub use http_route::*;
pub use load_balancing::*;
pub use rate_limit::*;
pub use retry::*;
pub use tcp_route::*;
pub use timeout::*;
/// A MeshTrafficPermission action (`Action` alone clashes with other policies's).
pub use traffic_permission::Action as PermissionAction;
pub use traffic_permission::*;

use serde::{Deserialize, Serialize};

use super::common::{TagRules, Tags, validate_tags};
use crate::validation::{Path, ValidationError};

/// Kinds a `targetRef` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TargetRefKind {
    /// Every proxy of the mesh.
    Mesh,
    /// One proxy (by name or labels), optionally one inbound (`sectionName`).
    Dataplane,
    /// Proxies with an inbound matching `tags`.
    MeshSubset,
    /// A builtin gateway.
    MeshGateway,
    /// A service (`kuma.io/service` or a MeshService resource).
    MeshService,
    /// An external service resource.
    MeshExternalService,
    /// A multi-zone service resource.
    MeshMultiZoneService,
    /// A service narrowed by tags.
    MeshServiceSubset,
    /// An HTTP route.
    MeshHTTPRoute,
}

impl TargetRefKind {
    /// Kuma's ordering of top-level kinds when merging (more specific is later).
    pub fn specificity(self) -> u8 {
        match self {
            TargetRefKind::Mesh => 1,
            TargetRefKind::Dataplane => 2,
            TargetRefKind::MeshSubset => 3,
            TargetRefKind::MeshGateway => 4,
            TargetRefKind::MeshService => 5,
            TargetRefKind::MeshExternalService => 6,
            TargetRefKind::MeshMultiZoneService => 7,
            TargetRefKind::MeshServiceSubset => 8,
            TargetRefKind::MeshHTTPRoute => 9,
        }
    }

    /// The kind's name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetRefKind::Mesh => "Mesh",
            TargetRefKind::Dataplane => "Dataplane",
            TargetRefKind::MeshSubset => "MeshSubset",
            TargetRefKind::MeshGateway => "MeshGateway",
            TargetRefKind::MeshService => "MeshService",
            TargetRefKind::MeshExternalService => "MeshExternalService",
            TargetRefKind::MeshMultiZoneService => "MeshMultiZoneService",
            TargetRefKind::MeshServiceSubset => "MeshServiceSubset",
            TargetRefKind::MeshHTTPRoute => "MeshHTTPRoute",
        }
    }
}

/// Proxy types a `Mesh`/`MeshSubset` targetRef can be narrowed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyType {
    /// Sidecars.
    Sidecar,
    /// Gateways.
    Gateway,
}

/// A reference to what a policy (or one of its entries) applies to.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// The kind of target.
    pub kind: TargetRefKind,
    /// Name of the target resource or service.
    pub name: Option<String>,
    /// Tags (MeshSubset, MeshServiceSubset, MeshGateway listeners).
    pub tags: Option<Tags>,
    /// Mesh of the target (not supported by any kind yet).
    pub mesh: Option<String>,
    /// Narrow `Mesh`/`MeshSubset` to sidecars or gateways.
    pub proxy_types: Option<Vec<ProxyType>>,
    /// Namespace (Kubernetes).
    pub namespace: Option<String>,
    /// Labels selecting target resources.
    pub labels: Option<Tags>,
    /// A section (inbound name or port) of the target.
    pub section_name: Option<String>,
}

impl TargetRef {
    /// `{kind: Mesh}`.
    pub fn mesh() -> Self {
        TargetRef {
            kind: TargetRefKind::Mesh,
            name: None,
            tags: None,
            mesh: None,
            proxy_types: None,
            namespace: None,
            labels: None,
            section_name: None,
        }
    }

    /// `{kind, name}`.
    pub fn named(kind: TargetRefKind, name: &str) -> Self {
        TargetRef {
            kind,
            name: Some(name.to_string()),
            ..TargetRef::mesh()
        }
    }
}

/// A reference to a backend of a route: a target plus weight and port.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// The kind of backend.
    pub kind: TargetRefKind,
    /// Name of the backend.
    pub name: Option<String>,
    /// Tags (MeshServiceSubset).
    pub tags: Option<Tags>,
    /// Mesh of the backend.
    pub mesh: Option<String>,
    /// Proxy types (not meaningful for backends).
    pub proxy_types: Option<Vec<ProxyType>>,
    /// Namespace (Kubernetes).
    pub namespace: Option<String>,
    /// Labels selecting the backend.
    pub labels: Option<Tags>,
    /// Section of the backend.
    pub section_name: Option<String>,
    /// Relative weight.
    pub weight: Option<u32>,
    /// Port of the backend.
    pub port: Option<u32>,
}

impl BackendRef {
    /// The backend as a plain targetRef (for validation and matching).
    pub fn target_ref(&self) -> TargetRef {
        TargetRef {
            kind: self.kind,
            name: self.name.clone(),
            tags: self.tags.clone(),
            mesh: self.mesh.clone(),
            proxy_types: self.proxy_types.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            section_name: self.section_name.clone(),
        }
    }
}

/// One `to` or `from` entry: a target and the configuration that applies to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetedConf<C> {
    /// The destination (`to`) or source (`from`).
    pub target_ref: TargetRef,
    /// The configuration.
    #[serde(default)]
    pub default: C,
}

/// A `rules` entry with optional matches (inbound policies).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchedRule<C> {
    /// Which requests the rule applies to.
    pub matches: Option<Vec<Match>>,
    /// The configuration.
    #[serde(default)]
    pub default: C,
}

/// A match on the source of inbound traffic.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Match on the client's SPIFFE ID.
    #[serde(rename = "spiffeID")]
    pub spiffe_id: Option<SpiffeIdMatch>,
    /// Match on the SNI.
    pub sni: Option<SniMatch>,
}

/// A SPIFFE ID match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiffeIdMatch {
    /// `Exact` or `Prefix`.
    #[serde(rename = "type")]
    pub kind: SpiffeIdMatchType,
    /// The SPIFFE ID.
    pub value: String,
}

/// How a SPIFFE ID is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpiffeIdMatchType {
    /// Equal.
    Exact,
    /// Starts with.
    Prefix,
}

/// An SNI match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SniMatch {
    /// `Exact`.
    #[serde(rename = "type")]
    pub kind: SniMatchType,
    /// The server name.
    pub value: String,
}

/// How an SNI is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SniMatchType {
    /// Equal.
    Exact,
}

/// A header match.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// How to match (default `Exact`).
    #[serde(rename = "type")]
    pub kind: Option<HeaderMatchType>,
    /// Header name.
    pub name: String,
    /// Value to compare with.
    pub value: Option<String>,
}

/// How a header is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderMatchType {
    /// Equal.
    Exact,
    /// Present.
    Present,
    /// Regex match.
    RegularExpression,
    /// Absent.
    Absent,
    /// Starts with.
    Prefix,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderKeyValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Headers to set or add.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace these headers.
    pub set: Option<Vec<HeaderKeyValue>>,
    /// Append these headers.
    pub add: Option<Vec<HeaderKeyValue>>,
    /// Remove these headers (routes only).
    pub remove: Option<Vec<String>>,
}

/// What a policy section allows in its targetRefs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetRefRules<'a> {
    /// Kinds that may appear.
    pub kinds: &'a [TargetRefKind],
    /// `MeshGateway` may carry listener tags.
    pub gateway_listener_tags: bool,
    /// The policy has inbound sections (`from`/`rules`): `Dataplane` may use `sectionName`.
    pub inbound_policy: bool,
    /// The targetRef is the policy's top-level one (set by [`validate_top`]).
    pub top_level: bool,
}

fn disallow<T>(
    path: &Path,
    field: &str,
    value: &Option<T>,
    kind: TargetRefKind,
    err: &mut ValidationError,
) where
    T: IsSet,
{
    if value.as_ref().is_some_and(IsSet::is_set) {
        err.add(
            &path.field(field),
            format!("must not be set with kind {}", kind.as_str()),
        );
    }
}

trait IsSet {
    fn is_set(&self) -> bool;
}
impl IsSet for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}
impl IsSet for Tags {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}
impl IsSet for Vec<ProxyType> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

fn non_empty(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

fn has_labels(v: &Option<Tags>) -> bool {
    v.as_ref().is_some_and(|l| !l.is_empty())
}

fn validate_ref_name(path: &Path, name: &Option<String>, err: &mut ValidationError) {
    if let Some(n) = name
        && !n.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        })
    {
        err.add(
            &path.field("name"),
            "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
        );
    }
}

/// Checks one targetRef against the rules of its section, as Kuma's `ValidateTargetRef` does.
pub fn validate_target_ref(
    path: &Path,
    r: &TargetRef,
    rules: TargetRefRules<'_>,
    err: &mut ValidationError,
) {
    use TargetRefKind::*;
    if !rules.kinds.contains(&r.kind) {
        err.add(
            &path.field("kind"),
            format!("value '{}' is not supported", r.kind.as_str()),
        );
        return;
    }
    let k = r.kind;
    refuse_unserved(path, r, rules.top_level, err);
    match k {
        Mesh => {
            if non_empty(&r.name) {
                err.add(
                    &path.field("name"),
                    "using name with kind Mesh is not yet supported",
                );
            }
            disallow(path, "mesh", &r.mesh, k, err);
            disallow(path, "tags", &r.tags, k, err);
            disallow(path, "labels", &r.labels, k, err);
            disallow(path, "namespace", &r.namespace, k, err);
            disallow(path, "sectionName", &r.section_name, k, err);
            validate_proxy_types(path, &r.proxy_types, err);
        }
        Dataplane => {
            disallow(path, "tags", &r.tags, k, err);
            disallow(path, "mesh", &r.mesh, k, err);
            disallow(path, "proxyTypes", &r.proxy_types, k, err);
            if has_labels(&r.labels) && (non_empty(&r.name) || non_empty(&r.namespace)) {
                err.add(
                    &path.field("labels"),
                    "either labels or name and namespace must be specified",
                );
            }
            if !rules.inbound_policy && non_empty(&r.section_name) {
                err.add(
                    &path.field("sectionName"),
                    "can only be used with inbound policies",
                );
            }
        }
        MeshSubset => {
            disallow(path, "name", &r.name, k, err);
            disallow(path, "mesh", &r.mesh, k, err);
            if let Some(tags) = &r.tags {
                validate_tags(&path.field("tags"), tags, TagRules::default(), err);
            }
            disallow(path, "labels", &r.labels, k, err);
            disallow(path, "namespace", &r.namespace, k, err);
            disallow(path, "sectionName", &r.section_name, k, err);
            validate_proxy_types(path, &r.proxy_types, err);
        }
        MeshService | MeshHTTPRoute | MeshExternalService | MeshMultiZoneService => {
            validate_ref_name(path, &r.name, err);
            disallow(path, "mesh", &r.mesh, k, err);
            disallow(path, "tags", &r.tags, k, err);
            disallow(path, "proxyTypes", &r.proxy_types, k, err);
            if k != MeshService {
                disallow(path, "sectionName", &r.section_name, k, err);
            }
            if !has_labels(&r.labels) && !non_empty(&r.name) {
                err.add(
                    path,
                    format!("name or labels must be set when kind is {}", k.as_str()),
                );
            }
            if has_labels(&r.labels) && (non_empty(&r.name) || non_empty(&r.namespace)) {
                err.add(
                    &path.field("labels"),
                    "either labels or name and namespace must be specified",
                );
            }
        }
        MeshServiceSubset | MeshGateway => {
            if !non_empty(&r.name) {
                err.add(
                    &path.field("name"),
                    format!("must be set with kind {}", k.as_str()),
                );
            }
            validate_ref_name(path, &r.name, err);
            disallow(path, "mesh", &r.mesh, k, err);
            disallow(path, "proxyTypes", &r.proxy_types, k, err);
            if let Some(tags) = &r.tags {
                validate_tags(
                    &path.field("tags"),
                    tags,
                    TagRules {
                        selector: true,
                        ..Default::default()
                    },
                    err,
                );
                if k == MeshGateway && !tags.is_empty() && !rules.gateway_listener_tags {
                    err.add(&path.field("tags"), "must not be set with kind MeshGateway");
                }
            }
            disallow(path, "labels", &r.labels, k, err);
            disallow(path, "namespace", &r.namespace, k, err);
            disallow(path, "sectionName", &r.section_name, k, err);
        }
    }
}

/// Refuses targetRefs that Kuma accepts but that only make sense with resources this control
/// plane does not serve yet (the MeshService family: `MeshService`, `MeshExternalService`,
/// `MeshMultiZoneService` resources), so that such a policy is never stored to do nothing.
/// `MeshService` targets name the `kuma.io/service` tag here.
fn refuse_unserved(path: &Path, r: &TargetRef, top_level: bool, err: &mut ValidationError) {
    use TargetRefKind::*;
    match r.kind {
        MeshExternalService | MeshMultiZoneService => err.add(
            &path.field("kind"),
            format!(
                "value '{}' is not supported by this control plane: it has no {} resources",
                r.kind.as_str(),
                r.kind.as_str()
            ),
        ),
        MeshHTTPRoute if !top_level => err.add(
            &path.field("kind"),
            "value 'MeshHTTPRoute' is supported here only as the top-level targetRef: a route \
             in 'to' applies to MeshService resources, which this control plane does not have",
        ),
        MeshService => {
            if has_labels(&r.labels) {
                err.add(
                    &path.field("labels"),
                    "is not supported by this control plane: it selects MeshService resources, \
                     which it does not have; use name (the kuma.io/service tag)",
                );
            }
            if non_empty(&r.section_name) {
                err.add(
                    &path.field("sectionName"),
                    "is not supported by this control plane: it names a port of a MeshService \
                     resource, which it does not have",
                );
            }
        }
        _ => {}
    }
}

fn validate_proxy_types(path: &Path, p: &Option<Vec<ProxyType>>, err: &mut ValidationError) {
    if p.as_ref().is_some_and(Vec::is_empty) {
        err.add(
            &path.field("proxyTypes"),
            "must be undefined or have at least one element",
        );
    }
}

/// Checks inbound `matches` entries.
pub fn validate_matches(path: &Path, matches: &[Match], err: &mut ValidationError) {
    for (i, m) in matches.iter().enumerate() {
        let p = path.index(i);
        if let Some(s) = &m.spiffe_id
            && !is_spiffe_id(&s.value, s.kind == SpiffeIdMatchType::Prefix)
        {
            err.add(&p.field("spiffeID"), "must be a valid Spiffe ID");
        }
        if let Some(s) = &m.sni
            && !super::common::is_dns_subdomain(&s.value)
        {
            err.add(
                &p.field("sni").field("value"),
                "must be a valid DNS subdomain",
            );
        }
    }
}

fn is_spiffe_id(v: &str, prefix: bool) -> bool {
    let Some(rest) = v.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        });
    let path_ok = path.is_empty() && !rest.ends_with('/')
        || path.split('/').enumerate().all(|(i, seg)| {
            (!seg.is_empty() || (prefix && i == path.split('/').count() - 1))
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        });
    domain_ok && path_ok
}

/// Checks a list of header matches.
pub fn validate_header_matches(path: &Path, headers: &[HeaderMatch], err: &mut ValidationError) {
    for (i, h) in headers.iter().enumerate() {
        let p = path.index(i);
        if h.name.is_empty() {
            err.add(&p.field("name"), "must not be empty");
        }
        let needs_value = matches!(
            h.kind.unwrap_or(HeaderMatchType::Exact),
            HeaderMatchType::Exact | HeaderMatchType::RegularExpression | HeaderMatchType::Prefix
        );
        if needs_value && h.value.as_deref().is_none_or(str::is_empty) {
            err.add(&p.field("value"), "must be set");
        }
    }
}

/// Checks a header modifier (set/add/remove).
pub fn validate_header_modifier(path: &Path, m: &HeaderModifier, err: &mut ValidationError) {
    let all_empty = [
        m.set.as_ref().map(Vec::len),
        m.add.as_ref().map(Vec::len),
        m.remove.as_ref().map(Vec::len),
    ]
    .iter()
    .all(|l| l.unwrap_or(0) == 0);
    if all_empty {
        err.add(path, "at least one of set, add or remove has to be defined");
    }
    for (name, list) in [("set", &m.set), ("add", &m.add)] {
        for (i, kv) in list.iter().flatten().enumerate() {
            if kv.name.is_empty() {
                err.add(
                    &path.field(name).index(i).field("name"),
                    "must not be empty",
                );
            }
        }
    }
}

/// Checks the top-level targetRef (absent means `Mesh`).
pub fn validate_top(
    target_ref: Option<&TargetRef>,
    rules: TargetRefRules<'_>,
    err: &mut ValidationError,
) -> TargetRefKind {
    match target_ref {
        Some(r) => {
            let rules = TargetRefRules {
                top_level: true,
                ..rules
            };
            validate_target_ref(&Path::at("spec").field("targetRef"), r, rules, err);
            r.kind
        }
        None => TargetRefKind::Mesh,
    }
}

/// Checks `to`/`from` entries' targetRefs and calls `conf` for each `default`.
pub fn validate_entries<C>(
    section: &str,
    entries: &[TargetedConf<C>],
    rules: TargetRefRules<'_>,
    err: &mut ValidationError,
    mut conf: impl FnMut(&Path, &TargetedConf<C>, &mut ValidationError),
) {
    let base = Path::at("spec").field(section);
    for (i, e) in entries.iter().enumerate() {
        let p = base.index(i);
        validate_target_ref(&p.field("targetRef"), &e.target_ref, rules, err);
        conf(&p.field("default"), e, err);
    }
}

/// Reports a policy with none of `to`, `from` and `rules`.
pub fn require_sections(sections: &[(&str, bool)], err: &mut ValidationError) {
    if sections.iter().all(|(_, present)| !present) {
        let names: Vec<_> = sections.iter().map(|(n, _)| format!("'{n}'")).collect();
        let list = match names.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => String::new(),
        };
        err.add(
            &Path::at("spec"),
            format!("at least one of {list} has to be defined"),
        );
    }
}

/// Checks that a duration, when given, is positive.
pub fn positive_duration(
    path: &Path,
    d: Option<&crate::duration::Duration>,
    err: &mut ValidationError,
) {
    if let Some(d) = d
        && d.get().is_zero()
    {
        err.add(path, "must be greater than zero when defined");
    }
}

/// Checks that an integer, when given, is greater than zero.
pub fn positive_u32(path: &Path, v: Option<u32>, err: &mut ValidationError) {
    if v == Some(0) {
        err.add(path, "must be greater than 0");
    }
}

/// Checks that an integer percentage, when given, is at most 100.
pub fn percent_u32(path: &Path, v: Option<u32>, err: &mut ValidationError) {
    if v.is_some_and(|v| v > 100) {
        err.add(path, "has to be in [0 - 100] range");
    }
}

/// True when a top-level targetRef may select gateways (Kuma's `IncludesGateways`).
pub fn includes_gateways(top: Option<&TargetRef>) -> bool {
    let Some(t) = top else { return true };
    match t.kind {
        TargetRefKind::MeshGateway | TargetRefKind::MeshHTTPRoute => true,
        TargetRefKind::Mesh | TargetRefKind::MeshSubset => t
            .proxy_types
            .as_ref()
            .is_none_or(|p| p.is_empty() || p.contains(&ProxyType::Gateway)),
        _ => false,
    }
}

/// Checks `from` (sidecars only) and `to` (gateways only) of policies that split that way
/// (MeshRateLimit, MeshFaultInjection), as Kuma does.
pub(crate) fn validate_sidecar_from_gateway_to<C>(
    top: Option<&TargetRef>,
    from: Option<&Vec<TargetedConf<C>>>,
    from_kinds: &[TargetRefKind],
    to: Option<&Vec<TargetedConf<C>>>,
    err: &mut ValidationError,
    conf: impl Fn(&Path, &C, &mut ValidationError),
) {
    let spec = Path::at("spec");
    let gateways = includes_gateways(top);
    if let Some(from) = from.filter(|f| !f.is_empty()) {
        if top.is_some_and(|t| t.kind == TargetRefKind::MeshHTTPRoute) {
            err.add(
                &spec.field("from"),
                "must not be defined when spec.kind is MeshHTTPRoute",
            );
        } else if gateways {
            err.add(
                &spec.field("from"),
                "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to",
            );
        } else {
            let rules = TargetRefRules {
                kinds: from_kinds,
                ..Default::default()
            };
            validate_entries("from", from, rules, err, |p, e, err| {
                conf(p, &e.default, err)
            });
        }
    }
    if let Some(to) = to.filter(|t| !t.is_empty()) {
        if !gateways {
            err.add(&spec.field("to"), "must not be defined");
        } else {
            let rules = TargetRefRules {
                kinds: &[TargetRefKind::Mesh],
                ..Default::default()
            };
            validate_entries("to", to, rules, err, |p, e, err| conf(p, &e.default, err));
        }
    }
}

/// Checks inbound `rules` entries' matches, reporting under `spec.rules[i].matches`.
pub fn validate_rule_matches<C>(
    rules: &[MatchedRule<C>],
    err: &mut ValidationError,
    mut conf: impl FnMut(&Path, &MatchedRule<C>, &mut ValidationError),
) {
    for (i, r) in rules.iter().enumerate() {
        let p = Path::at("spec").field("rules").index(i);
        if let Some(m) = &r.matches {
            validate_matches(&p.field("matches"), m, err);
        }
        conf(&p.field("default"), r, err);
    }
}

/// Kinds as a short slice helper for section rules.
pub(crate) mod kinds {
    use super::TargetRefKind::{self, *};
    /// Top-level kinds of most policies.
    pub const TOP_ALL: &[TargetRefKind] = &[
        Mesh,
        MeshSubset,
        MeshGateway,
        MeshService,
        MeshServiceSubset,
        MeshHTTPRoute,
        Dataplane,
    ];
    /// Top-level kinds without routes.
    pub const TOP_NO_ROUTE: &[TargetRefKind] = &[
        Mesh,
        MeshSubset,
        MeshGateway,
        MeshService,
        MeshServiceSubset,
        Dataplane,
    ];
    /// Top-level kinds of inbound-only policies.
    pub const TOP_SIDECAR: &[TargetRefKind] =
        &[Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane];
    /// `from` kinds.
    pub const FROM_MESH: &[TargetRefKind] = &[Mesh];
    /// `to` kinds for a service destination.
    pub const TO_SERVICES: &[TargetRefKind] =
        &[Mesh, MeshService, MeshExternalService, MeshMultiZoneService];
    /// `to` kinds when the top-level is a gateway or a route.
    pub const TO_GATEWAY: &[TargetRefKind] = &[Mesh, MeshExternalService];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        assert!(is_spiffe_id("spiffe://default/backend", false));
        assert!(is_spiffe_id("spiffe://default", false));
        assert!(is_spiffe_id("spiffe://default/", true));
        assert!(!is_spiffe_id("spiffe://default/", false));
        assert!(!is_spiffe_id("http://default/backend", false));
        assert!(!is_spiffe_id("spiffe:///backend", false));
    }

    #[test]
    fn target_ref_rules() {
        let rules = TargetRefRules {
            kinds: kinds::TOP_SIDECAR,
            ..Default::default()
        };
        let mut err = ValidationError::new();
        let mut r = TargetRef::named(TargetRefKind::Mesh, "x");
        r.section_name = Some("http".into());
        validate_target_ref(&Path::at("spec").field("targetRef"), &r, rules, &mut err);
        validate_target_ref(
            &Path::at("t"),
            &TargetRef::mesh_kind(TargetRefKind::MeshHTTPRoute),
            rules,
            &mut err,
        );
        let fields: Vec<_> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.targetRef.name",
                "spec.targetRef.sectionName",
                "t.kind"
            ]
        );
    }

    #[test]
    fn targets_needing_meshservice_resources_are_refused_with_the_reason() {
        let doc = |to: &str| {
            format!(
                "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {to}\n    default: {{idleTimeout: 1s}}\n"
            )
        };
        for (to, field, reason) in [
            (
                "{kind: MeshExternalService, name: httpbin}",
                "spec.to[0].targetRef.kind",
                "no MeshExternalService resources",
            ),
            (
                "{kind: MeshMultiZoneService, name: backend}",
                "spec.to[0].targetRef.kind",
                "no MeshMultiZoneService resources",
            ),
            (
                "{kind: MeshHTTPRoute, name: r}",
                "spec.to[0].targetRef.kind",
                "only as the top-level targetRef",
            ),
            (
                "{kind: MeshService, labels: {app: x}}",
                "spec.to[0].targetRef.labels",
                "use name",
            ),
            (
                "{kind: MeshService, name: backend, sectionName: http}",
                "spec.to[0].targetRef.sectionName",
                "port of a MeshService resource",
            ),
        ] {
            let err = validated(&doc(to)).expect_err(to).to_string();
            assert!(err.contains(field) && err.contains(reason), "{to}: {err}");
        }
        // The route as the top-level targetRef, and MeshService by name, are served.
        let ok = "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n";
        validated(ok).expect("route-targeted policy");
        validated(&doc("{kind: MeshService, name: backend}")).expect("MeshService by name");
    }

    fn validated(yaml: &str) -> Result<(), ValidationError> {
        let mut docs = crate::resource::parse_documents(yaml).expect("parses");
        docs.remove(0).validate()
    }

    impl TargetRef {
        fn mesh_kind(kind: TargetRefKind) -> Self {
            TargetRef {
                kind,
                ..TargetRef::mesh()
            }
        }
    }
}
