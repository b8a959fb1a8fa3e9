//! The policies Kuma creates with every mesh: timeouts for sidecars and for gateways, a circuit
//! breaker and retries, named `<prefix>-<mesh>`. A Mesh's `skipCreatingInitialPolicies` lists
//! the policy types to leave out (`"*"`: all of them).

use crate::resource::{Resource, parse_yaml};

/// Durations Kuma's default policies use.
const DEFAULTS: &[(&str, &str)] = &[
    (
        "mesh-gateways-timeout-all",
        r#"type: MeshTimeout
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  from:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 5m, http: {streamIdleTimeout: 5s, requestHeadersTimeout: 500ms}}
  to:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 1h, http: {streamIdleTimeout: 5s}}
"#,
    ),
    (
        "mesh-timeout-all",
        r#"type: MeshTimeout
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  from:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 10s, idleTimeout: 2h, http: {requestTimeout: 0s, streamIdleTimeout: 1h, maxStreamDuration: 0s}}
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 5s, idleTimeout: 1h, http: {requestTimeout: 15s, streamIdleTimeout: 30m}}
"#,
    ),
    (
        "mesh-circuit-breaker-all",
        r#"type: MeshCircuitBreaker
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default:
      connectionLimits: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3}
"#,
    ),
    (
        "mesh-retry-all",
        r#"type: MeshRetry
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default:
      tcp: {maxConnectAttempt: 5}
      http: {numRetries: 5, perTryTimeout: 16s, backOff: {baseInterval: 25ms, maxInterval: 250ms}}
      grpc: {numRetries: 5, perTryTimeout: 16s, backOff: {baseInterval: 25ms, maxInterval: 250ms}}
"#,
    ),
];

/// The default policies of `mesh`, minus the types in `skip` (`"*"` skips all).
pub fn default_policies(mesh: &str, skip: &[String]) -> Vec<Resource> {
    if skip.iter().any(|s| s == "*") {
        return Vec::new();
    }
    DEFAULTS
        .iter()
        .filter_map(|(prefix, body)| {
            let text = format!("mesh: {mesh}\nname: {prefix}-{mesh}\n{body}");
            let resource = parse_yaml(&text).ok()?;
            (!skip.iter().any(|s| s == resource.rtype().name())).then_some(resource)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_skippable() {
        let all = default_policies("demo", &[]);
        let names: Vec<_> = all.iter().map(|r| r.meta.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mesh-gateways-timeout-all-demo",
                "mesh-timeout-all-demo",
                "mesh-circuit-breaker-all-demo",
                "mesh-retry-all-demo"
            ]
        );
        for r in &all {
            r.validate().expect("a default policy is valid");
        }
        let some = default_policies("demo", &["MeshTimeout".into()]);
        assert_eq!(some.len(), 2);
        assert!(default_policies("demo", &["*".into()]).is_empty());
    }
}
