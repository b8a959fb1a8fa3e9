//! MeshFaultInjection: aborts, delays and response bandwidth limits on HTTP inbounds.
//!
//! Each `http` entry of a rule's merged conf becomes one Envoy `fault` HTTP filter on the
//! inbound's connection manager, so the entries act independently, each on its own share of
//! requests. A rule for a subset of callers (`from` a MeshService or MeshSubset) matches them
//! by the `x-kuma-tags` header their outbound adds ([`source_tags`]).

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_rate_limit::{
    FixedLimit, LimitType,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, FaultRateLimit};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use kuma_core::model::common::IntOrString;
use kuma_core::model::policy::FaultInjectionConf;
use kuma_core::resource::ResourceType;

use super::typed;
use crate::generate::ResourceGenerator;
use crate::generate::context::ProxyContext;
use crate::generate::resources::{ResourceSet, Terminal};
use crate::generate::source_tags;
use xds_server::envoy::{any, duration};

/// Applies MeshFaultInjection.
#[derive(Debug, Clone, Copy)]
pub struct MeshFaultInjection;

/// A percentage (0-100, decimals allowed) as millionths.
fn percent(p: &IntOrString) -> Option<FractionalPercent> {
    let v = p.as_f64()?.clamp(0.0, 100.0);
    Some(FractionalPercent {
        numerator: (v * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    })
}

/// `"10kbps"`, `"2mbps"`, `"1gbps"` in kbit/s.
pub(crate) fn kbps(limit: &str) -> Option<u64> {
    let l = limit.trim().to_ascii_lowercase();
    let (digits, factor) = if let Some(d) = l.strip_suffix("gbps") {
        (d, 1_000_000)
    } else if let Some(d) = l.strip_suffix("mbps") {
        (d, 1_000)
    } else if let Some(d) = l.strip_suffix("kbps") {
        (d, 1)
    } else {
        return None;
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(factor)
}

impl ResourceGenerator for MeshFaultInjection {
    fn name(&self) -> &str {
        "MeshFaultInjection"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshFaultInjection);
        if rules.is_empty() {
            return Ok(());
        }
        for inbound in &rs.inbounds {
            let Some(Terminal::Http(http)) = rs
                .listeners
                .get_mut(&inbound.listener)
                .map(|l| &mut l.terminal)
            else {
                continue;
            };
            let Some(from) = rules.from.iter().find(|i| i.port == inbound.port) else {
                continue;
            };
            // One set of filters per rule, each for the callers of its subset (by their
            // `x-kuma-tags`); the rules' subsets do not overlap, so a caller meets one set.
            for rule in &from.rules {
                let conf: FaultInjectionConf = typed(ResourceType::MeshFaultInjection, rule)?;
                let headers = source_tags::matchers(&rule.subset, &rule.negated);
                push_faults(&mut http.filters, &conf, &headers)?;
            }
        }
        Ok(())
    }
}

/// One Envoy `fault` filter per entry of `conf.http`, for requests matching `headers`.
fn push_faults(
    filters: &mut Vec<HttpFilter>,
    conf: &FaultInjectionConf,
    headers: &[envoy_types::pb::envoy::config::route::v3::HeaderMatcher],
) -> Result<(), String> {
    for fault in conf.http.iter().flatten() {
        let response_rate_limit = match &fault.response_bandwidth {
            Some(b) => Some(FaultRateLimit {
                percentage: percent(&b.percentage),
                limit_type: Some(LimitType::FixedLimit(FixedLimit {
                    limit_kbps: kbps(&b.limit).ok_or_else(|| {
                        format!(
                            "responseBandwidth.limit {:?} is not <n>kbps, <n>mbps or <n>gbps",
                            b.limit
                        )
                    })?,
                })),
            }),
            None => None,
        };
        let config = HttpFault {
            abort: fault.abort.as_ref().map(|a| FaultAbort {
                percentage: percent(&a.percentage),
                error_type: u32::try_from(a.http_status).ok().map(ErrorType::HttpStatus),
                ..Default::default()
            }),
            delay: fault.delay.as_ref().map(|d| FaultDelay {
                percentage: percent(&d.percentage),
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.value.get()))),
            }),
            headers: headers.to_vec(),
            response_rate_limit,
            ..Default::default()
        };
        filters.push(HttpFilter {
            name: "envoy.filters.http.fault".into(),
            config_type: Some(HttpConfigType::TypedConfig(any(&config))),
            ..Default::default()
        });
    }
    Ok(())
}
