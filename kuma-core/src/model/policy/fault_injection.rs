//! MeshFaultInjection: injected aborts, delays and bandwidth limits.

use serde::{Deserialize, Serialize};

use super::{
    MatchedRule, TargetRef, TargetRefKind::*, TargetRefRules, TargetedConf, kinds,
    validate_rule_matches, validate_sidecar_from_gateway_to, validate_top,
};
use crate::duration::Duration;
use crate::model::common::{IntOrString, validate_percentage};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshFaultInjection`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFaultInjectionSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Faults per source.
    pub from: Option<Vec<TargetedConf<FaultInjectionConf>>>,
    /// Faults per destination (gateways).
    pub to: Option<Vec<TargetedConf<FaultInjectionConf>>>,
    /// Match-based inbound faults.
    pub rules: Option<Vec<MatchedRule<FaultInjectionConf>>>,
}

/// Fault settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionConf {
    /// HTTP faults.
    pub http: Option<Vec<HttpFault>>,
}

/// One HTTP fault.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFault {
    /// Abort with a status.
    pub abort: Option<Abort>,
    /// Delay the response.
    pub delay: Option<Delay>,
    /// Limit the response bandwidth.
    pub response_bandwidth: Option<ResponseBandwidth>,
}

/// An abort fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// HTTP status returned.
    pub http_status: i32,
    /// Share of affected requests.
    pub percentage: IntOrString,
}

/// A delay fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Added delay.
    pub value: Duration,
    /// Share of affected requests.
    pub percentage: IntOrString,
}

/// A bandwidth fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseBandwidth {
    /// Limit such as `10kbps`, `5Mbps`, `1Gbps`.
    pub limit: String,
    /// Share of affected requests.
    pub percentage: IntOrString,
}

/// True when `v` is a bandwidth such as `100kbps` (Kuma's `^(\d*)\s?([GMk]+bps)$`).
pub fn is_bandwidth(v: &str) -> bool {
    let Some(num_unit) = v.strip_suffix("bps") else {
        return false;
    };
    let unit_len = num_unit
        .bytes()
        .rev()
        .take_while(|c| matches!(c, b'G' | b'M' | b'k'))
        .count();
    if unit_len == 0 {
        return false;
    }
    let num = &num_unit[..num_unit.len() - unit_len];
    let num = num.strip_suffix(|c: char| c.is_whitespace()).unwrap_or(num);
    num.bytes().all(|c| c.is_ascii_digit())
}

impl FaultInjectionConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        let hp = p.field("http");
        for (i, f) in self.http.iter().flatten().enumerate() {
            if let Some(a) = &f.abort {
                let ap = hp.field("abort").index(i);
                if !(100..600).contains(&a.http_status) {
                    err.add(
                        &ap.field("httpStatus"),
                        "must be in inclusive range [100, 599]",
                    );
                }
                validate_percentage(&ap.field("percentage"), &a.percentage, err);
            }
            if let Some(d) = &f.delay {
                validate_percentage(
                    &hp.field("delay").index(i).field("percentage"),
                    &d.percentage,
                    err,
                );
            }
            if let Some(b) = &f.response_bandwidth {
                let bp = hp.field("responseBandwidth").index(i);
                if b.limit.is_empty() {
                    err.add(&bp.field("limit"), "must be defined");
                } else if !is_bandwidth(&b.limit) {
                    err.add(&bp.field("limit"), "must be in kbps/Mbps/Gbps units");
                }
                validate_percentage(&bp.field("percentage"), &b.percentage, err);
            }
        }
    }
}

impl MeshFaultInjectionSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let spec = Path::at("spec");
        let n = |v: Option<usize>| v.unwrap_or(0);
        let (n_from, n_rules) = (
            n(self.from.as_ref().map(Vec::len)),
            n(self.rules.as_ref().map(Vec::len)),
        );
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            inbound_policy: n_from + n_rules > 0,
            top_level: true,
        };
        validate_top(self.target_ref.as_ref(), top, &mut err);
        if n_from > 0 && n_rules > 0 {
            err.add(&spec, "field 'from' must be empty when 'rules' is defined");
        }
        if let Some(rules) = &self.rules {
            validate_rule_matches(rules, &mut err, |p, r, err| r.default.validate(p, err));
        }
        validate_sidecar_from_gateway_to(
            self.target_ref.as_ref(),
            self.from.as_ref(),
            &[Mesh, MeshSubset, MeshServiceSubset, MeshService],
            self.to.as_ref(),
            &mut err,
            |p, c, err| c.validate(p, err),
        );
        err
    }
}

#[cfg(test)]
mod tests {
    use super::is_bandwidth;

    #[test]
    fn bandwidth_units() {
        for ok in ["10kbps", "5Mbps", "1Gbps", "100 kbps", "kbps"] {
            assert!(is_bandwidth(ok), "{ok}");
        }
        for bad in ["10bps", "10", "10 Kbps", "1.5Mbps", ""] {
            assert!(!is_bandwidth(bad), "{bad}");
        }
    }
}
