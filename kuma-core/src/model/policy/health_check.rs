//! MeshHealthCheck: active health checking of destinations.

use serde::{Deserialize, Serialize};

use super::{
    HeaderModifier, TargetRef, TargetRefRules, TargetedConf, kinds, positive_duration,
    require_sections, validate_entries, validate_top,
};
use crate::duration::Duration;
use crate::model::common::{IntOrString, validate_percentage};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshHealthCheck`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshHealthCheckSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Health checks per destination.
    pub to: Option<Vec<TargetedConf<HealthCheckConf>>>,
}

/// Health check settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckConf {
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time to wait for a check.
    pub timeout: Option<Duration>,
    /// Failures before a host is unhealthy.
    pub unhealthy_threshold: Option<i32>,
    /// Successes before a host is healthy.
    pub healthy_threshold: Option<i32>,
    /// Jitter of the first check.
    pub initial_jitter: Option<Duration>,
    /// Jitter of every check.
    pub interval_jitter: Option<Duration>,
    /// Jitter as a percentage of the interval.
    pub interval_jitter_percent: Option<i32>,
    /// Healthy-host percentage below which load balancing ignores health.
    pub healthy_panic_threshold: Option<IntOrString>,
    /// Fail traffic instead of ignoring health in panic.
    pub fail_traffic_on_panic: Option<bool>,
    /// File for health check events.
    pub event_log_path: Option<String>,
    /// Log every failure.
    pub always_log_health_check_failures: Option<bool>,
    /// Interval for hosts without traffic.
    pub no_traffic_interval: Option<Duration>,
    /// TCP check.
    pub tcp: Option<TcpHealthCheck>,
    /// HTTP check.
    pub http: Option<HttpHealthCheck>,
    /// gRPC check.
    pub grpc: Option<GrpcHealthCheck>,
    /// Reuse the connection between checks.
    pub reuse_connection: Option<bool>,
}

/// TCP health check.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {
    /// Disable it.
    pub disabled: Option<bool>,
    /// Base64 payload to send.
    pub send: Option<String>,
    /// Base64 payloads expected.
    pub receive: Option<Vec<String>>,
}

/// HTTP health check.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Disable it.
    pub disabled: Option<bool>,
    /// Path to request.
    pub path: Option<String>,
    /// Headers to add.
    pub request_headers_to_add: Option<HeaderModifier>,
    /// Status codes counted as healthy.
    pub expected_statuses: Option<Vec<i32>>,
}

/// gRPC health check.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// Disable it.
    pub disabled: Option<bool>,
    /// Service name in the check request.
    pub service_name: Option<String>,
    /// Authority header.
    pub authority: Option<String>,
}

impl HealthCheckConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        positive_duration(&p.field("interval"), self.interval.as_ref(), err);
        positive_duration(&p.field("timeout"), self.timeout.as_ref(), err);
        for (name, v) in [
            ("unhealthyThreshold", self.unhealthy_threshold),
            ("healthyThreshold", self.healthy_threshold),
        ] {
            if v.is_some_and(|v| v <= 0) {
                err.add(&p.field(name), "must be greater than zero when defined");
            }
        }
        if let Some(v) = self.interval_jitter_percent
            && !(0..=100).contains(&v)
        {
            err.add(
                &p.field("intervalJitterPercent"),
                "must be in inclusive range [0, 100]",
            );
        }
        if let Some(t) = &self.healthy_panic_threshold {
            validate_percentage(&p.field("healthyPanicThreshold"), t, err);
        }
        if let Some(h) = &self.http {
            let hp = p.field("http");
            if let Some(path) = &h.path
                && !path.starts_with('/')
            {
                err.add(&hp.field("path"), "must be an absolute path");
            }
            for (i, s) in h.expected_statuses.iter().flatten().enumerate() {
                if !(100..=599).contains(s) {
                    err.add(
                        &hp.field("expectedStatuses").index(i),
                        "must be in range [100, 600)",
                    );
                }
            }
        }
    }
}

impl MeshHealthCheckSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            ..Default::default()
        };
        validate_top(self.target_ref.as_ref(), top, &mut err);
        require_sections(&[("to", self.to.is_some())], &mut err);
        if let Some(to) = &self.to {
            let rules = TargetRefRules {
                kinds: kinds::TO_SERVICES,
                ..Default::default()
            };
            validate_entries("to", to, rules, &mut err, |p, e, err| {
                e.default.validate(p, err)
            });
        }
        err
    }
}
