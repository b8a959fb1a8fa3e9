//! MeshRateLimit: local rate limits on inbounds.
//!
//! `local.http` becomes Envoy's `local_ratelimit` HTTP filter on the inbound's connection
//! manager (a token bucket of `requestRate.num` tokens refilled every `interval`; over the
//! limit, the configured status, 429 by default, and headers); `local.tcp` becomes the
//! `local_ratelimit` network filter, limiting new connections the same way.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket};
use envoy_types::pb::google::protobuf::UInt32Value;
use kuma_core::model::policy::{Rate, RateLimitConf};
use kuma_core::resource::ResourceType;

use super::{from_conf, header_values};
use crate::generate::ResourceGenerator;
use crate::generate::context::ProxyContext;
use crate::generate::resources::{ResourceSet, Terminal};
use xds_server::envoy::{any, duration};

/// Applies MeshRateLimit.
#[derive(Debug, Clone, Copy)]
pub struct MeshRateLimit;

fn bucket(rate: &Rate) -> TokenBucket {
    TokenBucket {
        max_tokens: rate.num,
        tokens_per_fill: Some(UInt32Value { value: rate.num }),
        fill_interval: Some(duration(rate.interval.get())),
    }
}

fn always() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: 0, // HUNDRED
        }),
        runtime_key: String::new(),
    })
}

impl ResourceGenerator for MeshRateLimit {
    fn name(&self) -> &str {
        "MeshRateLimit"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshRateLimit);
        if rules.is_empty() {
            return Ok(());
        }
        for inbound in &rs.inbounds {
            let Some(conf) = from_conf::<RateLimitConf>(&rules, inbound.port)? else {
                continue;
            };
            let Some(local) = conf.local else { continue };
            let Some(l) = rs.listeners.get_mut(&inbound.listener) else {
                continue;
            };
            let stat_prefix = format!("{}_rate_limit", inbound.cluster.replace(':', "_"));
            match &mut l.terminal {
                Terminal::Http(http) => {
                    let Some(h) = local.http.filter(|h| h.disabled != Some(true)) else {
                        continue;
                    };
                    let Some(rate) = &h.request_rate else {
                        continue;
                    };
                    let on_limit = h.on_rate_limit.unwrap_or_default();
                    let config = HttpLocalRateLimit {
                        stat_prefix,
                        status: Some(HttpStatus {
                            code: on_limit
                                .status
                                .and_then(|s| i32::try_from(s).ok())
                                .unwrap_or(429),
                        }),
                        token_bucket: Some(bucket(rate)),
                        filter_enabled: always(),
                        filter_enforced: always(),
                        response_headers_to_add: on_limit
                            .headers
                            .as_ref()
                            .map(header_values)
                            .unwrap_or_default(),
                        ..Default::default()
                    };
                    http.filters.push(HttpFilter {
                        name: "envoy.filters.http.local_ratelimit".into(),
                        config_type: Some(HttpConfigType::TypedConfig(any(&config))),
                        ..Default::default()
                    });
                }
                Terminal::Tcp(_) => {
                    let Some(t) = local.tcp.filter(|t| t.disabled != Some(true)) else {
                        continue;
                    };
                    let Some(rate) = &t.connection_rate else {
                        continue;
                    };
                    let config = TcpLocalRateLimit {
                        stat_prefix,
                        token_bucket: Some(bucket(rate)),
                        ..Default::default()
                    };
                    l.network_filters.push(Filter {
                        name: "envoy.filters.network.local_ratelimit".into(),
                        config_type: Some(ConfigType::TypedConfig(any(&config))),
                    });
                }
            }
        }
        Ok(())
    }
}
