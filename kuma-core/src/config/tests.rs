use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::duration::Duration;

/// A composed configuration of two sections, as an assembly declares one.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Composed {
    api_server: Section,
    xds_server: Timers,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Section {
    port: u16,
    enabled: bool,
    hosts: Vec<String>,
}

impl Default for Section {
    fn default() -> Self {
        Section {
            port: 5681,
            enabled: true,
            hosts: vec![],
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Timers {
    dataplane_deregistration_delay: Duration,
    nack_backoff: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            dataplane_deregistration_delay: Duration::literal("10s"),
            nack_backoff: Duration::literal("5s"),
        }
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
fn env_names_follow_kuma() {
    assert_eq!(env_name("apiServer.http.port"), "KUMA_API_SERVER_HTTP_PORT");
    assert_eq!(
        env_name("store.postgres.dbName"),
        "KUMA_STORE_POSTGRES_DB_NAME"
    );
    assert_eq!(env_name("dnsServer.CIDR"), "KUMA_DNS_SERVER_CIDR");
    assert_eq!(
        env_name("multizone.global.kds.grpcPort"),
        "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT"
    );
    assert_eq!(
        env_name("xdsServer.dataplaneDeregistrationDelay"),
        "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY"
    );
    // Kuma's generated defaults file says KUMA_DNS_SERVICE_SERVICE_VIP_PORT; Kuma reads this.
    assert_eq!(
        env_name("dnsServer.serviceVipPort"),
        "KUMA_DNS_SERVER_SERVICE_VIP_PORT"
    );
}

#[test]
fn sections_load_from_file_then_variables() {
    let dir = std::env::temp_dir().join(format!("kuma-core-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("cp.yaml");
    std::fs::write(&file, "apiServer:\n  port: 7000\n  enabled: false\n").expect("write");
    let cfg: Composed = load(
        Some(&file),
        env(&[
            ("KUMA_API_SERVER_PORT", "7001"),
            ("KUMA_API_SERVER_HOSTS", "a, b"),
            ("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "0s"),
        ]),
    )
    .expect("load");
    assert_eq!(cfg.api_server.port, 7001, "the variable wins over the file");
    assert!(!cfg.api_server.enabled, "the file wins over the default");
    assert_eq!(cfg.api_server.hosts, ["a", "b"]);
    assert!(
        cfg.xds_server
            .dataplane_deregistration_delay
            .get()
            .is_zero()
    );
    assert_eq!(cfg.xds_server.nack_backoff.get().as_secs(), 5);
    std::fs::remove_dir_all(&dir).ok();

    let empty: Composed = from_yaml("").expect("an empty file is the defaults");
    assert_eq!(empty, Composed::default());
    let missing =
        load::<Composed>(Some(&dir.join("absent.yaml")), |_| None).expect_err("missing file");
    assert!(missing.to_string().contains("absent.yaml"), "{missing}");
    assert!(
        std::error::Error::source(&missing).is_some(),
        "the OS error is the source"
    );
}

#[test]
fn bad_input_names_the_key_or_variable() {
    let e = from_yaml::<Composed>("apiServer:\n  prot: 1\n").expect_err("unknown key");
    assert!(e.to_string().contains("apiServer.prot"), "{e}");
    let e = from_yaml::<Composed>("apiServer:\n  port: seventy\n").expect_err("wrong type");
    assert!(e.to_string().contains("apiServer.port"), "{e}");
    let e = load::<Composed>(None, env(&[("KUMA_API_SERVER_PORT", "x")])).expect_err("bad env");
    assert!(e.to_string().contains("KUMA_API_SERVER_PORT"), "{e}");
    let e = load::<Composed>(None, env(&[("KUMA_API_SERVER_PORT", "70000")]))
        .expect_err("out of range");
    assert!(e.to_string().contains("KUMA_API_SERVER_PORT"), "{e}");
    let e = load::<Composed>(None, env(&[("KUMA_API_SERVER_ENABLED", "yes")]))
        .expect_err("not a boolean");
    assert!(e.to_string().contains("KUMA_API_SERVER_ENABLED"), "{e}");
    let e = load::<Composed>(None, env(&[("KUMA_XDS_SERVER_NACK_BACKOFF", "soon")]))
        .expect_err("bad duration");
    assert!(
        e.to_string().contains("KUMA_XDS_SERVER_NACK_BACKOFF"),
        "{e}"
    );
}
