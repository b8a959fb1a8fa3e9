//! MeshCircuitBreaker: connection limits and outlier detection.

use serde::{Deserialize, Serialize};

use super::{
    TargetRef, TargetRefRules, TargetedConf, kinds, percent_u32, positive_duration, positive_u32,
    require_sections, validate_entries, validate_top,
};
use crate::duration::Duration;
use crate::model::common::{IntOrString, validate_percentage};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshCircuitBreaker`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshCircuitBreakerSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Settings per destination.
    pub to: Option<Vec<TargetedConf<CircuitBreakerConf>>>,
    /// Settings per source.
    pub from: Option<Vec<TargetedConf<CircuitBreakerConf>>>,
    /// Inbound settings.
    pub rules: Option<Vec<CircuitBreakerRule>>,
}

/// An inbound rule (no matches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerRule {
    /// The configuration.
    #[serde(default)]
    pub default: CircuitBreakerConf,
}

/// Circuit breaker settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConf {
    /// Limits on connections and requests.
    pub connection_limits: Option<ConnectionLimits>,
    /// Ejection of misbehaving endpoints.
    pub outlier_detection: Option<OutlierDetection>,
}

/// Limits on connections and requests to an upstream cluster.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Maximum connections.
    pub max_connections: Option<u32>,
    /// Maximum connection pools.
    pub max_connection_pools: Option<u32>,
    /// Maximum pending requests.
    pub max_pending_requests: Option<u32>,
    /// Maximum parallel retries.
    pub max_retries: Option<u32>,
    /// Maximum parallel requests.
    pub max_requests: Option<u32>,
}

/// Outlier detection settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Turns outlier detection off.
    pub disabled: Option<bool>,
    /// Time between ejection sweeps.
    pub interval: Option<Duration>,
    /// Base ejection time.
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of ejected hosts.
    pub max_ejection_percent: Option<u32>,
    /// Tell local-origin errors from upstream errors.
    pub split_external_and_local_errors: Option<bool>,
    /// The detectors.
    pub detectors: Option<Detectors>,
    /// Panic threshold (percent).
    pub healthy_panic_threshold: Option<IntOrString>,
}

/// Outlier detectors.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Detectors {
    /// Consecutive errors of any kind.
    pub total_failures: Option<ConsecutiveDetector>,
    /// Consecutive gateway errors.
    pub gateway_failures: Option<ConsecutiveDetector>,
    /// Consecutive local-origin errors.
    pub local_origin_failures: Option<ConsecutiveDetector>,
    /// Success-rate statistics.
    pub success_rate: Option<SuccessRateDetector>,
    /// Failure-percentage threshold.
    pub failure_percentage: Option<FailurePercentageDetector>,
}

/// A detector counting consecutive failures.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsecutiveDetector {
    /// Failures in a row that eject a host.
    pub consecutive: Option<u32>,
}

/// Success-rate detector.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessRateDetector {
    /// Hosts needed for the statistics.
    pub minimum_hosts: Option<u32>,
    /// Requests per host needed.
    pub request_volume: Option<u32>,
    /// Standard deviation factor.
    pub standard_deviation_factor: Option<IntOrString>,
}

/// Failure-percentage detector.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailurePercentageDetector {
    /// Hosts needed.
    pub minimum_hosts: Option<u32>,
    /// Requests per host needed.
    pub request_volume: Option<u32>,
    /// Failure percentage that ejects a host.
    pub threshold: Option<u32>,
}

impl CircuitBreakerConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        if self.connection_limits.is_none() && self.outlier_detection.is_none() {
            err.add(
                p,
                "at least one of: 'connectionLimits' or 'outlierDetection' should be configured",
            );
            return;
        }
        if let Some(l) = &self.connection_limits {
            let lp = p.field("connectionLimits");
            positive_u32(&lp.field("maxConnections"), l.max_connections, err);
            positive_u32(&lp.field("maxConnectionPools"), l.max_connection_pools, err);
            positive_u32(&lp.field("maxPendingRequests"), l.max_pending_requests, err);
            positive_u32(&lp.field("maxRetries"), l.max_retries, err);
            positive_u32(&lp.field("maxRequests"), l.max_requests, err);
        }
        if let Some(o) = &self.outlier_detection {
            let op = p.field("outlierDetection");
            positive_duration(&op.field("interval"), o.interval.as_ref(), err);
            positive_duration(
                &op.field("baseEjectionTime"),
                o.base_ejection_time.as_ref(),
                err,
            );
            percent_u32(&op.field("maxEjectionPercent"), o.max_ejection_percent, err);
            if let Some(h) = &o.healthy_panic_threshold {
                validate_percentage(&op.field("healthyPanicThreshold"), h, err);
            }
            o.validate_detectors(&op.field("detectors"), err);
        }
    }
}

impl OutlierDetection {
    fn validate_detectors(&self, p: &Path, err: &mut ValidationError) {
        let Some(d) = &self.detectors else {
            err.add(p, "must be defined");
            return;
        };
        if d.total_failures.is_none()
            && d.gateway_failures.is_none()
            && d.local_origin_failures.is_none()
            && d.success_rate.is_none()
            && d.failure_percentage.is_none()
        {
            err.add(
                p,
                "must have at least one defined: totalFailures, gatewayFailures, localOriginFailures, successRate, failurePercentage",
            );
            return;
        }
        for (name, c) in [
            ("totalFailures", &d.total_failures),
            ("gatewayFailures", &d.gateway_failures),
            ("localOriginFailures", &d.local_origin_failures),
        ] {
            if let Some(c) = c {
                positive_u32(&p.field(name).field("consecutive"), c.consecutive, err);
            }
        }
        if let Some(s) = &d.success_rate {
            let sp = p.field("successRate");
            positive_u32(&sp.field("minimumHosts"), s.minimum_hosts, err);
            positive_u32(&sp.field("requestVolume"), s.request_volume, err);
            if let Some(f) = &s.standard_deviation_factor {
                match f.as_f64() {
                    None => err.add(&sp.field("standardDeviationFactor"), "invalid number"),
                    Some(v) if v <= 0.0 => err.add(
                        &sp.field("standardDeviationFactor"),
                        "must be greater than 0",
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(f) = &d.failure_percentage {
            let fp = p.field("failurePercentage");
            positive_u32(&fp.field("minimumHosts"), f.minimum_hosts, err);
            positive_u32(&fp.field("requestVolume"), f.request_volume, err);
            percent_u32(&fp.field("threshold"), f.threshold, err);
        }
    }
}

impl MeshCircuitBreakerSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let non_empty = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
        let (has_to, has_rules) = (
            non_empty(&self.to),
            self.rules.as_ref().is_some_and(|r| !r.is_empty()),
        );
        let has_from = self.from.as_ref().is_some_and(|f| !f.is_empty());
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            inbound_policy: has_from || has_rules,
            top_level: true,
        };
        validate_top(self.target_ref.as_ref(), top, &mut err);
        require_sections(
            &[("from", has_from), ("to", has_to), ("rules", has_rules)],
            &mut err,
        );
        if has_rules && (has_to || has_from) {
            err.add(
                &Path::at("spec"),
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        for (i, r) in self.rules.iter().flatten().enumerate() {
            r.default.validate(
                &Path::at("spec").field("rules").index(i).field("default"),
                &mut err,
            );
        }
        if let Some(from) = &self.from {
            let rules = TargetRefRules {
                kinds: kinds::FROM_MESH,
                ..Default::default()
            };
            validate_entries("from", from, rules, &mut err, |p, e, err| {
                e.default.validate(p, err)
            });
        }
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
