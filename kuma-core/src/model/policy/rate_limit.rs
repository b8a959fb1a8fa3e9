//! MeshRateLimit: local HTTP request and TCP connection rate limits.

use serde::{Deserialize, Serialize};

use super::{
    HeaderModifier, MatchedRule, TargetRef, TargetRefRules, TargetedConf, includes_gateways, kinds,
    positive_u32, validate_header_modifier, validate_rule_matches,
    validate_sidecar_from_gateway_to, validate_top,
};
use crate::duration::Duration;
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshRateLimit`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRateLimitSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Limits per source.
    pub from: Option<Vec<TargetedConf<RateLimitConf>>>,
    /// Limits per destination (gateways).
    pub to: Option<Vec<TargetedConf<RateLimitConf>>>,
    /// Match-based inbound limits.
    pub rules: Option<Vec<MatchedRule<RateLimitConf>>>,
}

/// Rate-limit settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConf {
    /// Limits enforced by each proxy on its own.
    pub local: Option<LocalRateLimit>,
}

/// Local rate limits.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    /// HTTP request limit.
    pub http: Option<LocalHttpRateLimit>,
    /// TCP connection limit.
    pub tcp: Option<LocalTcpRateLimit>,
}

/// HTTP request limit.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalHttpRateLimit {
    /// Turns the limit off.
    pub disabled: Option<bool>,
    /// Allowed requests per interval.
    pub request_rate: Option<Rate>,
    /// The response to limited requests.
    pub on_rate_limit: Option<OnRateLimit>,
}

/// The response to limited requests.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnRateLimit {
    /// HTTP status (default 429).
    pub status: Option<u32>,
    /// Headers added to the response.
    pub headers: Option<HeaderModifier>,
}

/// TCP connection limit.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalTcpRateLimit {
    /// Turns the limit off.
    pub disabled: Option<bool>,
    /// Allowed connections per interval.
    pub connection_rate: Option<Rate>,
}

/// A number of events per interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    /// Events allowed.
    pub num: u32,
    /// Per this interval (more than 50ms).
    pub interval: Duration,
}

fn validate_rate(p: &Path, r: &Rate, err: &mut ValidationError) {
    if r.num == 0 {
        err.add(&p.field("num"), "must be greater than: 0");
    }
    if r.interval.get() <= std::time::Duration::from_millis(50) {
        err.add(&p.field("interval"), "must be greater than: 50ms");
    }
}

impl RateLimitConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        let lp = p.field("local");
        let Some(local) = &self.local else {
            err.add(&lp, "must be defined");
            return;
        };
        if local.http.is_none() && local.tcp.is_none() {
            err.add(&lp, "must have at least one defined: tcp, http");
        }
        if let Some(h) = &local.http {
            let hp = lp.field("http");
            if h.disabled.is_none() && h.request_rate.is_none() && h.on_rate_limit.is_none() {
                err.add(
                    &hp,
                    "must have at least one defined: disabled, requestRate, onRateLimit",
                );
            }
            if let Some(r) = &h.request_rate {
                validate_rate(&hp.field("requestRate"), r, err);
            }
            if let Some(o) = &h.on_rate_limit {
                positive_u32(&hp.field("onRateLimit").field("status"), o.status, err);
                if let Some(m) = &o.headers {
                    validate_header_modifier(&hp.field("onRateLimit").field("headers"), m, err);
                }
            }
        }
        if let Some(t) = &local.tcp {
            let tp = lp.field("tcp");
            if t.disabled.is_none() && t.connection_rate.is_none() {
                err.add(
                    &tp,
                    "must have at least one defined: disabled, connectionRate",
                );
            }
            if let Some(r) = &t.connection_rate {
                validate_rate(&tp.field("connectionRate"), r, err);
            }
        }
    }
}

impl MeshRateLimitSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let spec = Path::at("spec");
        let len = |v: Option<usize>| v.unwrap_or(0);
        let (n_from, n_to, n_rules) = (
            len(self.from.as_ref().map(Vec::len)),
            len(self.to.as_ref().map(Vec::len)),
            len(self.rules.as_ref().map(Vec::len)),
        );
        if n_rules > 0 && (n_to > 0 || n_from > 0) {
            err.add(
                &spec,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        let top = TargetRefRules {
            kinds: kinds::TOP_ALL,
            gateway_listener_tags: true,
            inbound_policy: n_from + n_rules > 0,
            top_level: true,
        };
        validate_top(self.target_ref.as_ref(), top, &mut err);
        let gateways = includes_gateways(self.target_ref.as_ref());
        if let Some(rules) = &self.rules {
            if gateways && !rules.is_empty() {
                err.add(&spec.field("rules"), "must not be defined");
            } else {
                validate_rule_matches(rules, &mut err, |p, r, err| {
                    let has_spiffe = r.matches.iter().flatten().any(|m| m.spiffe_id.is_some());
                    if has_spiffe && r.default.local.as_ref().is_some_and(|l| l.tcp.is_some()) {
                        err.add(
                            &p.field("local").field("tcp"),
                            "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity",
                        );
                    }
                    r.default.validate(p, err);
                });
            }
        }
        validate_sidecar_from_gateway_to(
            self.target_ref.as_ref(),
            self.from.as_ref(),
            kinds::FROM_MESH,
            self.to.as_ref(),
            &mut err,
            |p, c, err| c.validate(p, err),
        );
        err
    }
}
