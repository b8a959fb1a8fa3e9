//! MeshTimeout: connection, idle and HTTP timeouts.

use serde::{Deserialize, Serialize};

use super::{
    MatchedRule, TargetRef, TargetRefKind::*, TargetRefRules, TargetedConf, kinds,
    positive_duration, require_sections, validate_entries, validate_matches, validate_top,
};
use crate::duration::Duration;
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshTimeout`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTimeoutSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Timeouts per destination.
    pub to: Option<Vec<TargetedConf<TimeoutConf>>>,
    /// Timeouts per source.
    pub from: Option<Vec<TargetedConf<TimeoutConf>>>,
    /// Match-based inbound timeouts.
    pub rules: Option<Vec<MatchedRule<TimeoutConf>>>,
}

/// Timeout settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConf {
    /// Time to establish a connection.
    pub connection_timeout: Option<Duration>,
    /// Time a connection may be idle.
    pub idle_timeout: Option<Duration>,
    /// HTTP timeouts.
    pub http: Option<HttpTimeouts>,
}

/// HTTP timeouts.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeouts {
    /// Time for a whole request/response.
    pub request_timeout: Option<Duration>,
    /// Time a stream may be idle.
    pub stream_idle_timeout: Option<Duration>,
    /// Longest stream.
    pub max_stream_duration: Option<Duration>,
    /// Longest connection.
    pub max_connection_duration: Option<Duration>,
    /// Time to receive request headers.
    pub request_headers_timeout: Option<Duration>,
}

impl TimeoutConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        let empty_http = self.http.as_ref().is_none_or(|h| {
            h.request_timeout.is_none()
                && h.stream_idle_timeout.is_none()
                && h.max_stream_duration.is_none()
                && h.max_connection_duration.is_none()
                && h.request_headers_timeout.is_none()
        });
        if self.connection_timeout.is_none() && self.idle_timeout.is_none() && empty_http {
            err.add(p, "at least one timeout should be defined");
        }
        positive_duration(
            &p.field("connectionTimeout"),
            self.connection_timeout.as_ref(),
            err,
        );
    }
}

impl MeshTimeoutSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let inbound = self.from.is_some() || self.rules.is_some();
        let top = TargetRefRules {
            kinds: kinds::TOP_ALL,
            gateway_listener_tags: true,
            inbound_policy: inbound,
            top_level: true,
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        require_sections(
            &[
                ("from", self.from.is_some()),
                ("to", self.to.is_some()),
                ("rules", self.rules.is_some()),
            ],
            &mut err,
        );
        let gateway_or_route = matches!(top_kind, MeshGateway | MeshHTTPRoute);
        if let Some(from) = &self.from {
            if gateway_or_route {
                err.add(
                    &Path::at("spec").field("from"),
                    format!("must not be defined with kind {}", top_kind.as_str()),
                );
            }
            let rules = TargetRefRules {
                kinds: kinds::FROM_MESH,
                ..Default::default()
            };
            validate_entries("from", from, rules, &mut err, |p, e, err| {
                e.default.validate(p, err)
            });
        }
        if let Some(to) = &self.to {
            let kinds = if gateway_or_route {
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
            let rules = TargetRefRules {
                kinds,
                ..Default::default()
            };
            validate_entries("to", to, rules, &mut err, |p, e, err| {
                e.default.validate(p, err)
            });
        }
        for (i, r) in self.rules.iter().flatten().enumerate() {
            let p = Path::at("spec").field("rules").index(i);
            if let Some(m) = &r.matches {
                validate_matches(&p.field("matches"), m, &mut err);
            }
            r.default.validate(&p.field("default"), &mut err);
        }
        err
    }
}
