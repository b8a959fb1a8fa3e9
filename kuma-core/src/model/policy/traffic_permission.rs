//! MeshTrafficPermission: which sources may reach a proxy's inbounds.

use serde::{Deserialize, Serialize};

use super::{
    Match, TargetRef, TargetRefKind::*, TargetRefRules, TargetedConf, kinds, require_sections,
    validate_entries, validate_matches, validate_top,
};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshTrafficPermission`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTrafficPermissionSpec {
    /// Proxies whose inbounds are protected (default: the whole mesh).
    pub target_ref: Option<TargetRef>,
    /// Permissions per source.
    pub from: Option<Vec<TargetedConf<TrafficPermissionConf>>>,
    /// Match-based permissions.
    pub rules: Option<Vec<TrafficPermissionRule>>,
}

/// What happens to traffic from a source.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPermissionConf {
    /// `Allow`, `Deny` or `AllowWithShadowDeny`.
    pub action: Option<Action>,
}

/// Permission action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Let traffic through.
    Allow,
    /// Reject traffic.
    Deny,
    /// Let traffic through but log what Deny would have rejected.
    AllowWithShadowDeny,
}

/// A match-based permission rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPermissionRule {
    /// The matches per action.
    pub default: TrafficPermissionRuleConf,
}

/// Matches per action.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPermissionRuleConf {
    /// Denied sources.
    pub deny: Option<Vec<Match>>,
    /// Allowed sources, with denials only logged.
    pub allow_with_shadow_deny: Option<Vec<Match>>,
    /// Allowed sources.
    pub allow: Option<Vec<Match>>,
}

impl MeshTrafficPermissionSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_SIDECAR,
            inbound_policy: true,
            ..Default::default()
        };
        validate_top(self.target_ref.as_ref(), top, &mut err);
        require_sections(
            &[
                ("from", self.from.is_some()),
                ("rules", self.rules.is_some()),
            ],
            &mut err,
        );
        if let Some(from) = &self.from {
            let rules = TargetRefRules {
                kinds: &[Mesh, MeshSubset, MeshService, MeshServiceSubset],
                ..Default::default()
            };
            validate_entries("from", from, rules, &mut err, |p, e, err| {
                if e.default.action.is_none() {
                    err.add(&p.field("action"), "must be defined");
                }
            });
        }
        for (i, r) in self.rules.iter().flatten().enumerate() {
            let p = Path::at("spec").field("rules").index(i).field("default");
            let d = &r.default;
            if d.deny.is_none() && d.allow.is_none() && d.allow_with_shadow_deny.is_none() {
                err.add(
                    &p,
                    "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined",
                );
            }
            for (name, m) in [
                ("deny", &d.deny),
                ("allowWithShadowDeny", &d.allow_with_shadow_deny),
                ("allow", &d.allow),
            ] {
                if let Some(m) = m {
                    validate_matches(&p.field(name), m, &mut err);
                }
            }
        }
        err
    }
}
