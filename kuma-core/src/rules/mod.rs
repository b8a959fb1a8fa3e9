//! The policy engine: which targetRef policies select a proxy, in which order they apply, and
//! what their entries merge into for each destination (`to`), each inbound (`from` and `rules`)
//! and the proxy as a whole (single-`default` policies).
//!
//! 1. **Selection** by the top-level `targetRef` ([`selects_inbound`], [`selects_proxy`]): `Mesh`
//!    selects every proxy (narrowed by `proxyTypes`), `MeshSubset` the inbounds whose tags contain
//!    the given tags, `MeshService` the inbounds tagged `kuma.io/service: <name>`,
//!    `MeshServiceSubset` both, `Dataplane` a proxy by name or labels (one inbound with
//!    `sectionName`). Outbound (`to`) rules apply when any inbound of the proxy is selected.
//! 2. **Order**: by top-level kind (`Mesh` < `Dataplane` < `MeshSubset` < `MeshService` <
//!    `MeshServiceSubset`), for `Dataplane` targets labels < labels+sectionName < name <
//!    name+sectionName, then origin (`global` < none < `zone`), then policy role, then name,
//!    the lexicographically smaller name last (so it wins).
//! 3. **Merge**: entries are concatenated in that order; for each destination the `default`s of
//!    the entries whose targetRef covers it merge field by field, later wins ([`merge`]).
//!
//! [`MeshPolicies`] prepares a mesh's policies once; [`MeshPolicies::rules`] answers per proxy.

pub mod merge;
mod subsets;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::common::{SERVICE_TAG, Tags};
use crate::model::dataplane::{DataplaneSpec, Inbound};
use crate::model::policy::{MeshHttpRouteSpec, ProxyType, TargetRef, TargetRefKind, matches_hash};
use crate::resource::{Labels, Resource, ResourceMeta, ResourceType};

/// Label naming where a policy was created (`global` or `zone`).
pub const ORIGIN_LABEL: &str = "kuma.io/origin";
/// Label carrying a resource's name as its author wrote it.
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// The tag that stands for one MeshHTTPRoute rule in `to` rules: policies with a top-level
/// targetRef `MeshHTTPRoute` apply to the routes of each rule of that route, which carry the
/// rule's [`crate::model::policy::matches_hash`] as their name.
pub const RULE_MATCHES_HASH_TAG: &str = "__rule-matches-hash__";
/// Label naming a policy's role (`system`, the default, `producer`, `consumer`,
/// `workload-owner`).
pub const POLICY_ROLE_LABEL: &str = "kuma.io/policy-role";

/// A proxy as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct ProxyView<'a> {
    /// The Dataplane's name.
    pub name: &'a str,
    /// The Dataplane's labels.
    pub labels: &'a Labels,
    /// The Dataplane.
    pub spec: &'a DataplaneSpec,
}

impl<'a> ProxyView<'a> {
    /// The view of a Dataplane resource (`None` for other types).
    pub fn of(r: &'a Resource) -> Option<Self> {
        Some(ProxyView {
            name: &r.meta.name,
            labels: &r.meta.labels,
            spec: r.spec_as()?,
        })
    }

    fn is_gateway(&self) -> bool {
        self.spec
            .networking
            .as_ref()
            .is_some_and(|n| n.gateway.is_some())
    }
}

/// A policy that contributed to a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Its type.
    pub rtype: ResourceType,
    /// Its mesh.
    pub mesh: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
}

impl Origin {
    fn of(rtype: ResourceType, meta: &ResourceMeta) -> Self {
        Origin {
            rtype,
            mesh: meta.mesh.clone(),
            name: meta.name.clone(),
            labels: meta.labels.clone(),
        }
    }

    /// Kuma's `{type, mesh, name, labels}` reference.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "type": self.rtype.name(),
            "mesh": self.mesh,
            "name": self.name,
            "labels": self.labels,
        })
    }
}

/// One merged configuration and the subset of traffic it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Tags a destination (for `to`) or source (for `from`) must carry; empty means all.
    pub subset: Tags,
    /// (key, value) pairs a source must not carry (`from` rules of overlapping subsets).
    pub negated: Vec<(String, String)>,
    /// The merged `default`.
    pub conf: Value,
    /// The policies whose entries were merged, in merge order.
    pub origins: Vec<Origin>,
}

impl Rule {
    /// The merged configuration as the policy's typed conf.
    pub fn conf_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.conf)
    }

    /// Whether traffic of `element` (a destination's or source's tags) is in the rule's
    /// subset, as Kuma decides it.
    pub fn covers(&self, element: &Tags) -> bool {
        subsets::contains(&self.subset, &self.negated, element)
    }

    /// Whether the rule is for sources that carry no particular tag: the empty subset, or
    /// one of negations only.
    pub fn is_catch_all(&self) -> bool {
        self.subset.is_empty()
    }
}

/// The rules of one policy type for one inbound.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRules {
    /// The inbound's port.
    pub port: u32,
    /// The inbound's name, when it has one.
    pub name: Option<String>,
    /// The inbound's tags.
    pub tags: Tags,
    /// Its rules, most specific first.
    pub rules: Vec<Rule>,
}

/// Everything one policy type configures on one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRules {
    /// The policy type.
    pub rtype: ResourceType,
    /// Every policy of the type that selects the proxy (or one of its inbounds), in merge order.
    pub matched: Vec<Origin>,
    /// Rules for outbound traffic, most specific first.
    pub to: Vec<Rule>,
    /// Rules for inbound traffic, per inbound (in the Dataplane's order).
    pub from: Vec<InboundRules>,
    /// The merged top-level `default` of single-item policies (MeshTrace, MeshMetric, ...).
    pub single: Option<Rule>,
    /// Which `to` rules may cover traffic to each service.
    to_index: ToIndex,
}

/// The positions in a rule list of the rules that may cover traffic to a service: those whose
/// subset names that service, and those that name none (which may cover any). A lookup then
/// checks a few rules instead of every rule of the proxy.
#[derive(Debug, Clone, Default, PartialEq)]
struct ToIndex {
    by_service: HashMap<String, Vec<usize>>,
    any_service: Vec<usize>,
}

impl ToIndex {
    fn new(rules: &[Rule]) -> Self {
        let mut index = ToIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            match rule.subset.get(SERVICE_TAG) {
                Some(service) => index.by_service.entry(service.clone()).or_default().push(i),
                None => index.any_service.push(i),
            }
        }
        index
    }

    /// Positions that may cover `service`, in list order (most specific first).
    fn candidates(&self, service: &str) -> impl Iterator<Item = usize> + '_ {
        let named = self
            .by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (mut a, mut b) = (named.iter().peekable(), self.any_service.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next().copied(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().copied(),
            (Some(_), None) => a.next().copied(),
            (None, None) => None,
        })
    }
}

impl ProxyRules {
    /// Rules of `rtype` as given (the policy engine builds them with [`MeshPolicies::rules`]).
    pub fn new(
        rtype: ResourceType,
        matched: Vec<Origin>,
        to: Vec<Rule>,
        from: Vec<InboundRules>,
        single: Option<Rule>,
    ) -> Self {
        let to_index = ToIndex::new(&to);
        ProxyRules {
            rtype,
            matched,
            to,
            from,
            single,
            to_index,
        }
    }

    /// The first `to` rule covering `element`, a destination of `service`.
    fn first_to(&self, service: &str, element: &Tags) -> Option<&Rule> {
        self.to_index
            .candidates(service)
            .map(|i| &self.to[i])
            .find(|r| r.covers(element))
    }

    /// The rule for traffic to `service`.
    pub fn to_rule(&self, service: &str) -> Option<&Rule> {
        let element = Tags::from([(SERVICE_TAG.to_string(), service.to_string())]);
        self.first_to(service, &element)
    }

    /// The rule for traffic to `service` on the route named `route` (a rule's
    /// [`matches_hash`]): route-targeted policies' rules for that route first, the service's
    /// rule otherwise.
    pub fn to_rule_for_route(&self, service: &str, route: &str) -> Option<&Rule> {
        let element = Tags::from([
            (SERVICE_TAG.to_string(), service.to_string()),
            (RULE_MATCHES_HASH_TAG.to_string(), route.to_string()),
        ]);
        self.first_to(service, &element)
            .or_else(|| self.to_rule(service))
    }

    /// The typed conf for traffic to `service` (`None` when no policy applies; an error when the
    /// merged conf does not fit the type, which validation should have prevented).
    pub fn to_conf<T: DeserializeOwned>(
        &self,
        service: &str,
    ) -> Option<Result<T, serde_json::Error>> {
        self.to_rule(service).map(Rule::conf_as)
    }

    /// The rule for traffic into the inbound on `port` from a source that carries no tag of
    /// any `from` entry: the catch-all rule.
    pub fn from_rule(&self, port: u32) -> Option<&Rule> {
        let inbound = self.from.iter().find(|i| i.port == port)?;
        inbound.rules.iter().find(|r| r.is_catch_all())
    }

    /// The rule for traffic into the inbound on `port` from a source carrying `tags`.
    pub fn from_rule_for(&self, port: u32, tags: &Tags) -> Option<&Rule> {
        let inbound = self.from.iter().find(|i| i.port == port)?;
        inbound.rules.iter().find(|r| r.covers(tags))
    }

    /// True when nothing of this type applies to the proxy.
    pub fn is_empty(&self) -> bool {
        self.to.is_empty() && self.from.iter().all(|i| i.rules.is_empty()) && self.single.is_none()
    }
}

/// One `to`/`from` entry: its target and its `default`.
#[derive(Debug, Clone)]
struct Entry {
    target: TargetRef,
    conf: Value,
}

/// A policy prepared for matching.
#[derive(Debug, Clone)]
struct Prepared {
    origin: Origin,
    /// The policy's own top-level targetRef (its place in the merge order).
    top: TargetRef,
    /// What selects proxies: `top`, or for a route-targeted policy the route's top-level
    /// targetRef (`top` itself, selecting nothing, while the route does not exist).
    select: TargetRef,
    to: Vec<Entry>,
    from: Vec<Entry>,
    single: Option<Value>,
}

type SortKey = (u8, u8, u8, u8, Reverse<String>);

impl Prepared {
    fn new(r: &Resource, routes: &[&Resource]) -> Self {
        let rtype = r.rtype();
        let spec = r.spec.to_value();
        let top = top_of(&spec);
        let route = (top.kind == TargetRefKind::MeshHTTPRoute)
            .then(|| resolve_route(&r.meta, &top, routes))
            .flatten();
        let entries = |section: &str| -> Vec<&Value> {
            spec.get(section)
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        let mut to = Vec::new();
        for e in entries("to") {
            let Some(target) = e
                .get("targetRef")
                .and_then(|t| TargetRef::deserialize(t).ok())
            else {
                continue;
            };
            let conf = match rtype {
                ResourceType::MeshHTTPRoute => {
                    serde_json::json!({ "rules": e.get("rules").cloned().unwrap_or(Value::Array(vec![])) })
                }
                // Kuma applies the first rule of a TCP route.
                ResourceType::MeshTCPRoute => e
                    .get("rules")
                    .and_then(|r| r.get(0))
                    .and_then(|r| r.get("default"))
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default())),
                _ => e.get("default").cloned().unwrap_or(Value::Null),
            };
            to.push(Entry { target, conf });
        }
        if top.kind == TargetRefKind::MeshHTTPRoute {
            // The entries apply to each rule of the route, as Kuma's artificial items do; a
            // missing route leaves none.
            to = route
                .map(|route| route_entries(route, &to))
                .unwrap_or_default();
        }
        let mut from = Vec::new();
        for e in entries("from") {
            if let Some(target) = e
                .get("targetRef")
                .and_then(|t| TargetRef::deserialize(t).ok())
            {
                let conf = e.get("default").cloned().unwrap_or(Value::Null);
                from.push(Entry { target, conf });
            }
        }
        // `rules` entries apply to every source, after the policy's `from` entries.
        if rtype != ResourceType::MeshTrafficPermission {
            for e in entries("rules") {
                let conf = e.get("default").cloned().unwrap_or(Value::Null);
                from.push(Entry {
                    target: TargetRef::mesh(),
                    conf,
                });
            }
        }
        let single = (to.is_empty() && from.is_empty())
            .then(|| spec.get("default").cloned())
            .flatten();
        let select = match route {
            Some(route) => top_of(&route.spec.to_value()),
            None => top.clone(),
        };
        Prepared {
            origin: Origin::of(rtype, &r.meta),
            top,
            select,
            to,
            from,
            single,
        }
    }

    /// Kuma's order (its `SortByTargetRef`): kind, then for `Dataplane` targets labels <
    /// labels+sectionName < name < name+sectionName, then origin (global < none < zone), then
    /// policy role (system < producer < consumer < workload-owner), then name (the smaller
    /// name last, so it wins).
    fn sort_key(&self) -> SortKey {
        let t = &self.top;
        let dataplane_rank = if t.kind == TargetRefKind::Dataplane {
            2 * u8::from(t.name.is_some()) + u8::from(t.section_name.is_some())
        } else {
            0
        };
        let label = |key: &str| self.origin.labels.get(key).map(String::as_str);
        let origin_rank = match label(ORIGIN_LABEL) {
            Some("global") => 0,
            Some("zone") => 2,
            _ => 1,
        };
        let role_rank = match label(POLICY_ROLE_LABEL) {
            Some("producer") => 1,
            Some("consumer") => 2,
            Some("workload-owner") => 3,
            _ => 0, // system, the default
        };
        let name = self
            .origin
            .labels
            .get(DISPLAY_NAME_LABEL)
            .unwrap_or(&self.origin.name)
            .clone();
        (
            t.kind.specificity(),
            dataplane_rank,
            origin_rank,
            role_rank,
            Reverse(name),
        )
    }
}

/// The route a `MeshHTTPRoute` top-level targetRef names: the route of the policy's mesh whose
/// name as written (its display name) is the targetRef's name.
fn resolve_route<'a>(
    policy: &ResourceMeta,
    top: &TargetRef,
    routes: &[&'a Resource],
) -> Option<&'a Resource> {
    let name = top.name.as_deref()?;
    routes.iter().copied().find(|route| {
        route.meta.mesh == policy.mesh
            && route
                .meta
                .labels
                .get(DISPLAY_NAME_LABEL)
                .unwrap_or(&route.meta.name)
                == name
    })
}

/// The `to` entries of a route-targeted policy: each of the policy's `default`s for each rule
/// of the route, aimed at the rule's routes by [`RULE_MATCHES_HASH_TAG`] (and at the route's
/// destination service unless the route is for the whole mesh).
fn route_entries(route: &Resource, policy_to: &[Entry]) -> Vec<Entry> {
    let Some(spec) = route.spec_as::<MeshHttpRouteSpec>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for to in spec.to.iter().flatten() {
        for rule in &to.rules {
            let hash = Tags::from([(
                RULE_MATCHES_HASH_TAG.to_string(),
                matches_hash(&rule.matches),
            )]);
            let target = match to.target_ref.kind {
                TargetRefKind::Mesh | TargetRefKind::MeshSubset => TargetRef {
                    kind: TargetRefKind::MeshSubset,
                    tags: Some(hash),
                    ..TargetRef::mesh()
                },
                _ => TargetRef {
                    kind: TargetRefKind::MeshServiceSubset,
                    name: to.target_ref.name.clone(),
                    tags: Some(hash),
                    ..TargetRef::mesh()
                },
            };
            out.extend(policy_to.iter().map(|e| Entry {
                target: target.clone(),
                conf: e.conf.clone(),
            }));
        }
    }
    out
}

/// Whether the top-level `top` selects the inbound `inbound` of `proxy`.
pub fn selects_inbound(top: &TargetRef, proxy: &ProxyView<'_>, inbound: &Inbound) -> bool {
    let tags_match = |want: &Option<Tags>| {
        want.iter()
            .flatten()
            .all(|(k, v)| inbound.tags.get(k) == Some(v))
    };
    let service_is = |name: &Option<String>| {
        name.as_deref()
            .is_some_and(|n| inbound.service() == Some(n))
    };
    match top.kind {
        TargetRefKind::Mesh => proxy_type_matches(top, proxy),
        TargetRefKind::MeshSubset => proxy_type_matches(top, proxy) && tags_match(&top.tags),
        TargetRefKind::MeshService => service_is(&top.name),
        TargetRefKind::MeshServiceSubset => service_is(&top.name) && tags_match(&top.tags),
        TargetRefKind::Dataplane => {
            dataplane_matches(top, proxy)
                && top.section_name.as_deref().is_none_or(|section| {
                    inbound.name.as_deref() == Some(section)
                        || section.parse::<u32>().ok() == Some(inbound.port)
                })
        }
        // Gateways, routes and real service resources select no sidecar inbound here.
        _ => false,
    }
}

/// Whether the top-level `top` selects `proxy` at all: the whole proxy (`Mesh`, `Dataplane`
/// without a section) or one of its inbounds. Such a policy's `to` entries apply to the proxy.
pub fn selects_proxy(top: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    match top.kind {
        TargetRefKind::Mesh => proxy_type_matches(top, proxy),
        TargetRefKind::Dataplane if top.section_name.is_none() => dataplane_matches(top, proxy),
        TargetRefKind::MeshService
        | TargetRefKind::MeshSubset
        | TargetRefKind::MeshServiceSubset
            if proxy.spec.is_delegated_gateway() =>
        {
            // As Kuma: a delegated gateway has no inbounds; it is selected by its gateway tags.
            delegated_gateway_matches(top, proxy)
        }
        _ => proxy
            .spec
            .inbounds()
            .iter()
            .any(|i| selects_inbound(top, proxy, i)),
    }
}

/// Whether the `MeshService`, `MeshSubset` or `MeshServiceSubset` target `top` selects the
/// delegated gateway `proxy` by its gateway tags.
fn delegated_gateway_matches(top: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    let Some(tags) = proxy
        .spec
        .networking
        .as_ref()
        .and_then(|n| n.gateway.as_ref())
        .map(|g| &g.tags)
    else {
        return false;
    };
    let tags_match = top
        .tags
        .iter()
        .flatten()
        .all(|(k, v)| tags.get(k) == Some(v));
    let service_matches = top
        .name
        .as_deref()
        .is_some_and(|n| tags.get(SERVICE_TAG).map(String::as_str) == Some(n));
    match top.kind {
        TargetRefKind::MeshSubset => proxy_type_matches(top, proxy) && tags_match,
        TargetRefKind::MeshService => service_matches,
        TargetRefKind::MeshServiceSubset => service_matches && tags_match,
        _ => false,
    }
}

fn proxy_type_matches(top: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    let wanted = if proxy.is_gateway() {
        ProxyType::Gateway
    } else {
        ProxyType::Sidecar
    };
    top.proxy_types
        .as_ref()
        .is_none_or(|types| types.is_empty() || types.contains(&wanted))
}

fn dataplane_matches(top: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    match (&top.name, &top.labels) {
        (Some(name), _) => name == proxy.name,
        (None, Some(labels)) => labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v)),
        (None, None) => true,
    }
}

/// The tags a `to`/`from` targetRef stands for (`None`: a kind these rules do not cover).
fn subset_of(target: &TargetRef) -> Option<Tags> {
    let service = |name: &Option<String>| {
        name.as_ref()
            .map(|n| (SERVICE_TAG.to_string(), n.clone()))
            .into_iter()
    };
    match target.kind {
        TargetRefKind::Mesh => Some(Tags::new()),
        TargetRefKind::MeshSubset => Some(target.tags.clone().unwrap_or_default()),
        TargetRefKind::MeshService => Some(service(&target.name).collect()),
        TargetRefKind::MeshServiceSubset => {
            let mut tags: Tags = service(&target.name).collect();
            tags.extend(target.tags.clone().unwrap_or_default());
            Some(tags)
        }
        _ => None,
    }
}

/// Builds the `to` rules of `entries` (in merge order) as Kuma does. When the entries use at
/// most one tag key (`kuma.io/service`, the usual case): one rule per distinct subset, merging
/// the entries whose subset it contains, most specific first. Otherwise (subsets of several
/// keys, or route-targeted entries with [`RULE_MATCHES_HASH_TAG`]) the combinations of
/// [`build_from_rules`].
fn build_rules(rtype: ResourceType, entries: &[(&Entry, &Origin)]) -> Vec<Rule> {
    let with_subsets = entry_subsets(entries);
    let mut keys: Vec<&String> = with_subsets.iter().flat_map(|(s, _, _)| s.keys()).collect();
    keys.sort();
    keys.dedup();
    if keys.len() > 1 {
        return combination_rules(rtype, &with_subsets);
    }
    let mut subsets: Vec<&Tags> = Vec::new();
    for (s, _, _) in &with_subsets {
        if !subsets.contains(&s) {
            subsets.push(s);
        }
    }
    let mut rules: Vec<Rule> = subsets
        .into_iter()
        .map(|subset| {
            let relevant: Vec<&(Tags, &Entry, &Origin)> = with_subsets
                .iter()
                .filter(|(s, _, _)| s.iter().all(|(k, v)| subset.get(k) == Some(v)))
                .collect();
            merged_rule(
                rtype,
                subsets::Subset {
                    positive: subset.clone(),
                    negated: Vec::new(),
                },
                relevant.iter().map(|(_, e, o)| (*e, *o)),
            )
        })
        .collect();
    rules.sort_by_key(|r| Reverse(r.subset.len()));
    rules
}

/// Builds the `from` rules of `entries` (in merge order) as Kuma does: a rule for every
/// combination of the overlapping entries' tags (see [`subsets`]), so that a source carrying
/// the tags of several entries gets one conf merging them all.
fn build_from_rules(rtype: ResourceType, entries: &[(&Entry, &Origin)]) -> Vec<Rule> {
    combination_rules(rtype, &entry_subsets(entries))
}

/// The entries whose targets stand for tags, with those tags.
fn entry_subsets<'a>(entries: &[(&'a Entry, &'a Origin)]) -> Vec<(Tags, &'a Entry, &'a Origin)> {
    entries
        .iter()
        .filter_map(|(e, o)| subset_of(&e.target).map(|s| (s, *e, *o)))
        .collect()
}

fn combination_rules(rtype: ResourceType, with_subsets: &[(Tags, &Entry, &Origin)]) -> Vec<Rule> {
    let subset_list: Vec<&Tags> = with_subsets.iter().map(|(s, _, _)| s).collect();
    subsets::from_rules(&subset_list)
        .into_iter()
        .map(|(subset, relevant)| {
            merged_rule(
                rtype,
                subset,
                relevant
                    .iter()
                    .map(|&i| (with_subsets[i].1, with_subsets[i].2)),
            )
        })
        .collect()
}

/// The rule of `subset` merging `relevant` entries (in merge order).
fn merged_rule<'a>(
    rtype: ResourceType,
    subset: subsets::Subset,
    relevant: impl Iterator<Item = (&'a Entry, &'a Origin)> + Clone,
) -> Rule {
    let confs = relevant.clone().map(|(e, _)| &e.conf);
    let conf = if rtype == ResourceType::MeshHTTPRoute {
        merge::merge_route_rules(confs)
    } else {
        merge::merge_confs(confs)
    };
    let mut origins: Vec<Origin> = Vec::new();
    for (_, o) in relevant {
        if !origins.contains(o) {
            origins.push(o.clone());
        }
    }
    Rule {
        subset: subset.positive,
        negated: subset.negated,
        conf,
        origins,
    }
}

/// The policies of one mesh, prepared once and sorted in merge order per type.
#[derive(Debug, Clone, Default)]
pub struct MeshPolicies {
    by_type: BTreeMap<ResourceType, Vec<Prepared>>,
}

impl MeshPolicies {
    /// Prepares `policies` (resources of other types are ignored).
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Resource>) -> Self {
        let policies: Vec<&Resource> = policies
            .into_iter()
            .filter(|r| r.rtype().is_policy())
            .collect();
        let mut routes: Vec<&Resource> = policies
            .iter()
            .copied()
            .filter(|r| r.rtype() == ResourceType::MeshHTTPRoute)
            .collect();
        routes.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        let mut by_type: BTreeMap<ResourceType, Vec<Prepared>> = BTreeMap::new();
        for r in policies {
            by_type
                .entry(r.rtype())
                .or_default()
                .push(Prepared::new(r, &routes));
        }
        for list in by_type.values_mut() {
            list.sort_by_cached_key(Prepared::sort_key);
        }
        MeshPolicies { by_type }
    }

    /// True when the mesh has no policy of `rtype`.
    pub fn has(&self, rtype: ResourceType) -> bool {
        self.by_type.get(&rtype).is_some_and(|l| !l.is_empty())
    }

    fn list(&self, rtype: ResourceType) -> &[Prepared] {
        self.by_type
            .get(&rtype)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The positions, in merge order, of the policies of `rtype` that select `proxy`. What a
    /// proxy's `to` rules and single-item conf are depends on these alone
    /// ([`MeshPolicies::to_rules`]), so proxies with equal positions share them.
    pub fn selecting(&self, rtype: ResourceType, proxy: &ProxyView<'_>) -> Vec<usize> {
        self.list(rtype)
            .iter()
            .enumerate()
            .filter(|(_, p)| selects_proxy(&p.select, proxy))
            .map(|(i, _)| i)
            .collect()
    }

    /// The rules of `rtype` made of the policies at `positions` ([`MeshPolicies::selecting`]):
    /// `matched`, `to` and `single` as [`MeshPolicies::rules`] gives them, no `from` rules.
    pub fn to_rules(&self, rtype: ResourceType, positions: &[usize]) -> ProxyRules {
        let list = self.list(rtype);
        let selected = positions.iter().filter_map(|&i| list.get(i));
        self.assemble(rtype, selected, Vec::new(), true)
    }

    /// The rules of `rtype` for `proxy` without `to` rules: what configures the proxy's
    /// inbounds and the proxy as a whole (`matched`, `from` and `single`). Cheaper than
    /// [`MeshPolicies::rules`] when outbounds are configured elsewhere
    /// ([`MeshPolicies::to_rules`]).
    pub fn inbound_rules(&self, rtype: ResourceType, proxy: &ProxyView<'_>) -> ProxyRules {
        self.rules_with(rtype, proxy, false)
    }

    fn assemble<'a>(
        &self,
        rtype: ResourceType,
        selected: impl Iterator<Item = &'a Prepared>,
        from: Vec<InboundRules>,
        with_to: bool,
    ) -> ProxyRules {
        let mut matched = Vec::new();
        let mut to = Vec::new();
        let mut single = Vec::new();
        for p in selected {
            matched.push(p.origin.clone());
            if with_to {
                to.extend(p.to.iter().map(|e| (e, &p.origin)));
            }
            if let Some(conf) = &p.single {
                single.push((conf, &p.origin));
            }
        }
        let single = (!single.is_empty()).then(|| Rule {
            subset: Tags::new(),
            negated: Vec::new(),
            conf: merge::merge_confs(single.iter().map(|(c, _)| *c)),
            origins: single.iter().map(|(_, o)| (*o).clone()).collect(),
        });
        ProxyRules::new(rtype, matched, build_rules(rtype, &to), from, single)
    }

    /// The rules of `rtype` for `proxy`.
    pub fn rules(&self, rtype: ResourceType, proxy: &ProxyView<'_>) -> ProxyRules {
        self.rules_with(rtype, proxy, true)
    }

    fn rules_with(&self, rtype: ResourceType, proxy: &ProxyView<'_>, with_to: bool) -> ProxyRules {
        let list = self.list(rtype);
        let inbounds = proxy.spec.inbounds();
        let from = inbounds
            .iter()
            .map(|inbound| {
                let entries: Vec<(&Entry, &Origin)> = list
                    .iter()
                    .filter(|p| selects_inbound(&p.select, proxy, inbound))
                    .flat_map(|p| p.from.iter().map(move |e| (e, &p.origin)))
                    .collect();
                InboundRules {
                    port: inbound.port,
                    name: inbound.name.clone(),
                    tags: inbound.tags.clone(),
                    rules: build_from_rules(rtype, &entries),
                }
            })
            .collect();
        let selected = list.iter().filter(|p| selects_proxy(&p.select, proxy));
        self.assemble(rtype, selected, from, with_to)
    }

    /// The `from` entries of `rtype` for the inbound on `port` of `proxy`, unmerged: one rule
    /// per entry, in merge order, so for any source the last entry covering it decides. Use it
    /// where the decision must be expressed per source (RBAC principals) rather than per
    /// subset.
    pub fn from_entries(&self, rtype: ResourceType, proxy: &ProxyView<'_>, port: u32) -> Vec<Rule> {
        let Some(inbound) = proxy.spec.inbounds().iter().find(|i| i.port == port) else {
            return Vec::new();
        };
        self.by_type
            .get(&rtype)
            .into_iter()
            .flatten()
            .filter(|p| selects_inbound(&p.select, proxy, inbound))
            .flat_map(|p| {
                p.from.iter().filter_map(|e| {
                    Some(Rule {
                        subset: subset_of(&e.target)?,
                        negated: Vec::new(),
                        conf: e.conf.clone(),
                        origins: vec![p.origin.clone()],
                    })
                })
            })
            .collect()
    }

    /// The names of the policies of `rtype` that select `proxy`, in merge order.
    pub fn matching(&self, rtype: ResourceType, proxy: &ProxyView<'_>) -> Vec<&str> {
        self.by_type
            .get(&rtype)
            .into_iter()
            .flatten()
            .filter(|p| selects_proxy(&p.select, proxy))
            .map(|p| p.origin.name.as_str())
            .collect()
    }

    /// The policy types with at least one policy, in registry order.
    pub fn types(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.by_type.keys().copied()
    }
}

/// The top-level targetRef of a policy spec (absent: `Mesh`).
fn top_of(spec: &Value) -> TargetRef {
    spec.get("targetRef")
        .and_then(|t| TargetRef::deserialize(t).ok())
        .unwrap_or_else(TargetRef::mesh)
}

/// The targetRef whose proxies `policy` (a targetRef policy) selects, with [`selects_proxy`]:
/// its top-level one (absent: `Mesh`), or for a top-level targetRef `MeshHTTPRoute` the
/// top-level targetRef of that route among `routes` (`None` while there is no such route).
pub fn selector(policy: &Resource, routes: &[&Resource]) -> Option<TargetRef> {
    let top = top_of(&policy.spec.to_value());
    if top.kind != TargetRefKind::MeshHTTPRoute {
        return Some(top);
    }
    resolve_route(&policy.meta, &top, routes).map(|route| top_of(&route.spec.to_value()))
}

/// Whether `policy` (a targetRef policy) selects `proxy`: Kuma's "dataplanes of a policy".
/// `routes` are the mesh's MeshHTTPRoutes (only route-targeted policies need them).
pub fn policy_selects(policy: &Resource, routes: &[&Resource], proxy: &ProxyView<'_>) -> bool {
    selector(policy, routes).is_some_and(|top| selects_proxy(&top, proxy))
}
