//! MeshTCPRoute: weighted TCP backends.

use serde::{Deserialize, Serialize};

use super::http_route::{route_to_rules, validate_backend_refs};
use super::{BackendRef, TargetRef, TargetRefRules, kinds, validate_target_ref, validate_top};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshTCPRoute`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTcpRouteSpec {
    /// Proxies whose outbound traffic is routed.
    pub target_ref: Option<TargetRef>,
    /// Routes per destination.
    pub to: Option<Vec<TcpRouteTo>>,
}

/// Routes towards one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteTo {
    /// The destination.
    pub target_ref: TargetRef,
    /// The rules (Kuma uses the first).
    #[serde(default)]
    pub rules: Vec<TcpRouteRule>,
}

/// One TCP rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteRule {
    /// Its action.
    #[serde(default)]
    pub default: TcpRouteConf,
}

/// The action of a TCP rule.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteConf {
    /// Weighted backends.
    pub backend_refs: Option<Vec<BackendRef>>,
}

impl MeshTcpRouteSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            ..Default::default()
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        for (i, to) in self.to.iter().flatten().enumerate() {
            let p = Path::at("spec").field("to").index(i);
            validate_target_ref(
                &p.field("targetRef"),
                &to.target_ref,
                route_to_rules(top_kind),
                &mut err,
            );
            for (ri, r) in to.rules.iter().enumerate() {
                let bp = p
                    .field("rules")
                    .index(ri)
                    .field("default")
                    .field("backendRefs");
                let backends = r.default.backend_refs.as_deref().unwrap_or_default();
                if backends.is_empty() {
                    err.add(&bp, "must be defined");
                }
                validate_backend_refs(&bp, backends, &mut err);
            }
        }
        err
    }
}
