//! MeshLoadBalancingStrategy: the balancing algorithm of destination clusters, hash policies of
//! outbound routes, and locality awareness (endpoint priorities).
//!
//! Locality awareness: unless disabled, endpoints in the proxy's zone (`kuma.io/zone`) come
//! first; with `localZone.affinityTags`, endpoints sharing the proxy's value of the first tag
//! come first, then those sharing the second, and so on, then the rest (priorities, so traffic
//! spills over only when a level has no healthy endpoint). Affinity weights are not applied yet.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    ring_hash_lb_config::HashFunction,
};
use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as EnvoyHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use kuma_core::model::common::{IntOrString, Tags, ZONE_TAG};
use kuma_core::model::policy::{
    HashFunctionType, HashPolicy, HashPolicyType, LoadBalancerType, LoadBalancingConf,
};
use kuma_core::resource::ResourceType;

use super::to_conf;
use crate::envoy::{duration, load_assignment};
use crate::generate::ResourceGenerator;
use crate::generate::context::{Endpoint, ProxyContext, addresses};
use crate::generate::profile::in_subset;
use crate::generate::resources::{ClusterDraft, Endpoints, ResourceSet};

/// Applies MeshLoadBalancingStrategy.
#[derive(Debug, Clone, Copy)]
pub struct MeshLoadBalancingStrategy;

impl ResourceGenerator for MeshLoadBalancingStrategy {
    fn name(&self) -> &str {
        "MeshLoadBalancingStrategy"
    }

    fn apply(&self, ctx: &ProxyContext<'_>, rs: &mut ResourceSet) -> Result<(), String> {
        let rules = ctx.rules(ResourceType::MeshLoadBalancingStrategy);
        if rules.is_empty() {
            return Ok(());
        }
        let local_tags = proxy_tags(ctx);
        for (name, draft) in &mut rs.clusters {
            let Some(service) = draft.service().map(str::to_string) else {
                continue;
            };
            let Some(conf) = to_conf::<LoadBalancingConf>(&rules, &service)? else {
                continue;
            };
            algorithm(draft, &conf);
            if let Some(levels) = locality_levels(&conf, &local_tags) {
                let endpoints: Vec<Endpoint> = ctx
                    .mesh
                    .endpoints(&service)
                    .iter()
                    .filter(|e| in_subset(e, &draft.subset))
                    .cloned()
                    .collect();
                rs.endpoints.insert(
                    name.clone(),
                    Endpoints::Owned(prioritised(name, &endpoints, &levels)),
                );
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
            for vh in &mut http.route.virtual_hosts {
                for route in &mut vh.routes {
                    if let Some(Action::Route(action)) = route.action.as_mut() {
                        action.hash_policy = policies.clone();
                    }
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

/// The tags of the proxy's first inbound (what "local" means for affinity).
fn proxy_tags(ctx: &ProxyContext<'_>) -> Tags {
    ctx.dataplane
        .inbounds()
        .first()
        .map(|i| i.tags.clone())
        .unwrap_or_default()
}

/// The (key, local value) pairs that rank endpoints, most preferred first; `None` when locality
/// awareness is off or there is nothing to rank by.
fn locality_levels(conf: &LoadBalancingConf, local: &Tags) -> Option<Vec<(String, String)>> {
    let awareness = conf.locality_awareness.as_ref();
    if awareness.and_then(|a| a.disabled) == Some(true) {
        return None;
    }
    let mut levels = Vec::new();
    if let Some(zone) = local.get(ZONE_TAG) {
        levels.push((ZONE_TAG.to_string(), zone.clone()));
    }
    let affinity = awareness
        .and_then(|a| a.local_zone.as_ref())
        .and_then(|z| z.affinity_tags.as_ref());
    for tag in affinity.into_iter().flatten() {
        if let Some(v) = local.get(&tag.key) {
            levels.push((tag.key.clone(), v.clone()));
        }
    }
    (!levels.is_empty()).then_some(levels)
}

/// Endpoints grouped into priorities: level i holds those matching `levels[i]` first.
fn prioritised(
    name: &str,
    endpoints: &[Endpoint],
    levels: &[(String, String)],
) -> ClusterLoadAssignment {
    let mut groups: Vec<Vec<Endpoint>> = vec![Vec::new(); levels.len() + 1];
    for e in endpoints {
        let level = levels
            .iter()
            .position(|(k, v)| e.tags.get(k) == Some(v))
            .unwrap_or(levels.len());
        groups[level].push(e.clone());
    }
    let mut cla = load_assignment(name, &[]);
    cla.endpoints = groups
        .iter()
        .filter(|g| !g.is_empty())
        .enumerate()
        .map(|(priority, g)| {
            let mut locality: LocalityLbEndpoints = load_assignment(name, &addresses(g))
                .endpoints
                .into_iter()
                .next()
                .unwrap_or_default();
            locality.priority = u32::try_from(priority).unwrap_or(u32::MAX);
            locality
        })
        .collect();
    cla
}
