//! MeshRetry: TCP, HTTP and gRPC retry policies.

use serde::{Deserialize, Serialize};

use super::{
    HeaderMatch, TargetRef, TargetRefKind::*, TargetRefRules, TargetedConf, kinds,
    positive_duration, require_sections, validate_entries, validate_header_matches, validate_top,
};
use crate::duration::Duration;
use crate::model::common::Tags;
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshRetry`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRetrySpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Retries per destination.
    pub to: Option<Vec<TargetedConf<RetryConf>>>,
}

/// Retry settings per protocol.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConf {
    /// TCP connect retries.
    pub tcp: Option<TcpRetry>,
    /// HTTP retries.
    pub http: Option<HttpRetry>,
    /// gRPC retries.
    pub grpc: Option<GrpcRetry>,
}

/// TCP connect retries.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRetry {
    /// Connection attempts.
    pub max_connect_attempt: Option<u32>,
}

/// HTTP retries.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries.
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Exponential back-off.
    pub back_off: Option<BackOff>,
    /// Back-off driven by rate-limit headers.
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Conditions (`5xx`, `GatewayError`, `HttpMethodGet`, ...).
    pub retry_on: Option<Vec<String>>,
    /// Response headers that trigger a retry.
    pub retriable_response_headers: Option<Vec<HeaderMatch>>,
    /// Request headers that make a request retriable.
    pub retriable_request_headers: Option<Vec<HeaderMatch>>,
    /// Host selection predicates.
    pub host_selection: Option<Vec<HostPredicate>>,
    /// Host selection attempts.
    pub host_selection_max_attempts: Option<i64>,
}

/// gRPC retries.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRetry {
    /// Number of retries.
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Exponential back-off.
    pub back_off: Option<BackOff>,
    /// Back-off driven by rate-limit headers.
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Conditions (`Canceled`, `DeadlineExceeded`, ...).
    pub retry_on: Option<Vec<String>>,
}

/// Exponential back-off.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackOff {
    /// First interval.
    pub base_interval: Option<Duration>,
    /// Largest interval.
    pub max_interval: Option<Duration>,
}

/// Back-off from rate-limit response headers.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitedBackOff {
    /// Headers carrying the reset time.
    pub reset_headers: Option<Vec<ResetHeader>>,
    /// Largest interval.
    pub max_interval: Option<Duration>,
}

/// A reset header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetHeader {
    /// Header name.
    pub name: String,
    /// `Seconds` or `UnixTimestamp`.
    pub format: ResetHeaderFormat,
}

/// Format of a reset header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetHeaderFormat {
    /// Seconds to wait.
    Seconds,
    /// Absolute time.
    UnixTimestamp,
}

/// A host selection predicate.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPredicate {
    /// The predicate.
    pub predicate: PredicateType,
    /// Tags (OmitHostsWithTags).
    pub tags: Option<Tags>,
    /// Update frequency (OmitPreviousPriorities).
    pub update_frequency: Option<i32>,
}

/// Host selection predicate types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredicateType {
    /// Skip hosts already tried.
    OmitPreviousHosts,
    /// Skip hosts with tags.
    OmitHostsWithTags,
    /// Skip priorities already tried.
    OmitPreviousPriorities,
}

/// Values of `http.retryOn`.
pub const HTTP_RETRY_ON: &[&str] = &[
    "5xx",
    "GatewayError",
    "Reset",
    "Retriable4xx",
    "ConnectFailure",
    "EnvoyRatelimited",
    "RefusedStream",
    "Http3PostConnectFailure",
    "HttpMethodConnect",
    "HttpMethodDelete",
    "HttpMethodGet",
    "HttpMethodHead",
    "HttpMethodOptions",
    "HttpMethodPatch",
    "HttpMethodPost",
    "HttpMethodPut",
    "HttpMethodTrace",
];
/// Values of `grpc.retryOn`.
pub const GRPC_RETRY_ON: &[&str] = &[
    "Canceled",
    "DeadlineExceeded",
    "Internal",
    "ResourceExhausted",
    "Unavailable",
];

fn validate_retry_on(
    p: &Path,
    values: Option<&Vec<String>>,
    allowed: &[&str],
    err: &mut ValidationError,
) {
    for (i, v) in values.into_iter().flatten().enumerate() {
        // Kuma also accepts a bare status code for HTTP.
        let status =
            allowed == HTTP_RETRY_ON && v.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
        if !allowed.contains(&v.as_str()) && !status {
            err.add(
                &p.index(i),
                format!(
                    "unknown value {v:?}. Allowed values: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

fn validate_back_off(
    p: &Path,
    b: Option<&BackOff>,
    r: Option<&RateLimitedBackOff>,
    err: &mut ValidationError,
) {
    if let Some(b) = b {
        positive_duration(
            &p.field("backOff").field("baseInterval"),
            b.base_interval.as_ref(),
            err,
        );
        positive_duration(
            &p.field("backOff").field("maxInterval"),
            b.max_interval.as_ref(),
            err,
        );
        if let (Some(base), Some(max)) = (&b.base_interval, &b.max_interval)
            && base.get() > max.get()
        {
            err.add(
                &p.field("backOff").field("maxInterval"),
                "must be greater than or equal to baseInterval",
            );
        }
    }
    if let Some(r) = r {
        positive_duration(
            &p.field("rateLimitedBackOff").field("maxInterval"),
            r.max_interval.as_ref(),
            err,
        );
    }
}

impl RetryConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            err.add(p, "at least one of 'tcp', 'http', 'grpc' has to be defined");
        }
        if let Some(t) = &self.tcp
            && t.max_connect_attempt == Some(0)
        {
            err.add(
                &p.field("tcp").field("maxConnectAttempt"),
                "must be greater than 0",
            );
        }
        if let Some(h) = &self.http {
            let hp = p.field("http");
            positive_duration(&hp.field("perTryTimeout"), h.per_try_timeout.as_ref(), err);
            validate_back_off(
                &hp,
                h.back_off.as_ref(),
                h.rate_limited_back_off.as_ref(),
                err,
            );
            validate_retry_on(
                &hp.field("retryOn"),
                h.retry_on.as_ref(),
                HTTP_RETRY_ON,
                err,
            );
            for (name, hm) in [
                ("retriableResponseHeaders", &h.retriable_response_headers),
                ("retriableRequestHeaders", &h.retriable_request_headers),
            ] {
                if let Some(hm) = hm {
                    validate_header_matches(&hp.field(name), hm, err);
                }
            }
            for (i, pred) in h.host_selection.iter().flatten().enumerate() {
                if pred.predicate == PredicateType::OmitHostsWithTags
                    && pred.tags.as_ref().is_none_or(|t| t.is_empty())
                {
                    err.add(
                        &hp.field("hostSelection").index(i).field("tags"),
                        "must be defined for OmitHostsWithTags",
                    );
                }
            }
        }
        if let Some(g) = &self.grpc {
            let gp = p.field("grpc");
            positive_duration(&gp.field("perTryTimeout"), g.per_try_timeout.as_ref(), err);
            validate_back_off(
                &gp,
                g.back_off.as_ref(),
                g.rate_limited_back_off.as_ref(),
                err,
            );
            validate_retry_on(
                &gp.field("retryOn"),
                g.retry_on.as_ref(),
                GRPC_RETRY_ON,
                err,
            );
        }
    }
}

impl MeshRetrySpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_ALL,
            gateway_listener_tags: true,
            ..Default::default()
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        require_sections(&[("to", self.to.is_some())], &mut err);
        if let Some(to) = &self.to {
            let kinds = if matches!(top_kind, MeshGateway | MeshHTTPRoute) {
                kinds::TO_GATEWAY
            } else {
                &[
                    Mesh,
                    MeshService,
                    MeshExternalService,
                    MeshMultiZoneService,
                    MeshHTTPRoute,
                ]
            };
            validate_entries(
                "to",
                to,
                TargetRefRules {
                    kinds,
                    ..Default::default()
                },
                &mut err,
                |p, e, err| e.default.validate(p, err),
            );
        }
        err
    }
}
