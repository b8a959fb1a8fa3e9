//! MeshLoadBalancingStrategy: the balancing algorithm of destination clusters, hash policies of
//! outbound routes, and locality awareness (endpoint priorities).
//!
//! Locality awareness, as Kuma does it (for every service when the Mesh says
//! `routing.localityAwareLoadBalancing: true`, else where a policy applies): unless disabled, endpoints in the proxy's zone
//! (`kuma.io/zone`; no zone tag on either side counts as the same zone) have priority 0 and
//! those of other zones priority 1, so traffic leaves the zone only when no local endpoint is
//! healthy. With `localZone.affinityTags`, the local endpoints are split into localities: an
//! endpoint sharing the proxy's value of an affinity tag (the first such tag in the list) joins
//! that tag's locality, weighted by the tag's `weight` (default 9·10^(n-i-1) for the i-th of n
//! tags: 90, 9 for two), and the rest form a locality of weight 1. Envoy's locality-weighted
//! balancing then splits traffic by those weights.
//!
//! When `localZone` or `crossZone` is given, endpoints of other zones are kept only where a
//! `crossZone.failover` rule applying to the proxy's zone (`from`, default every zone) sends
//! traffic (`to`: `Any`, `Only` the listed zones, `AnyExcept` them; `None` sends nowhere): the
//! first rule that takes an endpoint's zone gives it the rule's place in the list (1 for the
//! first rule, ...) as its priority, and an endpoint no rule takes is dropped; so without
//! rules traffic never leaves the zone. The overprovisioning factor is then 100 /
//! `failoverThreshold.percentage` × 100 (200 by default: failover starts when fewer than half
//! the local endpoints are healthy). Priorities are renumbered from 0 without gaps.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    ring_hash_lb_config::HashFunction,
};
use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, RuntimeDouble};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as EnvoyHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use kuma_core::model::common::{IntOrString, Tags, ZONE_TAG};
use kuma_core::model::policy::{
    HashFunctionType, HashPolicy, HashPolicyType, LoadBalancerType, LoadBalancingConf, ToZoneType,
};
use kuma_core::resource::ResourceType;

use super::{routes_mut, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::context::{Endpoint, weighted_locality};
use crate::generate::outbound::OutboundContext;
use crate::generate::profile::in_subset;
use crate::generate::resources::{ClusterDraft, Endpoints, ResourceSet};
use xds_server::envoy::{duration, load_assignment};

/// Applies MeshLoadBalancingStrategy.
#[derive(Debug, Clone, Copy)]
pub struct MeshLoadBalancingStrategy;

impl ResourceGenerator for MeshLoadBalancingStrategy {
    fn name(&self) -> &str {
        "MeshLoadBalancingStrategy"
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshLoadBalancingStrategy);
        // The Mesh's own switch: other zones at a lower priority wherever no policy says.
        let mesh_aware = ctx
            .mesh
            .spec
            .routing
            .as_ref()
            .and_then(|r| r.locality_aware_load_balancing)
            == Some(true);
        if rules.is_empty() && !mesh_aware {
            return Ok(());
        }
        let local_tags = ctx
            .view
            .source
            .as_ref()
            .map(|s| s.local_tags.clone())
            .unwrap_or_default();
        for (name, draft) in &mut rs.clusters {
            let Some(service) = draft.service().map(str::to_string) else {
                continue;
            };
            let grouping = match to_conf::<LoadBalancingConf>(&rules, &service)? {
                Some(conf) => {
                    algorithm(draft, &conf);
                    locality(&conf, &local_tags)
                }
                None if mesh_aware => {
                    let zone = ctx
                        .view
                        .zone
                        .iter()
                        .map(|z| (ZONE_TAG.to_string(), z.clone()));
                    locality(&LoadBalancingConf::default(), &zone.collect())
                }
                None => None,
            };
            // An external service's endpoints are its addresses or this zone's egresses:
            // no zones to prioritise.
            let external = ctx.mesh.external_service(&service).is_some();
            if let Some(locality) = grouping.filter(|_| !external) {
                let endpoints: Vec<Endpoint> = ctx
                    .mesh
                    .endpoints(&service)
                    .iter()
                    .filter(|e| in_subset(e, &draft.subset))
                    .cloned()
                    .collect();
                rs.endpoints.insert(
                    name.clone(),
                    Endpoints::Owned(prioritised(name, &endpoints, &locality)),
                );
                if !locality.affinity.is_empty() {
                    weigh_localities(draft);
                }
            }
        }
        for o in &rs.outbounds {
            let Some(conf) = to_conf::<LoadBalancingConf>(&rules, &o.service)? else {
                continue;
            };
            let policies = hash_policies(&conf);
            if policies.is_empty() {
                continue;
            }
            let Some(http) = rs.listeners.get_mut(&o.listener).and_then(|l| l.http_mut()) else {
                continue;
            };
            for route in routes_mut(&mut http.route) {
                if let Some(Action::Route(action)) = route.action.as_mut() {
                    action.hash_policy = policies.clone();
                }
            }
        }
        Ok(())
    }
}

fn algorithm(draft: &mut ClusterDraft, conf: &LoadBalancingConf) {
    let Some(lb) = &conf.load_balancer else {
        return;
    };
    let cluster = &mut draft.cluster;
    let (policy, config) = match lb.kind {
        LoadBalancerType::RoundRobin => (LbPolicy::RoundRobin, None),
        LoadBalancerType::Random => (LbPolicy::Random, None),
        LoadBalancerType::LeastRequest => {
            let l = lb.least_request.clone().unwrap_or_default();
            (
                LbPolicy::LeastRequest,
                Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    choice_count: l.choice_count.map(|value| UInt32Value { value }),
                    active_request_bias: l
                        .active_request_bias
                        .as_ref()
                        .and_then(IntOrString::as_f64)
                        .map(|default_value| RuntimeDouble {
                            default_value,
                            runtime_key: String::new(),
                        }),
                    ..Default::default()
                })),
            )
        }
        LoadBalancerType::RingHash => {
            let r = lb.ring_hash.clone().unwrap_or_default();
            (
                LbPolicy::RingHash,
                Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: r.min_ring_size.map(|v| UInt64Value {
                        value: u64::from(v),
                    }),
                    maximum_ring_size: r.max_ring_size.map(|v| UInt64Value {
                        value: u64::from(v),
                    }),
                    hash_function: match r.hash_function {
                        Some(HashFunctionType::MurmurHash2) => HashFunction::MurmurHash2,
                        _ => HashFunction::XxHash,
                    } as i32,
                })),
            )
        }
        LoadBalancerType::Maglev => {
            let m = lb.maglev.clone().unwrap_or_default();
            (
                LbPolicy::Maglev,
                Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: m.table_size.map(|v| UInt64Value {
                        value: u64::from(v),
                    }),
                })),
            )
        }
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
}

/// Hash policies: the top-level list, else the ring hash's or maglev's own.
fn hash_policies(conf: &LoadBalancingConf) -> Vec<EnvoyHashPolicy> {
    let lb = conf.load_balancer.as_ref();
    let list = conf
        .hash_policies
        .as_ref()
        .or_else(|| {
            lb.and_then(|l| l.ring_hash.as_ref())
                .and_then(|r| r.hash_policies.as_ref())
        })
        .or_else(|| {
            lb.and_then(|l| l.maglev.as_ref())
                .and_then(|m| m.hash_policies.as_ref())
        });
    list.into_iter().flatten().filter_map(hash_policy).collect()
}

fn hash_policy(h: &HashPolicy) -> Option<EnvoyHashPolicy> {
    let specifier = match h.kind {
        HashPolicyType::Header => PolicySpecifier::Header(Header {
            header_name: h.header.as_ref()?.name.clone(),
            ..Default::default()
        }),
        HashPolicyType::Cookie => {
            let c = h.cookie.as_ref()?;
            PolicySpecifier::Cookie(Cookie {
                name: c.name.clone(),
                ttl: c.ttl.as_ref().map(|t| duration(t.get())),
                path: c.path.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        HashPolicyType::Connection | HashPolicyType::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties {
                source_ip: h
                    .connection
                    .as_ref()
                    .and_then(|c| c.source_ip)
                    .unwrap_or(h.kind == HashPolicyType::SourceIp),
            })
        }
        HashPolicyType::QueryParameter => PolicySpecifier::QueryParameter(QueryParameter {
            name: h.query_parameter.as_ref()?.name.clone(),
        }),
        HashPolicyType::FilterState => PolicySpecifier::FilterState(FilterState {
            key: h.filter_state.as_ref()?.key.clone(),
        }),
    };
    Some(EnvoyHashPolicy {
        terminal: h.terminal.unwrap_or(false),
        policy_specifier: Some(specifier),
    })
}

/// How endpoints are grouped: the proxy's zone and its affinity groups (key, the proxy's value,
/// weight), in the policy's order; and, when the policy says where traffic may fail over to,
/// the failover rules that apply to the proxy's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Locality {
    zone: Option<String>,
    affinity: Vec<(String, String, u32)>,
    /// `Some` when `localZone` or `crossZone` is given: other zones' endpoints go where these
    /// rules send them (none: nowhere).
    failover: Option<Vec<FailoverRule>>,
    /// The overprovisioning factor, with `failover`.
    overprovisioning: u32,
}

/// One `crossZone.failover` rule applying to the proxy's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FailoverRule {
    kind: ToZoneType,
    zones: Vec<String>,
    /// The rule's place in the policy's list, from 1.
    priority: u32,
}

impl FailoverRule {
    /// Whether the rule sends traffic to `zone`.
    fn takes(&self, zone: &str) -> bool {
        let listed = self.zones.iter().any(|z| z == zone);
        match self.kind {
            ToZoneType::Any => true,
            ToZoneType::Only => listed,
            ToZoneType::AnyExcept => !listed,
            ToZoneType::None => false,
        }
    }
}

/// Kuma's overprovisioning factor for `conf`: 100 / `failoverThreshold.percentage` × 100,
/// 200 when none (or zero) is given.
fn overprovisioning(conf: &LoadBalancingConf) -> u32 {
    let percentage = conf
        .locality_awareness
        .as_ref()
        .and_then(|a| a.cross_zone.as_ref())
        .and_then(|c| c.failover_threshold.as_ref())
        .and_then(|t| t.percentage.as_f64())
        .filter(|p| *p > 0.0);
    match percentage {
        // As Kuma: the quotient truncated, then scaled.
        Some(p) => ((100.0 / p).trunc() as u32).saturating_mul(100),
        None => 200,
    }
}

/// The grouping `conf` asks for; `None` when locality awareness is off or changes nothing (no
/// zone and no affinity group).
fn locality(conf: &LoadBalancingConf, local: &Tags) -> Option<Locality> {
    let awareness = conf.locality_awareness.as_ref();
    if awareness.and_then(|a| a.disabled) == Some(true) {
        return None;
    }
    let tags = awareness
        .and_then(|a| a.local_zone.as_ref())
        .and_then(|z| z.affinity_tags.as_deref())
        .unwrap_or_default();
    let affinity: Vec<(String, String, u32)> = tags
        .iter()
        .enumerate()
        .filter_map(|(i, tag)| {
            let value = local.get(&tag.key)?;
            let default = u32::try_from(tags.len() - i - 1)
                .ok()
                .and_then(|exp| 10u32.checked_pow(exp))
                .and_then(|p| p.checked_mul(9))
                .unwrap_or(u32::MAX);
            Some((
                tag.key.clone(),
                value.clone(),
                tag.weight.unwrap_or(default),
            ))
        })
        .collect();
    let zone = local.get(ZONE_TAG).cloned();
    let failover = awareness
        .filter(|a| a.local_zone.is_some() || a.cross_zone.is_some())
        .map(|a| {
            let rules = a.cross_zone.as_ref().and_then(|c| c.failover.as_deref());
            rules
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter(|(_, rule)| {
                    rule.from.as_ref().is_none_or(|f| {
                        zone.as_ref()
                            .is_some_and(|z| f.zones.iter().any(|x| x == z))
                    })
                })
                .map(|(i, rule)| FailoverRule {
                    kind: rule.to.kind,
                    zones: rule.to.zones.clone().unwrap_or_default(),
                    priority: u32::try_from(i + 1).unwrap_or(u32::MAX),
                })
                .collect()
        });
    (zone.is_some() || !affinity.is_empty()).then(|| Locality {
        zone,
        affinity,
        failover,
        overprovisioning: overprovisioning(conf),
    })
}

/// Endpoints grouped into localities and priorities as `locality` says.
fn prioritised(name: &str, endpoints: &[Endpoint], locality: &Locality) -> ClusterLoadAssignment {
    // (priority, zone, sub-zone) -> (weight, endpoints)
    let mut groups: BTreeMap<(u32, String, String), (u32, Vec<Endpoint>)> = BTreeMap::new();
    for e in endpoints {
        let zone = e.tags.get(ZONE_TAG);
        let key = if zone == locality.zone.as_ref() {
            match locality
                .affinity
                .iter()
                .find(|(k, v, _)| e.tags.get(k) == Some(v))
            {
                Some((k, v, w)) => ((0, zone.cloned(), format!("{k}={v}")), *w),
                None => ((0, zone.cloned(), String::new()), 1),
            }
        } else {
            let priority = match &locality.failover {
                None => 1,
                Some(rules) => {
                    let other = zone.map(String::as_str).unwrap_or_default();
                    match rules.iter().find(|r| r.takes(other)) {
                        Some(rule) => rule.priority,
                        None => continue, // no rule sends traffic there
                    }
                }
            };
            ((priority, zone.cloned(), String::new()), 1)
        };
        let ((priority, zone, sub_zone), weight) = key;
        groups
            .entry((priority, zone.unwrap_or_default(), sub_zone))
            .or_insert_with(|| (weight, Vec::new()))
            .1
            .push(e.clone());
    }
    let weighted = !locality.affinity.is_empty();
    let mut cla = load_assignment(name, &[]);
    cla.endpoints = groups
        .into_iter()
        .map(|((priority, zone, sub_zone), (weight, members))| {
            let mut l = weighted_locality(name, &members);
            l.priority = priority;
            l.locality = Some(EnvoyLocality {
                zone,
                sub_zone,
                ..Default::default()
            });
            l.load_balancing_weight = weighted.then_some(UInt32Value { value: weight });
            l
        })
        .collect();
    // Envoy numbers priorities from 0 without gaps.
    let used: std::collections::BTreeSet<u32> = cla.endpoints.iter().map(|l| l.priority).collect();
    for l in &mut cla.endpoints {
        l.priority = u32::try_from(used.range(..l.priority).count()).unwrap_or(u32::MAX);
    }
    if locality.failover.is_some() {
        cla.policy = Some(Policy {
            overprovisioning_factor: Some(UInt32Value {
                value: locality.overprovisioning,
            }),
            ..Default::default()
        });
    }
    cla
}

/// Turns on locality-weighted balancing, which the affinity weights need.
fn weigh_localities(draft: &mut ClusterDraft) {
    let common = draft
        .cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default);
    common.locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
        LocalityWeightedLbConfig {},
    ));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conf(json: serde_json::Value) -> LoadBalancingConf {
        serde_json::from_value(json).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn endpoint(ip: &str, pairs: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            weight: 0,
            ip: ip.into(),
            port: 80,
            tags: tags(pairs),
        }
    }

    /// (priority, zone, sub-zone, weight, endpoint ips) per locality.
    fn localities(cla: &ClusterLoadAssignment) -> Vec<(u32, String, String, Option<u32>, usize)> {
        cla.endpoints
            .iter()
            .map(|l| {
                let loc = l.locality.clone().unwrap_or_default();
                (
                    l.priority,
                    loc.zone,
                    loc.sub_zone,
                    l.load_balancing_weight.map(|w| w.value),
                    l.lb_endpoints.len(),
                )
            })
            .collect()
    }

    #[test]
    fn affinity_tags_weigh_local_localities_as_kuma_does() {
        let proxy = tags(&[("kuma.io/zone", "east"), ("node", "n1"), ("rack", "r1")]);
        let endpoints = [
            endpoint(
                "10.0.0.1",
                &[("kuma.io/zone", "east"), ("node", "n1"), ("rack", "r1")],
            ),
            endpoint(
                "10.0.0.2",
                &[("kuma.io/zone", "east"), ("node", "n2"), ("rack", "r1")],
            ),
            endpoint(
                "10.0.0.3",
                &[("kuma.io/zone", "east"), ("node", "n3"), ("rack", "r9")],
            ),
            endpoint(
                "10.0.0.4",
                &[("kuma.io/zone", "west"), ("node", "n1"), ("rack", "r1")],
            ),
        ];
        // Default weights: 90 for the first of two tags, 9 for the second, 1 for the rest.
        let c = conf(serde_json::json!({"localityAwareness": {"localZone": {
            "affinityTags": [{"key": "node"}, {"key": "rack"}]}}}));
        let l = locality(&c, &proxy).unwrap();
        assert_eq!(
            localities(&prioritised("svc", &endpoints, &l)),
            [
                (0, "east".into(), String::new(), Some(1), 1),
                (0, "east".into(), "node=n1".into(), Some(90), 1),
                (0, "east".into(), "rack=r1".into(), Some(9), 1),
            ]
        );
        // With failover to any zone, west is the next priority.
        let c = conf(serde_json::json!({"localityAwareness": {
            "localZone": {"affinityTags": [{"key": "node"}, {"key": "rack"}]},
            "crossZone": {"failover": [{"to": {"type": "Any"}}]}}}));
        let l = locality(&c, &proxy).unwrap();
        assert_eq!(
            localities(&prioritised("svc", &endpoints, &l))[3],
            (1, "west".into(), String::new(), Some(1), 1)
        );
        // Explicit weights win; a tag the proxy lacks forms no locality.
        let c = conf(serde_json::json!({"localityAwareness": {"localZone": {
            "affinityTags": [{"key": "gpu", "weight": 500}, {"key": "rack", "weight": 30}]}}}));
        let l = locality(&c, &proxy).unwrap();
        assert_eq!(l.affinity, [("rack".to_string(), "r1".to_string(), 30)]);
        // Without zones or affinity nothing changes; disabled means disabled.
        assert_eq!(
            locality(&conf(serde_json::json!({})), &tags(&[("node", "n1")])),
            None
        );
        let off = conf(serde_json::json!({"localityAwareness": {"disabled": true}}));
        assert_eq!(locality(&off, &proxy), None);
        // Only remote endpoints: they become priority 0 (Envoy's priorities have no gaps).
        let remote = [endpoint("10.0.0.4", &[("kuma.io/zone", "west")])];
        let l = locality(&conf(serde_json::json!({})), &proxy).unwrap();
        assert_eq!(
            localities(&prioritised("svc", &remote, &l)),
            [(0, "west".into(), String::new(), None, 1)]
        );
    }

    #[test]
    fn cross_zone_failover_orders_other_zones_as_kuma_does() {
        let proxy = tags(&[("kuma.io/zone", "east")]);
        let endpoints = [
            endpoint("10.0.0.1", &[("kuma.io/zone", "east")]),
            endpoint("10.0.1.1", &[("kuma.io/zone", "west")]),
            endpoint("10.0.2.1", &[("kuma.io/zone", "north")]),
            endpoint("10.0.3.1", &[("kuma.io/zone", "south")]),
        ];
        let zones = |json: serde_json::Value| {
            let l = locality(&conf(json), &proxy).unwrap();
            let cla = prioritised("svc", &endpoints, &l);
            let factor = cla
                .policy
                .as_ref()
                .and_then(|p| p.overprovisioning_factor)
                .map(|f| f.value);
            let zones: Vec<(u32, String)> = localities(&cla)
                .into_iter()
                .map(|(priority, zone, ..)| (priority, zone))
                .collect();
            (zones, factor)
        };
        // Rules in order: west first, then anything but south; a rule for another zone's
        // proxies is skipped (its place still counts); south is taken by no rule: dropped.
        let (order, factor) = zones(serde_json::json!({"localityAwareness": {"crossZone": {
            "failover": [
                {"from": {"zones": ["west"]}, "to": {"type": "Any"}},
                {"to": {"type": "Only", "zones": ["west"]}},
                {"to": {"type": "AnyExcept", "zones": ["south"]}}],
            "failoverThreshold": {"percentage": 25}}}}));
        assert_eq!(
            order,
            [
                (0, "east".to_string()),
                (1, "west".to_string()),
                (2, "north".to_string()),
            ]
        );
        assert_eq!(factor, Some(400), "100 / 25 x 100");
        // `None` sends nowhere: only the local zone, with Kuma's default factor.
        let (order, factor) = zones(serde_json::json!({"localityAwareness": {"crossZone": {
            "failover": [{"to": {"type": "None"}}]}}}));
        assert_eq!(order, [(0, "east".to_string())]);
        assert_eq!(factor, Some(200));
        // No localZone or crossZone: every other zone at priority 1, no factor.
        let (order, factor) = zones(serde_json::json!({"localityAwareness": {}}));
        assert_eq!(order.len(), 4);
        assert!(order[1..].iter().all(|(p, _)| *p == 1));
        assert_eq!(factor, None);
        // A proxy whose local endpoints are gone fails over at priority 0.
        let remote_only = &endpoints[1..];
        let l = locality(
            &conf(serde_json::json!({"localityAwareness": {"crossZone": {
                "failover": [{"to": {"type": "Only", "zones": ["north"]}}]}}})),
            &proxy,
        )
        .unwrap();
        let cla = prioritised("svc", remote_only, &l);
        assert_eq!(localities(&cla)[0].0, 0);
        assert_eq!(localities(&cla)[0].1, "north");
    }
}
