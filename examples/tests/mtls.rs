//! Mesh mTLS and MeshTrafficPermission with real Envoys: `standalone` + `kuma-dp` + Envoy per
//! proxy, an HTTP service and a TCP echo service behind their proxies, and two callers (`web`
//! and `other`). mTLS is switched on, off and to PERMISSIVE on the live mesh; every assertion
//! is on what clients, workloads and Envoy observe.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use common::{Dp, Standalone, test_dir};
use kuma_testkit::{eventually, free_port, http_get, stat};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP service answering 200 with the `x-forwarded-client-cert` it received.
async fn xfcc_service() -> u16 {
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A TCP service echoing everything back on each connection until the peer closes.
async fn echo_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// One echo exchange on a fresh connection to 127.0.0.1:`port`: whether `ping` came back.
async fn echoes(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    exchange(&mut s, b"ping").await
}

/// Writes `payload` on `s` and reads it back (within 2 s).
async fn exchange(s: &mut TcpStream, payload: &[u8]) -> bool {
    if s.write_all(payload).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; payload.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf == payload
    )
}

struct Mesh {
    cp: Standalone,
    http: reqwest::Client,
    backend: Dp,
    backend_inbound: u16,
    /// (proxy, outbound port to backend, outbound port to echo) of web and other.
    web: (Dp, u16, u16),
    other: (Dp, u16, u16),
}

impl Mesh {
    async fn put(&self, path: &str, body: Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.cp.api_port);
        let r = self
            .http
            .put(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            r.text().await.unwrap()
        );
    }

    async fn mtls(&self, mode: Option<&str>) {
        let mut mesh = json!({"type": "Mesh", "name": "default"});
        if let Some(mode) = mode {
            mesh["mtls"] = json!({
                "enabledBackend": "ca-1",
                "backends": [{
                    "name": "ca-1",
                    "type": "builtin",
                    "mode": mode,
                    "dpCert": {"rotation": {"expiration": "1m"}},
                }],
            });
        }
        self.put("/meshes/default", mesh).await;
    }

    /// STRICT mTLS, with a MeshTrafficPermission first so that traffic still passes.
    async fn strict_mtls_allowing_all(&self) {
        self.put(
            "/meshes/default/meshtrafficpermissions/allow-all",
            permission(&[("Mesh", None, "Allow")]),
        )
        .await;
        self.mtls(Some("STRICT")).await;
    }

    /// GET through a caller's outbound to backend: (status, body); status 0 when the
    /// connection failed.
    async fn call(&self, outbound: u16) -> (u16, String) {
        match self
            .http
            .get(format!("http://127.0.0.1:{outbound}/"))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }
}

/// The serial number and URI SANs of the certificate Envoy on `admin_port` presents.
async fn presented_cert(admin_port: u16) -> Option<(String, Vec<String>)> {
    let certs: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{admin_port}/certs"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())?;
    let chain = certs["certificates"]
        .as_array()?
        .iter()
        .find_map(|c| c["cert_chain"].as_array().and_then(|a| a.first()).cloned())?;
    let sans = chain["subject_alt_names"]
        .as_array()?
        .iter()
        .filter_map(|s| s["uri"].as_str().map(String::from))
        .collect();
    Some((chain["serial_number"].as_str()?.to_string(), sans))
}

/// MeshTrafficPermission `allow-all` for the whole mesh with `from` entries (kind, name or
/// `team` tag value for MeshSubset, action).
fn permission(from: &[(&str, Option<&str>, &str)]) -> Value {
    let from: Vec<Value> = from
        .iter()
        .map(|(kind, name, action)| {
            let mut target = json!({"kind": kind});
            match (*kind, name) {
                ("MeshSubset", Some(team)) => target["tags"] = json!({"team": team}),
                (_, Some(n)) => target["name"] = json!(n),
                _ => {}
            }
            json!({"targetRef": target, "default": {"action": action}})
        })
        .collect();
    json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
           "spec": {"targetRef": {"kind": "Mesh"}, "from": from}})
}

/// The mesh of this file, on a control plane started with `env`.
async fn start(test: &str, env: &[(&str, &str)]) -> Mesh {
    let dir = test_dir(test);
    let cp = Standalone::start(env).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (app, echo) = (xfcc_service().await, echo_service().await);
    let (backend_inbound, echo_inbound) = (free_port().await, free_port().await);
    let backend = cp.proxy(&dir, "backend-1", &format!(
            "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {backend_inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n      version: v1\n  - port: {echo_inbound}\n    servicePort: {echo}\n    tags:\n      kuma.io/service: echo\n      kuma.io/protocol: tcp\n"
        ), &[])
    .await;
    let mut callers = Vec::new();
    for name in ["web", "other"] {
        let (to_backend, to_echo, inbound) =
            (free_port().await, free_port().await, free_port().await);
        let dp = cp.proxy(&dir, &format!("{name}-1"), &format!(
                "type: Dataplane\nmesh: default\nname: {name}-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: {name}\n      kuma.io/protocol: http\n      team: {name}\n  outbound:\n  - port: {to_backend}\n    tags:\n      kuma.io/service: backend\n  - port: {to_echo}\n    tags:\n      kuma.io/service: echo\n"
            ), &[])
        .await;
        callers.push((dp, to_backend, to_echo));
    }
    let other = callers.pop().unwrap();
    let web = callers.pop().unwrap();
    let mesh = Mesh {
        cp,
        http,
        backend,
        backend_inbound,
        web,
        other,
    };
    for (_, to_backend, to_echo) in [&mesh.web, &mesh.other] {
        eventually("plaintext traffic flows", || async {
            mesh.call(*to_backend).await == (200, "none".into()) && echoes(*to_echo).await
        })
        .await;
    }
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_permissions_and_rotation() {
    let mesh = start("mtls", &[]).await;
    let (web_to_backend, web_to_echo) = (mesh.web.1, mesh.web.2);
    let (other_to_backend, other_to_echo) = (mesh.other.1, mesh.other.2);

    // With mTLS on, nothing passes unless a MeshTrafficPermission allows it.
    mesh.strict_mtls_allowing_all().await;

    // STRICT: callers reach backend over mTLS, and backend's workload sees web's identity.
    eventually("web reaches backend over mTLS", || async {
        let (status, xfcc) = mesh.call(web_to_backend).await;
        status == 200 && xfcc.contains("URI=spiffe://default/web")
    })
    .await;
    eventually("TCP traffic crosses mTLS", || async {
        echoes(web_to_echo).await
    })
    .await;
    let backend_stats = kuma_testkit::envoy_stats(mesh.backend.admin_port).await;
    let listener = format!("listener.127.0.0.1_{}.ssl.handshake", mesh.backend_inbound);
    assert!(
        stat(&backend_stats, &listener).unwrap_or(0) > 0,
        "{listener}"
    );
    let web_stats = kuma_testkit::envoy_stats(mesh.web.0.admin_port).await;
    assert!(stat(&web_stats, "cluster.backend.ssl.handshake").unwrap_or(0) > 0);
    assert_eq!(
        stat(&web_stats, "cluster.backend.ssl.fail_verify_san"),
        Some(0)
    );
    let (serial, sans) = presented_cert(mesh.backend.admin_port).await.unwrap();
    for san in [
        "spiffe://default/backend",
        "spiffe://default/echo",
        "kuma://version/v1",
    ] {
        assert!(sans.iter().any(|s| s == san), "{san} in {sans:?}");
    }
    // A plaintext client straight to the inbound gets no HTTP answer.
    assert!(kuma_testkit::refuses_plain_http(mesh.backend_inbound).await);

    // Deny `other`: 403 over HTTP, a closed connection over TCP; web still passes. Entries
    // merge in order, so the later, narrower one decides for `other`.
    mesh.put(
        "/meshes/default/meshtrafficpermissions/allow-all",
        permission(&[
            ("Mesh", None, "Allow"),
            ("MeshService", Some("other"), "Deny"),
        ]),
    )
    .await;
    eventually("other is denied", || async {
        mesh.call(other_to_backend).await.0 == 403 && !echoes(other_to_echo).await
    })
    .await;
    assert_eq!(mesh.call(web_to_backend).await.0, 200);
    assert!(echoes(web_to_echo).await);
    mesh.put(
        "/meshes/default/meshtrafficpermissions/allow-all",
        permission(&[("Mesh", None, "Allow")]),
    )
    .await;
    eventually("other passes again", || async {
        mesh.call(other_to_backend).await.0 == 200 && echoes(other_to_echo).await
    })
    .await;

    // Rotation: the certificates live a minute and are replaced at 80 %; one TCP stream and
    // a request every 200 ms run across the replacement without a single failure.
    let mut stream = TcpStream::connect(("127.0.0.1", web_to_echo))
        .await
        .unwrap();
    let started = Instant::now();
    let mut exchanges = 0;
    let rotated = loop {
        assert!(
            exchange(&mut stream, b"still here").await,
            "the long stream broke after {exchanges} exchanges"
        );
        let (status, _) = mesh.call(web_to_backend).await;
        assert_eq!(status, 200, "a request failed during rotation");
        exchanges += 1;
        if let Some((now, _)) = presented_cert(mesh.backend.admin_port).await
            && now != serial
        {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "no new certificate within 75 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(rotated, serial);
    // A few more exchanges on the same connection, after the new certificate is in use.
    for _ in 0..5 {
        assert!(exchange(&mut stream, b"after rotation").await);
        assert_eq!(mesh.call(web_to_backend).await.0, 200);
    }

    // PERMISSIVE: plaintext straight to the inbound is served, mTLS still works.
    mesh.mtls(Some("PERMISSIVE")).await;
    eventually("plaintext is accepted in PERMISSIVE", || async {
        http_get(mesh.backend_inbound, "/").await.0 == 200
    })
    .await;
    assert!(
        mesh.call(web_to_backend)
            .await
            .1
            .contains("URI=spiffe://default/web")
    );

    // mTLS off: plaintext between the proxies again, no restart.
    mesh.mtls(None).await;
    eventually("plaintext between proxies", || async {
        mesh.call(web_to_backend).await == (200, "none".into())
    })
    .await;
}

/// Strict SPIFFE: each proxy's certificate is an X.509-SVID with one URI SAN naming its first
/// service. Traffic still flows to a second service of a proxy (its SAN is what callers
/// accept), and a permission on a tag, which the certificates no longer carry, is resolved by
/// the control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_spiffe_certificates_and_tag_permissions() {
    let mesh = start(
        "mtls-strict",
        &[
            ("KUMA_MTLS_SAN_LAYOUT", "strictSpiffe"),
            ("KUMA_MTLS_KEY_TYPE", "ecdsaP256"),
        ],
    )
    .await;
    mesh.put(
        "/meshes/default/meshtrafficpermissions/allow-all",
        permission(&[
            ("Mesh", None, "Allow"),
            ("MeshSubset", Some("other"), "Deny"),
        ]),
    )
    .await;
    mesh.mtls(Some("STRICT")).await;
    eventually("web reaches backend and echo over mTLS", || async {
        let (status, xfcc) = mesh.call(mesh.web.1).await;
        status == 200 && xfcc.contains("URI=spiffe://default/web") && echoes(mesh.web.2).await
    })
    .await;
    let (_, sans) = presented_cert(mesh.backend.admin_port).await.unwrap();
    assert_eq!(sans, ["spiffe://default/backend"]);
    eventually("team other is denied", || async {
        mesh.call(mesh.other.1).await.0 == 403 && !echoes(mesh.other.2).await
    })
    .await;
    assert_eq!(mesh.call(mesh.web.1).await.0, 200);
}

/// The split port layout: each proxy's bootstrap comes from the plain-HTTP bootstrap server
/// (kuma-dp pins the control plane's CA), its token from the admin server, and its
/// certificates over its own SDS stream to the SDS port, authenticated by the token the
/// bootstrap's SDS cluster adds to each request. mTLS traffic flows as in the default layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_layout_certificates_come_from_the_sds_port() {
    let mesh = start("mtls-split", &[("KUMA_PORT_LAYOUT", "split")]).await;
    let split = mesh.cp.split.expect("split ports");
    mesh.strict_mtls_allowing_all().await;
    eventually("web reaches backend over mTLS", || async {
        let (status, xfcc) = mesh.call(mesh.web.1).await;
        status == 200 && xfcc.contains("URI=spiffe://default/web") && echoes(mesh.web.2).await
    })
    .await;
    for (who, dp) in [("backend", &mesh.backend), ("web", &mesh.web.0)] {
        let stats = kuma_testkit::envoy_stats(dp.admin_port).await;
        // Secrets came over streams to the SDS cluster, that is to the SDS port.
        assert!(
            stat(&stats, "cluster.sds_cluster.upstream_rq_total").unwrap_or(0) >= 1,
            "{who}'s Envoy opened SDS streams"
        );
        assert!(
            stat(&stats, "cluster.sds_cluster.upstream_cx_total").unwrap_or(0) >= 1,
            "{who}'s Envoy connected to the SDS port"
        );
        let config = mesh
            .http
            .get(format!(
                "http://127.0.0.1:{}/config_dump?resource=dynamic_active_secrets",
                dp.admin_port
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            config.contains("identity_cert:secret:default"),
            "{who}'s Envoy holds its identity secret: {config}"
        );
    }
    let (_, sans) = presented_cert(mesh.backend.admin_port).await.unwrap();
    assert!(
        sans.iter().any(|s| s == "spiffe://default/backend"),
        "{sans:?}"
    );
    // web-1's insight: one subscription, its ADS stream (the SDS streams are not connections
    // of their own), and the secrets it acknowledged over SDS.
    eventually(
        "web-1's insight records the secrets it acknowledged",
        || async {
            let (_, raw) = http_get(
                mesh.cp.api_port,
                "/meshes/default/dataplanes+insights/web-1",
            )
            .await;
            let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let insight: Value = serde_json::from_str(body).unwrap_or_default();
            let insight = &insight["dataplaneInsight"];
            let subscriptions = insight["subscriptions"].as_array().map_or(0, Vec::len);
            assert!(
                subscriptions <= 1,
                "only the ADS stream subscribes: {insight}"
            );
            subscriptions == 1
                && insight["metadata"]["xds"]["secret"]["lastAckedVersion"].is_string()
        },
    )
    .await;
    // Tokens come from the admin server; the API on 5681 no longer issues them and says where
    // to go instead.
    let (status, _) = common::post_json(
        mesh.cp.api_port,
        "/tokens/dataplane",
        r#"{"name": "web-2", "mesh": "default"}"#,
    )
    .await;
    assert_eq!(status, 404);
    let catalog: Value = mesh
        .http
        .get(format!("http://127.0.0.1:{}/catalog", mesh.cp.api_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(
        catalog["apis"]["admin"]["localUrl"],
        format!("http://127.0.0.1:{}", split.admin)
    );
    assert_eq!(
        catalog["apis"]["bootstrap"]["url"],
        format!("http://127.0.0.1:{}", split.bootstrap)
    );

    // SIGTERM with every proxy's ADS and SDS streams open: all of them are ended deliberately,
    // not cut after the grace period.
    let mut cp = mesh.cp;
    common::sigterm(&cp.child);
    let status = tokio::time::timeout(Duration::from_secs(10), cp.child.wait())
        .await
        .expect("standalone stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Ok(Some(line)) = cp.lines.next_line().await {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l == "stopped: every connection closed"),
        "{rest:?}"
    );
}

/// Envoy's counters that say a cluster or listener was rebuilt, and its CDS and LDS versions.
async fn config_state(admin_port: u16) -> (Option<u64>, Option<u64>, String) {
    let stats = kuma_testkit::envoy_stats(admin_port).await;
    let version = |key: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or("")
            .trim_matches('"')
            .to_string()
    };
    (
        stat(&stats, "cluster_manager.cluster_modified"),
        stat(&stats, "listener_manager.listener_modified"),
        format!(
            "{} {}",
            version("cluster_manager.cds.version_text: "),
            version("listener_manager.lds.version_text: ")
        ),
    )
}

/// "If the data plane temporarily loses connection to the control plane, service traffic won't
/// be affected": the control plane is killed (SIGKILL) while web sends a steady stream of HTTP
/// requests and TCP exchanges over mTLS, stays down for 20 s and comes back (same store, work
/// directory and ports). Not one request fails, the proxies reconnect, and no cluster or
/// listener of theirs is rebuilt: the restarted control plane serves the versions they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_outage() {
    let dir = test_dir("mtls-outage");
    let (file, work) = (dir.join("kuma.db"), dir.join("work"));
    let env = vec![
        ("KUMA_STORE_TYPE".to_string(), "sqlite".to_string()),
        (
            "KUMA_STORE_SQLITE_PATH".to_string(),
            file.display().to_string(),
        ),
        (
            "KUMA_GENERAL_WORK_DIR".to_string(),
            work.display().to_string(),
        ),
    ];
    outage("mtls-outage-mesh", env, false).await;
}

/// The same outage with PostgreSQL as the store and two instances: the one the proxies are
/// connected to is the leader, and it is the one killed. The other takes the lead while it is
/// down; the killed one comes back as a follower and serves the proxies the versions they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_leaders_outage_on_postgres() {
    let cluster = kuma_testkit::PgCluster::start().await;
    let mut env = common::pg_env(&cluster);
    // The instance keeps its TLS certificate across the restart, as with a volume in
    // production; the standby has a directory of its own.
    let work = test_dir("mtls-pg-outage").join("work");
    env.push(("KUMA_GENERAL_WORK_DIR".into(), work.display().to_string()));
    let migrate = tokio::process::Command::new(env!("CARGO_BIN_EXE_standalone"))
        .args(["migrate", "up"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    outage("mtls-pg-outage-mesh", env, true).await;
}

/// The outage scenario on a control plane started with `env` (plus, with `standby`, a second
/// instance on the same store that must take over the lead).
async fn outage(test: &str, mut env: Vec<(String, String)>, standby: bool) {
    env.push(("KUMA_MTLS_KEY_TYPE".into(), "ecdsaP256".into()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut mesh = start(test, &env_refs).await;
    let standby = match standby {
        true => {
            let dir = test_dir(&format!("{test}-standby")).display().to_string();
            let own_dir: Vec<(&str, &str)> = env_refs
                .iter()
                .map(|&(k, v)| match k {
                    "KUMA_GENERAL_WORK_DIR" => (k, dir.as_str()),
                    _ => (k, v),
                })
                .collect();
            Some(Standalone::start(&own_dir).await)
        }
        false => None,
    };
    if let Some(other) = &standby {
        let (a, b) = (mesh.cp.diagnostics_port, other.diagnostics_port);
        eventually(
            "the proxies' instance leads, the other does not",
            || async {
                common::leads(a).await == Some(true) && common::leads(b).await == Some(false)
            },
        )
        .await;
    }
    let (web_to_backend, web_to_echo) = (mesh.web.1, mesh.web.2);
    // Config with protobuf maps of several entries, whose encoding must not change with the
    // process: a route to a subset of two tags (a `Struct` in the route's metadata match),
    // beside the endpoints' tag metadata and the RBAC filters of the permissions.
    mesh.put(
        "/meshes/default/meshhttproutes/to-v1",
        json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "to-v1",
               "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
                   "targetRef": {"kind": "MeshService", "name": "backend"},
                   "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                              "default": {"backendRefs": [{"kind": "MeshServiceSubset",
                                  "name": "backend",
                                  "tags": {"version": "v1", "kuma.io/protocol": "http"}}]}}]}]}}),
    )
    .await;
    mesh.put(
        "/meshes/default/meshtrafficpermissions/allow-all",
        permission(&[
            ("Mesh", None, "Allow"),
            ("MeshSubset", Some("web"), "Allow"),
            ("MeshService", Some("other"), "Allow"),
        ]),
    )
    .await;
    mesh.mtls(Some("STRICT")).await;
    let web_admin = mesh.web.0.admin_port;
    eventually("web's route goes to the subset", || async move {
        kuma_testkit::http_get(web_admin, "/clusters")
            .await
            .1
            .contains("backend-")
    })
    .await;
    eventually("web reaches backend over mTLS", || async {
        let (status, xfcc) = mesh.call(web_to_backend).await;
        status == 200 && xfcc.contains("URI=spiffe://default/web") && echoes(web_to_echo).await
    })
    .await;
    let admins = [mesh.web.0.admin_port, mesh.backend.admin_port];
    // Settled: what web's and backend's Envoys have, the same in 5 readings 500 ms apart.
    let mut before = Vec::new();
    let (mut same, mut readings) = (0, 0);
    while same < 5 {
        readings += 1;
        assert!(
            readings < 60,
            "the proxies' config never settled: {before:?}"
        );
        let mut now = Vec::new();
        for admin in admins {
            now.push(config_state(admin).await);
        }
        same = if now == before { same + 1 } else { 1 };
        before = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The steady traffic: HTTP requests and TCP exchanges, each on a connection of its own.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, http) = (stop.clone(), mesh.http.clone());
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ok = http
                    .get(format!("http://127.0.0.1:{web_to_backend}/"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    failed.push(format!("HTTP #{sent}"));
                }
                if !echoes(web_to_echo).await {
                    failed.push(format!("TCP #{sent}"));
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ports = mesh.cp.port_env();
    mesh.cp.child.start_kill().unwrap();
    mesh.cp.child.wait().await.unwrap();
    // Proxies notice the control plane is gone.
    eventually("web's Envoy has lost the control plane", || async move {
        kuma_testkit::envoy_stats(web_admin)
            .await
            .contains("control_plane.connected_state: 0")
    })
    .await;
    if let Some(other) = &standby {
        let b = other.diagnostics_port;
        eventually("the other instance takes the lead", || async move {
            common::leads(b).await == Some(true)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    ports.extend(env.iter().cloned());
    let refs: Vec<(&str, &str)> = ports
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    mesh.cp = Standalone::start(&refs).await;
    // Envoy retries the ADS stream with its default backoff (Kuma's bootstrap keeps it): up to
    // 30 s between attempts after a long outage, plus jitter.
    for admin in admins {
        let reconnected = tokio::time::timeout(Duration::from_secs(60), async move {
            while !kuma_testkit::envoy_stats(admin)
                .await
                .contains("control_plane.connected_state: 1")
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            reconnected.is_ok(),
            "the proxy (Envoy on {admin}) reconnects"
        );
    }
    if standby.is_some() {
        assert_eq!(
            common::leads(mesh.cp.diagnostics_port).await,
            Some(false),
            "the restarted instance follows"
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.await.unwrap();
    assert!(sent > 100, "{sent} rounds of traffic");
    assert!(
        failed.is_empty(),
        "{} of {sent} rounds failed: {failed:?}",
        failed.len()
    );
    for (admin, before) in admins.into_iter().zip(before) {
        let after = config_state(admin).await;
        assert_eq!(
            after, before,
            "no cluster or listener rebuilt, the same versions (Envoy on {admin})"
        );
    }
    // Nothing was pushed again: the restarted instance answered the proxies' requests for the
    // versions they have with no response at all. The one exception is each proxy's workload
    // certificate: the control plane keeps no workload private key, so after a restart it
    // issues each proxy a new one (one Secret response per proxy, as Kuma does).
    let metrics = http_get(mesh.cp.diagnostics_port, "/metrics").await.1;
    let responses = |type_url: &str| -> u64 {
        let prefix = format!("xds_responses_sent_total{{type_url=\"{type_url}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let requests = metrics
        .lines()
        .filter(|l| l.starts_with("xds_requests_received_total{"))
        .count();
    assert!(
        requests > 0,
        "the proxies asked the restarted instance: {metrics}"
    );
    let proxies = 3; // web, other and backend
    for short in [
        "cluster.v3.Cluster",
        "endpoint.v3.ClusterLoadAssignment",
        "listener.v3.Listener",
    ] {
        let type_url = format!("type.googleapis.com/envoy.config.{short}");
        assert_eq!(
            responses(&type_url),
            0,
            "{type_url} pushed again after the restart"
        );
    }
    let secrets = responses("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    assert!(
        (1..=proxies).contains(&secrets),
        "{secrets} certificate pushes for {proxies} proxies"
    );
    println!(
        "{test}: {sent} rounds of HTTP and TCP traffic across a 20 s control-plane outage, none failed"
    );
}

/// MeshFaultInjection per caller: `from` entries for a MeshService and a MeshSubset abort only
/// the requests of their callers, recognised by the `x-kuma-tags` header their outbounds add;
/// a caller of neither, and a request without the header, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_applies_per_caller() {
    let mesh = start("faults", &[]).await;
    let (web_to_backend, other_to_backend) = (mesh.web.1, mesh.other.1);
    mesh.put(
        "/meshes/default/meshfaultinjections/per-caller",
        json!({"type": "MeshFaultInjection", "mesh": "default", "name": "per-caller",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
            {"targetRef": {"kind": "MeshService", "name": "web"},
             "default": {"http": [{"abort": {"httpStatus": 418, "percentage": 100}}]}},
            {"targetRef": {"kind": "MeshSubset", "tags": {"team": "other"}},
             "default": {"http": [{"abort": {"httpStatus": 429, "percentage": 100}}]}},
        ]}}),
    )
    .await;
    eventually("each caller gets its own fault", || async {
        mesh.call(web_to_backend).await.0 == 418 && mesh.call(other_to_backend).await.0 == 429
    })
    .await;
    // Straight to the inbound, with no caller tags: no fault.
    let direct = mesh.call(mesh.backend_inbound).await;
    assert_eq!(direct.0, 200, "{direct:?}");
    // Only web's subset: other passes again.
    mesh.put(
        "/meshes/default/meshfaultinjections/per-caller",
        json!({"type": "MeshFaultInjection", "mesh": "default", "name": "per-caller",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
            {"targetRef": {"kind": "MeshService", "name": "web"},
             "default": {"http": [{"abort": {"httpStatus": 418, "percentage": 100}}]}},
        ]}}),
    )
    .await;
    eventually("other passes, web still aborted", || async {
        mesh.call(other_to_backend).await.0 == 200 && mesh.call(web_to_backend).await.0 == 418
    })
    .await;
}
