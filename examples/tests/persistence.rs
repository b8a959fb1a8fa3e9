//! Persistent stores with the real binaries and Envoys. Several `standalone` instances on one
//! PostgreSQL database (a throwaway cluster), with real
//! Envoys: a write through one instance's API reaches a proxy connected to the other, and a
//! restarted instance serves the same config versions it served before.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Standalone, leads, pg_env, test_dir};
use kuma_testkit::{PgCluster, eventually, free_port, http_get};

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn standalone(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_standalone"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap()
}

/// Envoy's version of the config of `kind` (`cds`, `lds`), from its admin stats.
async fn envoy_version(admin: u16, kind: &str) -> String {
    let stats = http_get(admin, "/stats").await.1;
    let key = match kind {
        "cds" => "cluster_manager.cds.version_text: ",
        _ => "listener_manager.lds.version_text: ",
    };
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

/// Envoy's (CDS, LDS) versions.
async fn config_versions(admin: u16) -> (String, String) {
    (
        envoy_version(admin, "cds").await,
        envoy_version(admin, "lds").await,
    )
}

/// Envoy's (CDS, LDS) versions once it has reconnected to a restarted control plane and had
/// time to be sent anything new.
async fn versions_after_reconnect(admin: u16) -> (String, String) {
    eventually(
        "Envoy is connected to the restarted control plane",
        || async {
            http_get(admin, "/stats")
                .await
                .1
                .contains("control_plane.connected_state: 1")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    config_versions(admin).await
}

/// `web-1` (calling `backend`) with its Envoy, connected to `cp` and configured.
async fn web_proxy(dir: &std::path::Path, cp: &Standalone) -> common::Dp {
    let outbound = free_port().await;
    let web = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n",
        free_port().await,
        free_port().await
    );
    let dp = cp.proxy(dir, "web-1", &web, &[]).await;
    eventually("web-1's Envoy gets its config", || async {
        !envoy_version(dp.admin_port, "cds").await.is_empty()
    })
    .await;
    dp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database() {
    let cluster = PgCluster::start().await;
    let env = pg_env(&cluster);

    // Without migrations the control plane refuses to start, and says how to fix it.
    let refused = standalone(&[], &env).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("migrate up"), "{stderr}");
    let migrated = standalone(&["migrate", "up"], &env).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("applied migrations [1]"));

    let dir = test_dir("postgres");
    let work_b = dir.join("work-b");
    let mut env_b = env.clone();
    env_b.push((
        "KUMA_GENERAL_WORK_DIR".into(),
        work_b.to_string_lossy().into_owned(),
    ));
    let a = Standalone::start(&refs(&env)).await;
    let b = Standalone::start(&refs(&env_b)).await;

    // web-1's Envoy is connected to B.
    let dp = web_proxy(&dir, &b).await;

    // A backend endpoint written through A's API reaches the Envoy connected to B.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let backend = "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.77\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: backend\n";
    let written = Instant::now();
    let status = http
        .put(format!(
            "http://127.0.0.1:{}/meshes/default/dataplanes/backend-1",
            a.api_port
        ))
        .header("content-type", "application/yaml")
        .body(backend)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    eventually("the endpoint written on A reaches B's proxy", || async {
        http_get(dp.admin_port, "/clusters")
            .await
            .1
            .contains("backend::127.0.0.77:8080")
    })
    .await;
    eprintln!(
        "write on A -> endpoint in Envoy behind B: {:?}",
        written.elapsed()
    );
    // One leader allocates VIPs (the first two of the range, in the order the services
    // appeared); both instances answer them alike.
    let vips = |port: u16| {
        (
            common::dig(port, "web.mesh"),
            common::dig(port, "backend.mesh"),
        )
    };
    eventually("both instances resolve the same VIPs", || async {
        let (on_a, on_b) = (vips(a.dns_port), vips(b.dns_port));
        let mut both = [on_a.0.as_str(), on_a.1.as_str()];
        both.sort();
        on_a == on_b && both == ["240.0.0.1", "240.0.0.2"]
    })
    .await;
    let vips_before = vips(b.dns_port);

    // B restarts (same work directory, so the same certificate): the resources are all there
    // and Envoy, reconnecting, is served exactly the versions it has.
    let before = config_versions(dp.admin_port).await;
    let b = b.restart(&env_b).await;
    assert_eq!(vips(b.dns_port), vips_before, "VIPs survive a restart");
    let listed = api_json(b.api_port, "/meshes/default/dataplanes/backend-1").await;
    assert_eq!(listed["networking"]["address"], "127.0.0.77", "{listed}");
    // Envoy reconnects to the new B and stays on the same versions.
    let after = versions_after_reconnect(dp.admin_port).await;
    assert_eq!(before, after, "a restart changes no config version");
    drop((a, b, dp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_instance_takes_over_when_the_leader_dies() {
    let cluster = PgCluster::start().await;
    let env = pg_env(&cluster);
    assert!(standalone(&["migrate", "up"], &env).await.status.success());
    let a = Standalone::start(&refs(&env)).await;
    let b = Standalone::start(&refs(&env)).await;
    // Exactly one leads: A, which started first and took the lock.
    eventually("exactly one instance leads", || async {
        leads(a.diagnostics_port).await == Some(true)
            && leads(b.diagnostics_port).await == Some(false)
    })
    .await;
    // The leader dies without a goodbye: its session ends, and B takes over.
    let killed = Instant::now();
    drop(a); // kill_on_drop: SIGKILL
    eventually("B takes over", || async {
        leads(b.diagnostics_port).await == Some(true)
    })
    .await;
    eprintln!("leader killed -> the other leads: {:?}", killed.elapsed());
    // The leader-only job ran where it had to: the default mesh exists, created once.
    let meshes = api_json(b.api_port, "/meshes").await;
    assert_eq!(meshes["total"], 1, "{meshes}");
}

/// `GET path` on the API: the JSON body.
async fn api_json(api_port: u16, path: &str) -> serde_json::Value {
    let (status, raw) = http_get(api_port, path).await;
    assert_eq!(status, 200, "GET {path}: {raw}");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {raw}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_control_plane_restarts_with_everything() {
    let dir = test_dir("sqlite-restart");
    let work = dir.join("work");
    let env: Vec<(String, String)> = vec![
        ("KUMA_STORE_TYPE".into(), "sqlite".into()),
        (
            "KUMA_GENERAL_WORK_DIR".into(),
            work.to_string_lossy().into_owned(),
        ),
    ];
    let cp = Standalone::start(&refs(&env)).await;
    // An access log in JSON: a protobuf Struct of eight fields (a map) in web's listeners,
    // which before canonical encoding came out in another order in every process.
    let fields: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"key": format!("field_{i}"), "value": "%START_TIME%"}))
        .collect();
    common::put_json(
        cp.api_port,
        "/meshes/default/meshaccesslogs/json-log",
        &serde_json::json!({
            "type": "MeshAccessLog", "mesh": "default", "name": "json-log",
            "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                "default": {"backends": [{"type": "File", "file": {"path": "/dev/null",
                    "format": {"type": "Json", "json": fields}}}]}}]}
        })
        .to_string(),
    )
    .await;
    let dp = web_proxy(&dir, &cp).await;
    let admin = dp.admin_port;
    eventually(
        "web-1's listeners carry the JSON access log",
        || async move { http_get(admin, "/config_dump").await.1.contains("field_7") },
    )
    .await;
    let secrets = |port| async move {
        let key = api_json(port, "/global-secrets/user-token-signing-key-1").await;
        let admin = api_json(port, "/global-secrets/admin-user-token").await;
        (key["data"].clone(), admin["data"].clone())
    };
    let before_secrets = secrets(cp.api_port).await;
    assert!(before_secrets.0.is_string() && before_secrets.1.is_string());
    let before_meshes = api_json(cp.api_port, "/meshes").await;
    let before_versions = config_versions(dp.admin_port).await;
    eventually("web.mesh has a VIP", || async {
        common::dig(cp.dns_port, "web.mesh") == "240.0.0.1"
    })
    .await;

    // Restart on the same ports and work directory.
    let cp = cp.restart(&env).await;
    let api_port = cp.api_port;
    assert_eq!(
        common::dig(cp.dns_port, "web.mesh"),
        "240.0.0.1",
        "VIPs survive a restart"
    );

    // The same resources (versions included), the same signing key and admin token.
    assert_eq!(api_json(api_port, "/meshes").await, before_meshes);
    assert_eq!(secrets(api_port).await, before_secrets);
    let web_1 = api_json(api_port, "/meshes/default/dataplanes/web-1").await;
    assert_eq!(web_1["name"], "web-1");
    // Envoy reconnects and is served exactly the versions it has.
    let after_versions = versions_after_reconnect(dp.admin_port).await;
    assert_eq!(
        before_versions, after_versions,
        "a restart changes no config version"
    );
    drop((cp, dp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_database_restart() {
    let cluster = PgCluster::start().await;
    let env = pg_env(&cluster);
    assert!(standalone(&["migrate", "up"], &env).await.status.success());
    let a = Standalone::start(&refs(&env)).await;
    let b = Standalone::start(&refs(&env)).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // A stream of writes alternating between the instances; PostgreSQL restarts in the middle.
    let writes = 120;
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..writes {
        if i == 40 {
            cluster.stop();
        }
        if i == 60 {
            cluster.restart();
        }
        let port = if i % 2 == 0 { a.api_port } else { b.api_port };
        let name = format!("dp-{i}");
        let body = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 10.0.{}.{}\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: svc\n",
            i / 250,
            i % 250 + 1
        );
        let response = http
            .put(format!(
                "http://127.0.0.1:{port}/meshes/default/dataplanes/{name}"
            ))
            .header("content-type", "application/yaml")
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => acked.push(name),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(status.as_u16(), 503, "{text}");
                assert!(text.contains("Store unavailable"), "a clear error: {text}");
                refused.push(name);
            }
            Err(e) => panic!("the API itself must answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} writes acknowledged, {} refused",
        acked.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty(),
        "writes while PostgreSQL was down were refused"
    );
    assert!(
        acked.iter().any(|n| n == &format!("dp-{}", writes - 1)),
        "writes succeed again after the restart, on both instances, without restarting them"
    );
    // Every acknowledged write is there, seen through both instances.
    for port in [a.api_port, b.api_port] {
        let mut query = format!("http://127.0.0.1:{port}/meshes/default/dataplanes?size=1000");
        let text = loop {
            match http.get(&query).send().await {
                Ok(r) if r.status().is_success() => break r.text().await.unwrap(),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names: std::collections::BTreeSet<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["name"].as_str())
            .collect();
        for name in &acked {
            assert!(
                names.contains(name.as_str()),
                "acknowledged {name} is missing on {port}"
            );
        }
        query.clear();
    }
}
