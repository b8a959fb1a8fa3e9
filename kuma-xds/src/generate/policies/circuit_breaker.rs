//! MeshCircuitBreaker: connection limits and outlier detection on clusters.
//!
//! `to` rules configure the clusters of each destination service, `from`/`rules` the local
//! cluster of each inbound. Detectors that are not configured are switched off (Envoy would
//! otherwise enforce its default consecutive-5xx detector).

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use kuma_core::model::common::IntOrString;
use kuma_core::model::policy::CircuitBreakerConf;
use kuma_core::resource::ResourceType;

use super::cluster_conf;
use crate::generate::ResourceGenerator;
use crate::generate::context::ProxyContext;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::ResourceSet;
use kuma_core::rules::ProxyRules;
use xds_server::envoy::duration;

fn u32v(v: Option<u32>) -> Option<UInt32Value> {
    v.map(|value| UInt32Value { value })
}

/// Applies MeshCircuitBreaker.
#[derive(Debug, Clone, Copy)]
pub struct MeshCircuitBreaker;

impl ResourceGenerator for MeshCircuitBreaker {
    fn name(&self) -> &str {
        "MeshCircuitBreaker"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        configure(&ctx.rules(ResourceType::MeshCircuitBreaker), rs)
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        configure(&ctx.rules(ResourceType::MeshCircuitBreaker), rs)
    }
}

/// Applies `rules` to what `rs` holds: inbounds and their clusters, or outbounds and theirs.
fn configure(rules: &ProxyRules, rs: &mut ResourceSet) -> Result<(), crate::generate::BoxError> {
    if rules.is_empty() {
        return Ok(());
    }
    for draft in rs.clusters.values_mut() {
        let conf = cluster_conf::<CircuitBreakerConf>(rules, &draft.role)?;
        let Some(conf) = conf else { continue };
        let cluster = &mut draft.cluster;
        if let Some(l) = &conf.connection_limits {
            cluster.circuit_breakers = Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    max_connections: u32v(l.max_connections),
                    max_pending_requests: u32v(l.max_pending_requests),
                    max_requests: u32v(l.max_requests),
                    max_retries: u32v(l.max_retries),
                    max_connection_pools: u32v(l.max_connection_pools),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if let Some(o) = conf
            .outlier_detection
            .as_ref()
            .filter(|o| o.disabled != Some(true))
        {
            let on = |set: bool| {
                Some(UInt32Value {
                    value: if set { 100 } else { 0 },
                })
            };
            let d = o.detectors.clone().unwrap_or_default();
            let total = d.total_failures.as_ref().and_then(|x| x.consecutive);
            let gateway = d.gateway_failures.as_ref().and_then(|x| x.consecutive);
            let local = d.local_origin_failures.as_ref().and_then(|x| x.consecutive);
            let mut od = OutlierDetection {
                interval: o.interval.as_ref().map(|x| duration(x.get())),
                base_ejection_time: o.base_ejection_time.as_ref().map(|x| duration(x.get())),
                max_ejection_percent: u32v(o.max_ejection_percent),
                split_external_local_origin_errors: o
                    .split_external_and_local_errors
                    .unwrap_or(false),
                consecutive_5xx: u32v(total),
                enforcing_consecutive_5xx: on(d.total_failures.is_some()),
                consecutive_gateway_failure: u32v(gateway),
                enforcing_consecutive_gateway_failure: on(d.gateway_failures.is_some()),
                consecutive_local_origin_failure: u32v(local),
                enforcing_consecutive_local_origin_failure: on(d.local_origin_failures.is_some()),
                enforcing_success_rate: on(d.success_rate.is_some()),
                enforcing_failure_percentage: on(d.failure_percentage.is_some()),
                enforcing_local_origin_success_rate: on(false),
                enforcing_failure_percentage_local_origin: on(false),
                ..Default::default()
            };
            if let Some(s) = &d.success_rate {
                od.success_rate_minimum_hosts = u32v(s.minimum_hosts);
                od.success_rate_request_volume = u32v(s.request_volume);
                od.success_rate_stdev_factor = s
                    .standard_deviation_factor
                    .as_ref()
                    .and_then(IntOrString::as_f64)
                    .map(|f| UInt32Value {
                        value: (f * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32,
                    });
            }
            if let Some(f) = &d.failure_percentage {
                od.failure_percentage_minimum_hosts = u32v(f.minimum_hosts);
                od.failure_percentage_request_volume = u32v(f.request_volume);
                od.failure_percentage_threshold = u32v(f.threshold);
            }
            cluster.outlier_detection = Some(od);
            if let Some(p) = o
                .healthy_panic_threshold
                .as_ref()
                .and_then(IntOrString::as_f64)
            {
                cluster
                    .common_lb_config
                    .get_or_insert_with(CommonLbConfig::default)
                    .healthy_panic_threshold = Some(Percent { value: p });
            }
        }
    }
    Ok(())
}
