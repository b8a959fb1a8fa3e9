use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use kuma_store::config::StoreType;

use super::*;

fn leaves(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                leaves(
                    v,
                    &if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    },
                    out,
                );
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

/// `key: value # ENV: NAME` lines of the defaults file, as (dotted key, variable).
fn documented_env_names() -> BTreeMap<String, String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = BTreeMap::new();
    for line in DEFAULTS_YAML.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let key = trimmed.split(':').next().unwrap_or_default().to_string();
        stack.retain(|(i, _)| *i < indent);
        let path: Vec<_> = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key.as_str()])
            .collect();
        if let Some((_, env)) = trimmed.split_once("# ENV: ") {
            out.insert(path.join("."), env.trim().to_string());
        } else {
            stack.push((indent, key));
        }
    }
    out
}

#[test]
fn defaults_file_equals_code_defaults() {
    let from_file = Config::from_yaml(DEFAULTS_YAML).expect("defaults file parses");
    assert_eq!(from_file, Config::default());
    // Same keys, not just same values: the file lists every key the code knows.
    let file_value: Value = serde_norway::from_str(DEFAULTS_YAML).expect("yaml");
    let (mut in_file, mut in_code) = (BTreeSet::new(), BTreeSet::new());
    leaves(&file_value, "", &mut in_file);
    leaves(
        &serde_json::to_value(Config::default()).expect("serialize"),
        "",
        &mut in_code,
    );
    assert_eq!(in_file, in_code);
    Config::default().validate().expect("defaults are valid");
}

#[test]
fn every_key_documents_its_env_variable() {
    let documented = documented_env_names();
    let mut in_code = BTreeSet::new();
    leaves(
        &serde_json::to_value(Config::default()).expect("serialize"),
        "",
        &mut in_code,
    );
    assert_eq!(
        documented.keys().cloned().collect::<BTreeSet<_>>(),
        in_code,
        "every leaf has an ENV comment"
    );
    for (key, env) in documented {
        assert_eq!(env_name(&key), env, "variable of {key}");
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn environment_overrides_file() {
    let dir = std::env::temp_dir().join(format!("kuma-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("cp.yaml");
    std::fs::write(
        &file,
        "mode: zone\napiServer:\n  http:\n    port: 7000\nmultizone:\n  zone:\n    name: east\n",
    )
    .expect("write");
    let cfg = Config::load(
        Some(&file),
        env(&[
            ("KUMA_API_SERVER_HTTP_PORT", "7001"),
            ("KUMA_STORE_TYPE", "postgres"),
            ("KUMA_STORE_POSTGRES_TLS_MODE", "verifyFull"),
            ("KUMA_STORE_POSTGRES_TLS_CA_PATH", "/etc/ca.pem"),
            ("KUMA_STORE_SQLITE_PATH", "/var/lib/kuma.db"),
            ("KUMA_API_SERVER_READ_ONLY", "true"),
            ("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "0s"),
        ]),
    )
    .expect("load");
    assert_eq!(cfg.mode, Mode::Zone);
    assert_eq!(cfg.multizone.zone.name, "east");
    assert_eq!(cfg.api_server.http.port, 7001);
    assert_eq!(cfg.store.kind, StoreType::Postgres);
    assert_eq!(
        cfg.store.postgres.tls.mode,
        kuma_store::config::PostgresTlsMode::VerifyFull
    );
    assert_eq!(cfg.store.postgres.tls.ca_path, "/etc/ca.pem");
    assert_eq!(cfg.store.sqlite.path, "/var/lib/kuma.db");
    assert!(cfg.api_server.read_only);
    assert!(
        cfg.xds_server
            .dataplane_deregistration_delay
            .get()
            .is_zero()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_names_the_key_or_variable() {
    let e = Config::from_yaml("apiServer:\n  htp:\n    port: 1\n").expect_err("unknown key");
    assert!(e.to_string().contains("apiServer.htp"), "{e}");
    let e = Config::from_yaml("dpServer:\n  port: seventy\n").expect_err("wrong type");
    assert!(e.to_string().contains("dpServer.port"), "{e}");
    let e = Config::from_yaml("mode: galactic\n").expect_err("bad enum");
    assert!(e.to_string().contains("mode"), "{e}");

    let e = Config::load(None, env(&[("KUMA_DP_SERVER_PORT", "x")])).expect_err("bad env");
    assert!(e.to_string().contains("KUMA_DP_SERVER_PORT"), "{e}");
    let e = Config::load(None, env(&[("KUMA_DP_SERVER_PORT", "70000")])).expect_err("out of range");
    assert!(e.to_string().contains("KUMA_DP_SERVER_PORT"), "{e}");
    let e = Config::load(None, env(&[("KUMA_XDS_SERVER_NACK_BACKOFF", "soon")]))
        .expect_err("bad duration");
    assert!(
        e.to_string().contains("KUMA_XDS_SERVER_NACK_BACKOFF"),
        "{e}"
    );
}

#[test]
fn validate_catches_cross_key_mistakes() {
    let mut c = Config::default();
    c.api_server.http.port = 5678;
    c.dns_server.cidr = "nope".into();
    c.environment = Environment::Kubernetes;
    let e = c.validate().expect_err("invalid");
    let fields: Vec<_> = e.violations().iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"environment"), "{e}");
    assert!(fields.contains(&"dnsServer.CIDR"), "{e}");
    assert!(e.to_string().contains("port 5678 is already used"), "{e}");

    let mut c = Config::default();
    c.multizone.zone.global_address = "grpcs://global:5685".into();
    assert!(c.validate().is_err(), "globalAddress outside zone mode");
    c.mode = Mode::Zone;
    c.validate().expect("zone mode with a global address");
    // Global serves KDS but not the dp-server port.
    let mut g = Config {
        mode: Mode::Global,
        ..Config::default()
    };
    g.dp_server.port = 5681;
    g.validate()
        .expect("dp-server port is unused in global mode");
    g.api_server.http.port = 5685;
    let e = g.validate().expect_err("kds port clash in global mode");
    assert!(
        e.to_string().contains("multizone.global.kds.grpcPort"),
        "{e}"
    );
}

#[test]
fn split_layout_adds_its_ports_and_drops_the_https_api() {
    let mut c = Config {
        port_layout: PortLayout::Split,
        ..Config::default()
    };
    // The bootstrap server takes 5682, the HTTPS API's port, which is then not served.
    c.validate().expect("the split defaults are valid");
    assert!(!c.serves_https_api());
    let ports: Vec<_> = c.served_ports();
    for (key, port) in [
        ("sdsServer.grpcPort", 5677),
        ("adminServer.local.port", 5679),
        ("bootstrapServer.port", 5682),
        ("guiServer.port", 5683),
    ] {
        assert!(ports.contains(&(key, port)), "{key} in {ports:?}");
    }
    assert!(!ports.iter().any(|(k, _)| *k == "apiServer.https.port"));
    c.gui_server.port = 5681;
    let e = c.validate().expect_err("GUI on the API's port");
    assert!(e.to_string().contains("port 5681 is already used"), "{e}");
    // The default layout serves none of them.
    let d = Config::default();
    assert!(d.serves_https_api());
    assert!(
        !d.served_ports()
            .iter()
            .any(|(k, _)| k.starts_with("sdsServer"))
    );
    let loaded = Config::load(None, |k| (k == "KUMA_PORT_LAYOUT").then(|| "split".into())).unwrap();
    assert_eq!(loaded.port_layout, PortLayout::Split);
    assert!(
        Config::load(None, |k| (k == "KUMA_PORT_LAYOUT")
            .then(|| "sideways".into()))
        .is_err()
    );
}

#[test]
fn password_is_not_debug_printed() {
    let c = Config::default();
    assert!(!format!("{c:?}").contains("password: \"kuma\""));
}

#[test]
fn access_lists_and_connection_limits_load_from_kuma_variables() {
    let cfg = Config::load(
        None,
        env(&[
            (
                "KUMA_ACCESS_STATIC_GET_CONFIG_DUMP_GROUPS",
                "mesh-system:admin, ops",
            ),
            ("KUMA_ACCESS_STATIC_GENERATE_DP_TOKEN_USERS", "ci-bot"),
            ("KUMA_API_SERVER_READ_HEADER_TIMEOUT", "3s"),
            ("KUMA_DP_SERVER_READ_HEADER_TIMEOUT", "7s"),
            ("KUMA_CONNECTIONS_MAX_PER_CLIENT", "64"),
        ]),
    )
    .expect("valid");
    let access = &cfg.access.static_access;
    assert_eq!(
        access.view_config_dump.groups,
        vec!["mesh-system:admin".to_string(), "ops".to_string()]
    );
    assert!(access.view_config_dump.allows("x", &["ops".to_string()]));
    assert!(
        !access
            .view_config_dump
            .allows("x", &["mesh-system:unauthenticated".to_string()])
    );
    assert!(access.generate_dp_token.allows("ci-bot", &[]));
    assert_eq!(cfg.api_server.read_header_timeout.get().as_secs(), 3);
    assert_eq!(cfg.dp_server.read_header_timeout.get().as_secs(), 7);
    assert_eq!(cfg.connections.max_per_client, 64);

    let err = Config::load(
        None,
        env(&[
            ("KUMA_CONNECTIONS_MAX_PER_CLIENT", "0"),
            ("KUMA_ACCESS_TYPE", "rbac"),
        ]),
    )
    .expect_err("invalid")
    .to_string();
    assert!(err.contains("connections.maxPerClient"), "{err}");
    assert!(err.contains("access.type"), "{err}");
}

#[test]
fn experimental_auto_reachable_services_is_kumas_key_and_variable() {
    assert!(!Config::default().experimental.auto_reachable_services);
    let cfg = Config::from_yaml("experimental:\n  autoReachableServices: true\n").expect("yaml");
    assert!(cfg.experimental.auto_reachable_services);
    let cfg = Config::load(
        None,
        env(&[("KUMA_EXPERIMENTAL_AUTO_REACHABLE_SERVICES", "true")]),
    )
    .expect("env");
    assert!(cfg.experimental.auto_reachable_services);
    // Kuma's other experimental switches are not implemented: named, they are refused.
    let err = Config::from_yaml("experimental:\n  deltaXds: true\n").expect_err("unknown key");
    assert!(err.to_string().contains("deltaXds"), "{err}");
}
