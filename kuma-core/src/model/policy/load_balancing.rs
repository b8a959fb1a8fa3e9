//! MeshLoadBalancingStrategy: load-balancer algorithm, hashing and locality awareness.

use serde::{Deserialize, Serialize};

use super::{
    TargetRef, TargetRefKind, TargetRefKind::*, TargetRefRules, TargetedConf, kinds, positive_u32,
    validate_target_ref, validate_top,
};
use crate::duration::Duration;
use crate::model::common::{IntOrString, validate_percentage};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshLoadBalancingStrategy`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshLoadBalancingStrategySpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Settings per destination.
    pub to: Option<Vec<TargetedConf<LoadBalancingConf>>>,
}

/// Load-balancing settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancingConf {
    /// Prefer local endpoints and control cross-zone failover.
    pub locality_awareness: Option<LocalityAwareness>,
    /// The algorithm.
    pub load_balancer: Option<LoadBalancer>,
    /// Hash policies for hash-based algorithms.
    pub hash_policies: Option<Vec<HashPolicy>>,
}

/// Locality awareness.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityAwareness {
    /// Turns locality awareness off.
    pub disabled: Option<bool>,
    /// Preferences inside the local zone.
    pub local_zone: Option<LocalZone>,
    /// Failover to other zones.
    pub cross_zone: Option<CrossZone>,
}

/// Preferences inside the local zone.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalZone {
    /// Tags whose equal values are preferred.
    pub affinity_tags: Option<Vec<AffinityTag>>,
}

/// An affinity tag.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityTag {
    /// Tag key.
    pub key: String,
    /// Relative weight.
    pub weight: Option<u32>,
}

/// Cross-zone failover.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossZone {
    /// Failover rules in order.
    pub failover: Option<Vec<Failover>>,
    /// Healthy share below which failover starts.
    pub failover_threshold: Option<FailoverThreshold>,
}

/// One failover rule.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Zones the rule applies to (default: all).
    pub from: Option<FromZone>,
    /// Where traffic fails over to.
    pub to: ToZone,
}

/// Zones a failover rule applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromZone {
    /// Zone names.
    pub zones: Vec<String>,
}

/// Failover destination.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToZone {
    /// `None`, `Only`, `Any` or `AnyExcept`.
    #[serde(rename = "type")]
    pub kind: ToZoneType,
    /// Zones for `Only` and `AnyExcept`.
    pub zones: Option<Vec<String>>,
}

/// Failover destination type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToZoneType {
    /// No failover.
    None,
    /// Only the listed zones.
    Only,
    /// Any zone.
    Any,
    /// Any zone but the listed ones.
    AnyExcept,
}

/// Failover threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverThreshold {
    /// Percentage of healthy endpoints.
    pub percentage: IntOrString,
}

/// The load-balancer algorithm and its settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// The algorithm.
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
    /// Round-robin settings (none).
    pub round_robin: Option<Empty>,
    /// Least-request settings.
    pub least_request: Option<LeastRequest>,
    /// Ring-hash settings.
    pub ring_hash: Option<RingHash>,
    /// Random settings (none).
    pub random: Option<Empty>,
    /// Maglev settings.
    pub maglev: Option<Maglev>,
}

/// A settings object without fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Load-balancer algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancerType {
    /// Round robin.
    RoundRobin,
    /// Least request.
    LeastRequest,
    /// Ring hash.
    RingHash,
    /// Random.
    Random,
    /// Maglev.
    Maglev,
}

/// Least-request settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeastRequest {
    /// Hosts sampled per pick.
    pub choice_count: Option<u32>,
    /// Bias towards hosts with fewer active requests.
    pub active_request_bias: Option<IntOrString>,
}

/// Ring-hash settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// `XXHash` or `MurmurHash2`.
    pub hash_function: Option<HashFunctionType>,
    /// Minimum ring size.
    pub min_ring_size: Option<u32>,
    /// Maximum ring size.
    pub max_ring_size: Option<u32>,
    /// Hash policies.
    pub hash_policies: Option<Vec<HashPolicy>>,
}

/// Hash functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashFunctionType {
    /// xxHash.
    XXHash,
    /// MurmurHash2.
    MurmurHash2,
}

/// Maglev settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size (prime).
    pub table_size: Option<u32>,
    /// Hash policies.
    pub hash_policies: Option<Vec<HashPolicy>>,
}

/// What a request is hashed on.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashPolicy {
    /// The hash input kind.
    #[serde(rename = "type")]
    pub kind: HashPolicyType,
    /// Stop at this policy when it produced a hash.
    pub terminal: Option<bool>,
    /// Header input.
    pub header: Option<NamedInput>,
    /// Cookie input.
    pub cookie: Option<Cookie>,
    /// Connection input.
    pub connection: Option<ConnectionHash>,
    /// Query parameter input.
    pub query_parameter: Option<NamedInput>,
    /// Filter state input.
    pub filter_state: Option<FilterState>,
}

/// Hash inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPolicyType {
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// The connection.
    Connection,
    /// The source IP.
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// A query parameter.
    QueryParameter,
    /// A filter state object.
    FilterState,
}

/// An input named by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedInput {
    /// Header or parameter name.
    pub name: String,
}

/// A cookie hash input.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cookie {
    /// Cookie name.
    pub name: String,
    /// Generate the cookie with this TTL when absent.
    pub ttl: Option<Duration>,
    /// Cookie path.
    pub path: Option<String>,
}

/// A connection hash input.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionHash {
    /// Hash on the source IP.
    #[serde(rename = "sourceIP")]
    pub source_ip: Option<bool>,
}

/// A filter-state hash input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterState {
    /// Filter state key.
    pub key: String,
}

fn validate_hash_policies(p: &Path, policies: &[HashPolicy], err: &mut ValidationError) {
    for (i, h) in policies.iter().enumerate() {
        let hp = p.index(i);
        let (field, missing) = match h.kind {
            HashPolicyType::Header => ("header", h.header.is_none()),
            HashPolicyType::Cookie => ("cookie", h.cookie.is_none()),
            HashPolicyType::QueryParameter => ("queryParameter", h.query_parameter.is_none()),
            HashPolicyType::FilterState => ("filterState", h.filter_state.is_none()),
            HashPolicyType::Connection | HashPolicyType::SourceIp => {
                ("connection", h.connection.is_none())
            }
        };
        if missing {
            err.add(&hp.field(field), "must be defined");
        }
        if let Some(c) = &h.cookie
            && c.path.as_deref().is_some_and(|path| !path.starts_with('/'))
        {
            err.add(
                &hp.field("cookie").field("path"),
                "must be an absolute path",
            );
        }
    }
}

impl LoadBalancingConf {
    fn validate(&self, p: &Path, to: &TargetRef, err: &mut ValidationError) {
        if let Some(h) = &self.hash_policies {
            validate_hash_policies(&p.field("hashPolicies"), h, err);
        }
        if to.kind == MeshHTTPRoute {
            for (field, set) in [
                ("loadBalancer", self.load_balancer.is_some()),
                ("localityAwareness", self.locality_awareness.is_some()),
            ] {
                if set {
                    err.add(
                        &p.field(field),
                        "field is not allowed when targetRef.kind is MeshHTTPRoute, only hashPolicies is supported",
                    );
                }
            }
            return;
        }
        if let Some(lb) = &self.load_balancer {
            let lp = p.field("loadBalancer");
            if let Some(r) = &lb.ring_hash {
                if let Some(h) = &r.hash_policies {
                    validate_hash_policies(&lp.field("ringHash").field("hashPolicies"), h, err);
                    if self.hash_policies.is_some() {
                        err.add(
                            &lp.field("ringHash").field("hashPolicies"),
                            "hashPolicies already specified in the root level",
                        );
                    }
                }
                if let (Some(min), Some(max)) = (r.min_ring_size, r.max_ring_size)
                    && min > max
                {
                    err.add(
                        &lp.field("ringHash").field("minRingSize"),
                        "must not be greater than maxRingSize",
                    );
                }
            }
            if let Some(m) = &lb.maglev
                && let Some(h) = &m.hash_policies
            {
                validate_hash_policies(&lp.field("maglev").field("hashPolicies"), h, err);
                if self.hash_policies.is_some() {
                    err.add(
                        &lp.field("maglev").field("hashPolicies"),
                        "hashPolicies already specified in the root level",
                    );
                }
            }
            if let Some(l) = &lb.least_request
                && let Some(b) = &l.active_request_bias
                && b.as_f64().is_none_or(|v| v < 0.0)
            {
                err.add(
                    &lp.field("leastRequest").field("activeRequestBias"),
                    "must be greater or equal then: 0",
                );
            }
        }
        if let Some(la) = &self.locality_awareness {
            let lap = p.field("localityAwareness");
            if let Some(tags) = la
                .local_zone
                .as_ref()
                .and_then(|l| l.affinity_tags.as_ref())
            {
                let tp = lap.field("localZone").field("affinityTags");
                let mut weighted = 0;
                for (i, t) in tags.iter().enumerate() {
                    if t.key.is_empty() {
                        err.add(&tp.index(i).field("key"), "must not be empty");
                    }
                    if t.weight.is_some() {
                        weighted += 1;
                        positive_u32(&tp.index(i).field("weight"), t.weight, err);
                    }
                }
                if weighted > 0 && weighted != tags.len() {
                    err.add(&tp, "all or none affinity tags should have weight");
                }
            }
            if let Some(cz) = &la.cross_zone {
                let cp = lap.field("crossZone");
                if to.kind == MeshService
                    && (to.section_name.is_some()
                        || to.labels.as_ref().is_some_and(|l| !l.is_empty()))
                {
                    err.add(&cp, "must not be set: MeshService traffic is local");
                }
                for (i, f) in cz.failover.iter().flatten().enumerate() {
                    let fp = cp.field("failover").index(i);
                    if let Some(from) = &f.from {
                        if from.zones.is_empty() {
                            err.add(&fp.field("from").field("zones"), "must not be empty");
                        }
                        for (zi, z) in from.zones.iter().enumerate() {
                            if z.is_empty() {
                                err.add(
                                    &fp.field("from").field("zones").index(zi),
                                    "must not be empty",
                                );
                            }
                        }
                    }
                    let has_zones = f.to.zones.as_ref().is_some_and(|z| !z.is_empty());
                    let name = format!("{:?}", f.to.kind);
                    match f.to.kind {
                        ToZoneType::Any | ToZoneType::None if has_zones => {
                            err.add(
                                &fp.field("to").field("zones"),
                                format!("must be empty when type is {name}"),
                            );
                        }
                        ToZoneType::AnyExcept | ToZoneType::Only if !has_zones => {
                            err.add(
                                &fp.field("to").field("zones"),
                                format!("must not be empty when type is {name}"),
                            );
                        }
                        _ => {}
                    }
                }
                if let Some(t) = &cz.failover_threshold {
                    validate_percentage(
                        &cp.field("failoverThreshold").field("percentage"),
                        &t.percentage,
                        err,
                    );
                }
            }
        }
    }
}

impl MeshLoadBalancingStrategySpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            ..Default::default()
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        for (i, e) in self.to.iter().flatten().enumerate() {
            let p = Path::at("spec").field("to").index(i);
            let kinds: &[TargetRefKind] = match top_kind {
                MeshGateway if e.default.load_balancer.is_some() => &[Mesh],
                MeshGateway => &[Mesh, MeshService, MeshMultiZoneService],
                _ => &[Mesh, MeshService, MeshMultiZoneService, MeshHTTPRoute],
            };
            validate_target_ref(
                &p.field("targetRef"),
                &e.target_ref,
                TargetRefRules {
                    kinds,
                    ..Default::default()
                },
                &mut err,
            );
            e.default
                .validate(&p.field("default"), &e.target_ref, &mut err);
        }
        err
    }
}
