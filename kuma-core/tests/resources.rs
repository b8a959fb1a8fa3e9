//! Universal YAML/JSON: documentation-shaped examples load, validate and round-trip; malformed
//! input yields field-path errors and never panics.

use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::resource::{
    MAX_DOCUMENT_BYTES, MAX_NESTING, ParseError, Resource, ResourceType, parse_documents,
    parse_json, parse_yaml,
};
use serde_json::Value;

const MESH_EXAMPLES: &str = include_str!("examples/mesh.yaml");
const POLICY_EXAMPLES: &str = include_str!("examples/policies.yaml");

fn all_examples() -> Vec<Resource> {
    let mut v = parse_documents(MESH_EXAMPLES).expect("mesh examples parse");
    v.extend(parse_documents(POLICY_EXAMPLES).expect("policy examples parse"));
    v
}

#[test]
fn examples_load_and_validate() {
    let all = all_examples();
    assert_eq!(all.len(), 11 + 15);
    for r in &all {
        r.validate().unwrap_or_else(|e| panic!("{}: {e}", r.key()));
    }
    let typed_policies: Vec<_> = all
        .iter()
        .filter(|r| r.rtype().is_policy())
        .map(|r| r.rtype())
        .collect();
    assert!(typed_policies.contains(&ResourceType::MeshLoadBalancingStrategy));
    let dp = all[1].spec_as::<DataplaneSpec>().expect("dataplane");
    assert_eq!(dp.inbounds()[0].tags["kuma.io/service"], "backend");
}

#[test]
fn examples_round_trip_through_yaml_and_json() {
    for r in all_examples() {
        let yaml = r.to_yaml();
        let back = parse_yaml(&yaml).unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", r.key()));
        assert_eq!(back, r, "yaml round trip of {}", r.key());
        let json = r.to_json();
        assert_eq!(
            parse_json(&json).expect("json"),
            r,
            "json round trip of {}",
            r.key()
        );
    }
}

#[test]
fn examples_serialize_to_what_was_written() {
    // Every key the user wrote comes back with the same value (durations keep their spelling).
    for (text, docs) in [
        (MESH_EXAMPLES, parse_documents(MESH_EXAMPLES)),
        (POLICY_EXAMPLES, parse_documents(POLICY_EXAMPLES)),
    ] {
        let docs = docs.expect("parse");
        let written: Vec<Value> = text
            .split("\n---\n")
            .map(|d| serde_norway::from_str(d).expect("yaml"))
            .collect();
        for (r, w) in docs.iter().zip(written) {
            assert_subset(&w, &r.to_value(), &r.key().to_string());
        }
    }
}

fn assert_subset(written: &Value, out: &Value, at: &str) {
    match (written, out) {
        (Value::Object(w), Value::Object(o)) => {
            for (k, v) in w {
                let got = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} lost on output"));
                assert_subset(v, got, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(o)) => {
            assert_eq!(w.len(), o.len(), "{at}");
            for (i, (a, b)) in w.iter().zip(o).enumerate() {
                assert_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{at}"),
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn output_puts_metadata_first_in_kuma_order() {
    let r = parse_yaml("name: x\nmesh: default\ntype: MeshTimeout\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n").expect("parse");
    let keys: Vec<_> = r
        .to_value()
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["type", "mesh", "name", "spec"]);
    let mesh = parse_yaml("type: Mesh\nname: m\n").expect("mesh");
    assert!(
        mesh.to_value().get("mesh").is_none(),
        "global-scoped types have no mesh field"
    );
}

/// The field paths of a parse or validation failure.
fn failure_fields(text: &str) -> Vec<String> {
    match parse_yaml(text) {
        Err(ParseError::Invalid(e)) => e.violations().iter().map(|v| v.field.clone()).collect(),
        Err(other) => panic!("expected a field error, got {other}"),
        Ok(r) => match r.validate() {
            Err(e) => e.violations().iter().map(|v| v.field.clone()).collect(),
            Ok(()) => panic!("accepted: {text}"),
        },
    }
}

const DP: &str = "type: Dataplane\nmesh: default\nname: dp-1\nnetworking:\n  address: 10.0.0.1\n";

#[test]
fn decode_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "inbound:\n  - port: abc\n    tags: {kuma.io/service: a}\n",
            "networking.inbound[0].port",
        ),
        ("inbund: []\n", "networking.inbund"),
        (
            "gateway: {type: FOO, tags: {kuma.io/service: g}}\n",
            "networking.gateway.type",
        ),
        (
            "inbound:\n  - tags: {kuma.io/service: a}\n    port: 1\n    health: {ready: maybe}\n",
            "networking.inbound[0].health.ready",
        ),
        (
            "inbound:\n  - port: 1\n    tags: {kuma.io/service: [a]}\n",
            r#"networking.inbound[0].tags["kuma.io/service"]"#,
        ),
    ];
    for (tail, field) in cases {
        let text = format!(
            "{DP}{}",
            tail.lines().map(|l| format!("  {l}\n")).collect::<String>()
        );
        assert_eq!(failure_fields(&text), [*field], "{text}");
    }
    assert_eq!(failure_fields("mesh: default\nname: x\n"), ["type"]);
    assert_eq!(failure_fields("type: Dataplan\nname: x\n"), ["type"]);
    assert_eq!(failure_fields("type: Mesh\nname: 5\n"), ["name"]);
    assert_eq!(
        failure_fields("type: MeshTimeout\nmesh: default\nname: t\nspecs: {}\n"),
        ["specs"]
    );
    assert_eq!(
        failure_fields(
            "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  to:\n  - default: {idleTimeout: 1s}\n"
        ),
        ["spec.to[0].targetRef"]
    );
    assert_eq!(
        failure_fields(
            "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  to:\n  - targetRef: {kind: Planet}\n"
        ),
        ["spec.to[0].targetRef.kind"]
    );
    assert_eq!(
        failure_fields(
            "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: forever}\n"
        ),
        ["spec.to[0].default.idleTimeout"]
    );
    assert_eq!(
        failure_fields("type: Mesh\nname: m\nlabels: {a: [1]}\n"),
        [r#"labels.a"#]
    );
}

#[test]
fn validation_names_the_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            "inbound:\n  - port: 8080\n    tags: {version: v1}\n",
            &[r#"networking.inbound[0].tags["kuma.io/service"]"#],
        ),
        (
            "inbound:\n  - port: 8080\n    tags: {kuma.io/service: a, kuma.io/protocol: smtp}\n",
            &[r#"networking.inbound[0].tags["kuma.io/protocol"]"#],
        ),
        (
            "inbound:\n  - port: 0\n    tags: {kuma.io/service: a}\n",
            &["networking.inbound[0].port"],
        ),
        (
            "inbound:\n  - port: 9901\n    tags: {kuma.io/service: a}\n  admin: {port: 9901}\n",
            &["networking.admin.port"],
        ),
        (
            "gateway: {tags: {kuma.io/service: g}}\n  inbound:\n  - port: 1\n    tags: {kuma.io/service: a}\n",
            &["networking.inbound"],
        ),
        ("outbound:\n  - port: 1\n", &["networking.outbound[0].tags"]),
    ];
    for (tail, fields) in cases {
        let text = format!("{DP}  {tail}");
        let got = failure_fields(&text);
        for f in *fields {
            assert!(
                got.iter().any(|g| g == f),
                "{text}\nexpected {f} in {got:?}"
            );
        }
    }
    let wildcard = DP.replace("10.0.0.1", "0.0.0.0")
        + "  inbound:\n  - port: 1\n    tags: {kuma.io/service: a}\n";
    assert_eq!(failure_fields(&wildcard), ["networking.address"]);
    assert_eq!(failure_fields("type: Mesh\nname: Bad_Name\n"), ["name"]);
    assert_eq!(
        failure_fields(&"type: Mesh\nname: NAME\n".replace("NAME", &"a".repeat(254))),
        ["name"]
    );
    assert_eq!(
        failure_fields(
            "type: Dataplane\nname: dp\nnetworking:\n  address: 1.1.1.1\n  inbound:\n  - port: 1\n    tags: {kuma.io/service: a}\n"
        ),
        ["mesh"]
    );
    assert_eq!(
        failure_fields("type: Mesh\nname: m\nlabels: {\"bad key!\": v}\n"),
        [r#"labels["bad key!"]"#]
    );
}

#[test]
fn hostile_input_is_refused_without_panicking() {
    let huge = format!(
        "type: Mesh\nname: m\nlabels:\n  a: \"{}\"\n",
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    assert!(matches!(
        parse_yaml(&huge),
        Err(ParseError::TooLarge { .. })
    ));
    assert!(matches!(
        parse_json(&huge),
        Err(ParseError::TooLarge { .. })
    ));
    assert!(matches!(
        parse_documents(&huge),
        Err(ParseError::TooLarge { .. })
    ));

    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(parse_json(&deep_json), Err(ParseError::Syntax(_))));
    let deep_yaml = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_yaml(&deep_yaml).is_err());

    // Exponential alias expansion ("billion laughs").
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = if i == 1 {
                String::new()
            } else {
                (i - 1).to_string()
            }
        ));
    }
    assert!(parse_yaml(&bomb).is_err());

    for junk in [
        "",
        "null",
        "42",
        "[]",
        "\"type\"",
        "{",
        "type: [Mesh]",
        "\u{0}\u{1}",
        "---\n---\n",
        "type: Mesh\nname: m\n---\n- 1\n",
    ] {
        let _ = parse_yaml(junk);
        let _ = parse_json(junk);
        let _ = parse_documents(junk);
    }
}

#[test]
fn mutated_documents_never_panic() {
    // Deterministic mutation fuzzing over every example: replace, drop or duplicate bytes.
    let corpus: Vec<&str> = MESH_EXAMPLES
        .split("\n---\n")
        .chain(POLICY_EXAMPLES.split("\n---\n"))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b" :-[]{}\"'\n0123456789abcxyz*&!%#,.\t";
    for _ in 0..3000 {
        let doc = corpus[(next() % corpus.len() as u64) as usize];
        let mut bytes = doc.as_bytes().to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, bytes[at]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(r) = parse_yaml(&text) {
            let _ = r.validate();
            let _ = r.to_yaml();
        }
    }
}

fn policy(rtype: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("type: {rtype}\nmesh: default\nname: p\nspec:\n{spec}")
}

#[test]
fn policy_validation_names_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "MeshTrafficPermission",
            "from:\n- targetRef: {kind: Mesh}\n  default: {}\n",
            "spec.from[0].default.action",
        ),
        (
            "MeshTrafficPermission",
            "targetRef: {kind: MeshHTTPRoute, name: r}\nfrom:\n- targetRef: {kind: Mesh}\n  default: {action: Allow}\n",
            "spec.targetRef.kind",
        ),
        ("MeshTimeout", "targetRef: {kind: Mesh}\n", "spec"),
        (
            "MeshTimeout",
            "to:\n- targetRef: {kind: MeshService}\n  default: {idleTimeout: 1s}\n",
            "spec.to[0].targetRef",
        ),
        (
            "MeshRetry",
            "to:\n- targetRef: {kind: Mesh}\n  default:\n    http: {retryOn: [\"6xx\"]}\n",
            "spec.to[0].default.http.retryOn[0]",
        ),
        (
            "MeshHealthCheck",
            "to:\n- targetRef: {kind: Mesh}\n  default: {interval: 0s, timeout: 1s, healthyThreshold: 1, unhealthyThreshold: 1}\n",
            "spec.to[0].default.interval",
        ),
        (
            "MeshCircuitBreaker",
            "to:\n- targetRef: {kind: Mesh}\n  default: {connectionLimits: {maxConnections: 0}}\n",
            "spec.to[0].default.connectionLimits.maxConnections",
        ),
        (
            "MeshCircuitBreaker",
            "to:\n- targetRef: {kind: Mesh}\n  default: {outlierDetection: {maxEjectionPercent: 101, detectors: {totalFailures: {}}}}\n",
            "spec.to[0].default.outlierDetection.maxEjectionPercent",
        ),
        (
            "MeshLoadBalancingStrategy",
            "to:\n- targetRef: {kind: Mesh}\n  default:\n    hashPolicies: [{type: Header}]\n",
            "spec.to[0].default.hashPolicies[0].header",
        ),
        (
            "MeshHTTPRoute",
            "to:\n- targetRef: {kind: MeshService, name: b}\n  rules:\n  - matches: [{path: {type: Exact, value: v1}}]\n    default: {}\n",
            "spec.to[0].rules[0].matches[0].path.value",
        ),
        (
            "MeshHTTPRoute",
            "to:\n- targetRef: {kind: Mesh}\n  rules: []\n",
            "spec.to[0].targetRef.kind",
        ),
        (
            "MeshTCPRoute",
            "to:\n- targetRef: {kind: MeshService, name: b}\n  rules:\n  - default: {}\n",
            "spec.to[0].rules[0].default.backendRefs",
        ),
        (
            "MeshRateLimit",
            "targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\nfrom:\n- targetRef: {kind: Mesh}\n  default: {local: {http: {requestRate: {num: 1, interval: 10ms}}}}\n",
            "spec.from[0].default.local.http.requestRate.interval",
        ),
        (
            "MeshFaultInjection",
            "targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\nfrom:\n- targetRef: {kind: Mesh}\n  default: {http: [{abort: {httpStatus: 700, percentage: 10}}]}\n",
            "spec.from[0].default.http.abort[0].httpStatus",
        ),
        (
            "MeshFaultInjection",
            "from:\n- targetRef: {kind: Mesh}\n  default: {http: []}\n",
            "spec.from",
        ),
        (
            "MeshAccessLog",
            "to:\n- targetRef: {kind: Mesh}\n  default: {backends: [{type: File}]}\n",
            "spec.to[0].default.backends[0].file",
        ),
        (
            "MeshTrace",
            "targetRef: {kind: Galaxy}\n",
            "spec.targetRef.kind",
        ),
    ];
    for (rtype, spec, field) in cases {
        let text = policy(rtype, spec);
        let got = failure_fields(&text);
        assert!(
            got.iter().any(|g| g == field),
            "{text}\nexpected {field} in {got:?}"
        );
    }
}

/// A proxy's Prometheus endpoint: only with a mesh backend enabled; the Dataplane's own
/// settings override the mesh's, tags merge.
#[test]
fn prometheus_endpoint_merges_the_dataplanes_settings_over_the_mesh() {
    use kuma_core::model::mesh::{MeshSpec, MetricsBackend};
    let own: MetricsBackend = serde_json::from_value(serde_json::json!({
        "type": "prometheus", "conf": {"port": 1234, "tags": {"team": "a"}}
    }))
    .unwrap();
    assert_eq!(
        MeshSpec::default().prometheus_endpoint(Some(&own)).unwrap(),
        None
    );
    let mesh: MeshSpec = serde_json::from_value(serde_json::json!({"metrics": {
        "enabledBackend": "prom",
        "backends": [{"name": "prom", "type": "prometheus",
                      "conf": {"path": "/stats", "tags": {"env": "prod"},
                               "tls": {"mode": "providedTLS"}}}]
    }}))
    .unwrap();
    let mesh_only = mesh.prometheus_endpoint(None).unwrap().unwrap();
    assert_eq!(
        (mesh_only.port(), mesh_only.path(), mesh_only.scheme()),
        (5670, "/stats", "https")
    );
    let merged = mesh.prometheus_endpoint(Some(&own)).unwrap().unwrap();
    assert_eq!(merged.backend, "prom");
    assert_eq!((merged.port(), merged.path()), (1234, "/stats"));
    let tags: Vec<(&str, &str)> = merged
        .conf
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, [("env", "prod"), ("team", "a")]);
}

#[test]
fn deep_nesting_is_refused_before_the_yaml_parser_sees_it() {
    // 240 KB of nested flow maps held the YAML parser for tens of seconds (its time grows
    // with the square of the depth); the scan refuses them in one pass.
    for body in ["{a: ".repeat(60_000), "[".repeat(240_000)] {
        match parse_yaml(&body) {
            Err(ParseError::TooDeep { limit, line }) => {
                assert_eq!((limit, line), (MAX_NESTING, 1));
            }
            other => panic!("expected TooDeep, got {other:?}"),
        }
        assert!(matches!(
            parse_documents(&body),
            Err(ParseError::TooDeep { .. })
        ));
    }
    // JSON goes to the JSON parser, which stops at its own depth limit.
    let json = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let err = parse_yaml(&json).expect_err("too deep");
    assert!(err.to_string().contains("128"), "{err}");
    // Within the limit, and with brackets in strings, documents parse as before.
    let ok = parse_yaml(
        "type: Mesh\nname: m\nlabels: {a: \"[[[[\", b: \"]]]]\"}\nmtls: {backends: []}\n",
    )
    .expect("a mesh");
    assert_eq!(ok.meta.labels["a"], "[[[[");
    // Flow-style YAML that starts like JSON is still YAML.
    let flow = parse_yaml("{type: Mesh, name: flow}").expect("flow YAML");
    assert_eq!(flow.meta.name, "flow");
    let json = parse_yaml(r#"{"type": "Mesh", "name": "json"}"#).expect("JSON");
    assert_eq!(json.meta.name, "json");
}
