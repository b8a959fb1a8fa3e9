//! MeshRetry: retry policies on outbound routes and connect attempts on TCP outbounds.
//!
//! Kuma's Envoy values: HTTP retries on `gateway-error,connect-failure,refused-stream` unless
//! `retryOn` says otherwise (status codes become `retriable_status_codes`, `HttpMethod*` entries
//! `:method` request header matches); gRPC on
//! `cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable`;
//! `numRetries: 0` turns retries off. HTTP/2 outbounds use the `http` section. Policies with a
//! top-level targetRef `MeshHTTPRoute` set the retry policy of that route's rules' routes.

use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader, ResetHeaderFormat as EnvoyResetFormat, RetryBackOff,
    RetryHostPredicate, RetryPriority,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RetryPolicy};
use envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use kuma_core::model::policy::{
    BackOff, GrpcRetry, HttpRetry, PredicateType, RateLimitedBackOff, ResetHeaderFormat, RetryConf,
};
use kuma_core::resource::ResourceType;

use super::{each_route_conf, header_matcher, lb_metadata, string_exact, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::context::Protocol;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::{ResourceSet, Terminal};
use xds_server::envoy::{any, duration};

const HTTP_RETRY_ON: &str = "gateway-error,connect-failure,refused-stream";
const GRPC_RETRY_ON: &str =
    "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable";

/// Applies MeshRetry.
#[derive(Debug, Clone, Copy)]
pub struct MeshRetry;

impl ResourceGenerator for MeshRetry {
    fn name(&self) -> &str {
        "MeshRetry"
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshRetry);
        if rules.is_empty() {
            return Ok(());
        }
        for o in &rs.outbounds {
            let Some(l) = rs.listeners.get_mut(&o.listener) else {
                continue;
            };
            match &mut l.terminal {
                Terminal::Tcp(tcp) => {
                    let conf = to_conf::<RetryConf>(&rules, &o.service)?;
                    if let Some(n) = conf.and_then(|c| c.tcp).and_then(|t| t.max_connect_attempt) {
                        tcp.max_connect_attempts = Some(UInt32Value { value: n });
                    }
                }
                Terminal::Http(http) => {
                    // Per route: a route-targeted policy's conf for the route, the service's
                    // otherwise.
                    let grpc = o.protocol == Protocol::Grpc;
                    each_route_conf(
                        &rules,
                        &o.service,
                        &mut http.route,
                        |route, conf: &RetryConf| {
                            let Some(Action::Route(action)) = route.action.as_mut() else {
                                return;
                            };
                            let policy = match grpc {
                                true => conf.grpc.as_ref().and_then(grpc_policy),
                                false => conf.http.as_ref().and_then(http_policy),
                            };
                            if let Some(policy) = policy {
                                action.retry_policy = Some(policy);
                            }
                        },
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn back_off(b: &BackOff, default_base: bool) -> RetryBackOff {
    RetryBackOff {
        base_interval: b
            .base_interval
            .as_ref()
            .map(|d| duration(d.get()))
            .or_else(|| default_base.then(|| duration(std::time::Duration::from_millis(25)))),
        max_interval: b.max_interval.as_ref().map(|d| duration(d.get())),
    }
}

fn rate_limited(b: &RateLimitedBackOff) -> RateLimitedRetryBackOff {
    RateLimitedRetryBackOff {
        reset_headers: b
            .reset_headers
            .iter()
            .flatten()
            .map(|h| ResetHeader {
                name: h.name.clone(),
                format: match h.format {
                    ResetHeaderFormat::Seconds => EnvoyResetFormat::Seconds,
                    ResetHeaderFormat::UnixTimestamp => EnvoyResetFormat::UnixTimestamp,
                } as i32,
            })
            .collect(),
        max_interval: b.max_interval.as_ref().map(|d| duration(d.get())),
    }
}

fn http_retry_on(item: &str) -> Option<&'static str> {
    Some(match item {
        "5xx" | "5XX" => "5xx",
        "GatewayError" => "gateway-error",
        "Reset" => "reset",
        "Retriable4xx" => "retriable-4xx",
        "ConnectFailure" => "connect-failure",
        "EnvoyRatelimited" => "envoy-ratelimited",
        "RefusedStream" => "refused-stream",
        "Http3PostConnectFailure" => "http3-post-connect-failure",
        _ => return None,
    })
}

fn http_policy(conf: &HttpRetry) -> Option<RetryPolicy> {
    if conf.num_retries == Some(0) {
        return None;
    }
    let mut policy = RetryPolicy {
        retry_on: HTTP_RETRY_ON.into(),
        num_retries: conf.num_retries.map(|value| UInt32Value { value }),
        per_try_timeout: conf.per_try_timeout.as_ref().map(|d| duration(d.get())),
        retry_back_off: conf.back_off.as_ref().map(|b| back_off(b, false)),
        rate_limited_retry_back_off: conf.rate_limited_back_off.as_ref().map(rate_limited),
        host_selection_retry_max_attempts: conf.host_selection_max_attempts.unwrap_or(0),
        ..Default::default()
    };
    let mut retry_on = Vec::new();
    for item in conf.retry_on.iter().flatten() {
        if let Ok(code) = item.parse::<u32>() {
            policy.retriable_status_codes.push(code);
        } else if let Some(method) = item.strip_prefix("HttpMethod") {
            policy
                .retriable_request_headers
                .push(method_matcher(&method.to_ascii_uppercase()));
        } else if let Some(v) = http_retry_on(item) {
            retry_on.push(v);
        }
    }
    if !retry_on.is_empty() {
        policy.retry_on = retry_on.join(",");
    }
    if !policy.retriable_status_codes.is_empty()
        && !policy
            .retry_on
            .split(',')
            .any(|r| r == "retriable-status-codes")
    {
        policy.retry_on.push_str(",retriable-status-codes");
    }
    for h in conf.retriable_request_headers.iter().flatten() {
        policy.retriable_request_headers.push(header_matcher(h));
    }
    for h in conf.retriable_response_headers.iter().flatten() {
        policy.retriable_headers.push(header_matcher(h));
    }
    for p in conf.host_selection.iter().flatten() {
        match p.predicate {
            PredicateType::OmitPreviousHosts => policy.retry_host_predicate.push(RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                        any(&PreviousHostsPredicate::default()),
                    ),
                ),
            }),
            PredicateType::OmitHostsWithTags => policy.retry_host_predicate.push(RetryHostPredicate {
                name: "envoy.retry_host_predicates.omit_host_metadata".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                        any(&OmitHostMetadataConfig {
                            metadata_match: Some(lb_metadata(p.tags.as_ref())),
                        }),
                    ),
                ),
            }),
            PredicateType::OmitPreviousPriorities => {
                policy.retry_priority = Some(RetryPriority {
                    name: "envoy.retry_priorities.previous_priorities".into(),
                    config_type: Some(
                        envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType::TypedConfig(
                            any(&PreviousPrioritiesConfig {
                                update_frequency: p.update_frequency.unwrap_or(0),
                            }),
                        ),
                    ),
                })
            }
        }
    }
    Some(policy)
}

fn method_matcher(method: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(string_exact(method)),
        ..Default::default()
    }
}

fn grpc_retry_on(item: &str) -> Option<&'static str> {
    Some(match item {
        "Canceled" => "canceled",
        "DeadlineExceeded" => "deadline-exceeded",
        "Internal" => "internal",
        "ResourceExhausted" => "resource-exhausted",
        "Unavailable" => "unavailable",
        _ => return None,
    })
}

fn grpc_policy(conf: &GrpcRetry) -> Option<RetryPolicy> {
    if conf.num_retries == Some(0) {
        return None;
    }
    let retry_on: Vec<&str> = conf
        .retry_on
        .iter()
        .flatten()
        .filter_map(|r| grpc_retry_on(r))
        .collect();
    Some(RetryPolicy {
        retry_on: if retry_on.is_empty() {
            GRPC_RETRY_ON.into()
        } else {
            retry_on.join(",")
        },
        num_retries: conf.num_retries.map(|value| UInt32Value { value }),
        per_try_timeout: conf.per_try_timeout.as_ref().map(|d| duration(d.get())),
        retry_back_off: conf.back_off.as_ref().map(|b| back_off(b, true)),
        rate_limited_retry_back_off: conf.rate_limited_back_off.as_ref().map(rate_limited),
        ..Default::default()
    })
}
