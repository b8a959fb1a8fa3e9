//! Traffic between zones, with the binaries users run, on hosts of the test's own: two
//! network namespaces joined by a veth pair. Global and zone-1 run on the first host
//! (10.77.0.1), zone-2 on the second (10.77.0.2), each zone with its zone ingress. `web` in
//! zone-1 calls `backend`, which runs only in zone-2: its sidecar's endpoint for backend is
//! zone-2's ingress, the mesh mTLS passes through the ingress untouched (the backend sees web's
//! identity), and a MeshTrafficPermission written on global denies web across zones. With
//! backend in zone-1 too, traffic stays there until it fails its health checks, then fails
//! over to zone-2 unless a MeshLoadBalancingStrategy excludes zone-2; and it keeps flowing
//! when zone-2's control plane dies. With `routing.zoneEgress`, web's calls go through
//! zone-1's egress, which passes them on to zone-2's ingress.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Stdio;

use common::netns::{CP_IP, Lab, REMOTE_IP, join};
use common::{Dp, Standalone, send_json_at, spawn_kuma_dp_in, test_dir};
use kuma_testkit::{eventually, free_port, http_get, stat};
use serde_json::{Value, json};

/// An HTTP app on 127.0.0.1 of namespace `ns` answering with the request's XFCC header (or
/// `none`); it serves until the test process ends.
fn xfcc_app_in(ns: &str) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let app =
                    axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
                        headers
                            .get("x-forwarded-client-cert")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string()
                    });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
    });
    rx.recv().unwrap()
}

/// Whether a response came from [`zone1_app`] (the XFCC alone names zone-1 too: web's own
/// certificate does).
fn in_zone1(raw: &str) -> bool {
    kuma_testkit::response_body(raw).starts_with("zone-1 ")
}

/// An HTTP app on 127.0.0.1 answering `zone-1 <XFCC>`, or 503 while `failing`.
async fn zone1_app(failing: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let failing = failing.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            let xfcc = headers
                .get("x-forwarded-client-cert")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            if failing {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "down".to_string(),
                )
            } else {
                (axum::http::StatusCode::OK, format!("zone-1 {xfcc}"))
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// `PUT` of `body` at `path` on the API at `ip:port`, which must succeed.
async fn put(ip: &str, port: u16, path: &str, body: Value) {
    let (status, answer) = send_json_at(ip, port, "PUT", path, &body.to_string()).await;
    assert!(
        (200..300).contains(&status),
        "PUT {path}: {status} {answer}"
    );
}

/// A token from `POST path` with `body` on the API at `ip:port`.
async fn token(ip: &str, port: u16, path: &str, body: Value) -> String {
    let (status, token) = send_json_at(ip, port, "POST", path, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {token}");
    token
}

/// Starts zone `name` whose KDS client dials global at `global_ip`, through `wrapper`.
async fn zone(
    name: &str,
    wrapper: &[&str],
    global: &Standalone,
    global_ip: &str,
    ca: &str,
) -> Standalone {
    let address = format!("grpcs://{global_ip}:{}", global.kds_port);
    let env = [
        ("KUMA_MULTIZONE_ZONE_NAME", name),
        ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", address.as_str()),
        ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", ca),
        ("KUMA_MULTIZONE_ZONE_INGRESS_UPDATE_INTERVAL", "100ms"),
    ];
    Standalone::launch_binary("zone", wrapper, &[], &env, Stdio::null()).await
}

/// `send_json` to 127.0.0.1:`port` from the lab's remote host (where zone-2's API counts the
/// caller as local, hence admin).
async fn on_remote_api(
    lab: &Lab,
    port: u16,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, String) {
    let (method, path) = (method.to_string(), path.to_string());
    join(lab.on_remote(move || async move {
        send_json_at("127.0.0.1", port, &method, &path, &body.to_string()).await
    }))
    .await
}

/// The stats of the Envoy whose admin listens on 127.0.0.1:`admin` of the lab's remote host.
async fn remote_stats(lab: &Lab, admin: u16) -> String {
    join(lab.on_remote(move || async move { http_get(admin, "/stats").await.1 })).await
}

#[test]
fn a_service_in_one_zone_calls_a_service_in_another_through_its_ingress() {
    let lab = Lab::create("xzone");
    let z2: Vec<String> = lab
        .remote
        .exec_prefix()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let z2: Vec<&str> = z2.iter().map(String::as_str).collect();
    let remote_ns = lab.remote.name.clone();
    lab.enter_cp().block_on(async {
        let dir = test_dir("cross-zone");
        // Global's KDS certificate names the address zone-2 dials.
        let (ca, cert, key) = kuma_testkit::server_certificate(&[CP_IP, "127.0.0.1", "localhost"]);
        let (ca_file, cert_file, key_file) =
            (dir.join("kds-ca.crt"), dir.join("kds.crt"), dir.join("kds.key"));
        std::fs::write(&ca_file, ca).unwrap();
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let ca_file = ca_file.to_string_lossy().into_owned();
        let global = Standalone::launch_binary(
            "global",
            &[],
            &[],
            &[
                ("KUMA_MULTIZONE_GLOBAL_KDS_TLS_CERT_FILE", &cert_file.to_string_lossy()),
                ("KUMA_MULTIZONE_GLOBAL_KDS_TLS_KEY_FILE", &key_file.to_string_lossy()),
            ],
            Stdio::null(),
        )
        .await;
        let zone1 = zone("zone-1", &[], &global, "127.0.0.1", &ca_file).await;
        let zone2 = zone("zone-2", &z2, &global, CP_IP, &ca_file).await;
        eventually("the default mesh reaches both zones", || async {
            send_json_at("127.0.0.1", zone1.api_port, "GET", "/meshes/default", "").await.0 == 200
                && send_json_at(REMOTE_IP, zone2.api_port, "GET", "/meshes/default", "").await.0
                    == 200
        })
        .await;

        // Mesh mTLS with a builtin CA, made once on global for both zones, and a permission
        // that lets every service in.
        put(
            "127.0.0.1",
            global.api_port,
            "/meshes/default/meshtrafficpermissions/allow-all",
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
                "spec": {"targetRef": {"kind": "Mesh"},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}),
        )
        .await;
        put(
            "127.0.0.1",
            global.api_port,
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1",
                "backends": [{"name": "ca-1", "type": "builtin"}]}}),
        )
        .await;
        let ca_secret = "/meshes/default/secrets/default.ca-builtin-cert-ca-1";
        let data = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null)["data"].clone();
        eventually("global makes the mesh CA", || async {
            send_json_at("127.0.0.1", global.api_port, "GET", ca_secret, "").await.0 == 200
        })
        .await;
        let (_, on_global) = send_json_at("127.0.0.1", global.api_port, "GET", ca_secret, "").await;
        eventually("global's mesh CA reaches both zones", || async {
            let (s1, on_zone1) =
                send_json_at("127.0.0.1", zone1.api_port, "GET", ca_secret, "").await;
            let (s2, on_zone2) = on_remote_api(&lab, zone2.api_port, "GET", ca_secret, Value::Null).await;
            s1 == 200
                && s2 == 200
                && data(&on_zone1) == data(&on_global)
                && data(&on_zone2) == data(&on_global)
        })
        .await;

        // zone-2: the backend and the zone ingress (a zone token from global).
        let app = xfcc_app_in(&remote_ns);
        let inbound = free_port().await;
        let backend = format!(
            "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n"
        );
        let zone2_dp = format!("https://localhost:{}", zone2.dp_port);
        let (status, backend_token) = on_remote_api(
            &lab,
            zone2.api_port,
            "POST",
            "/tokens/dataplane",
            json!({"name": "backend-1", "mesh": "default"}),
        )
        .await;
        assert_eq!(status, 200, "{backend_token}");
        let _backend: Dp = spawn_kuma_dp_in(
            &z2,
            &dir,
            &zone2_dp,
            &backend_token,
            &zone2.ca_file,
            "backend-1",
            &backend,
            &[],
        )
        .await;
        let ingress_port = free_port().await;
        let ingress = format!(
            "type: ZoneIngress\nname: ingress-2\nnetworking:\n  address: {REMOTE_IP}\n  port: {ingress_port}\n  advertisedAddress: {REMOTE_IP}\n  advertisedPort: {ingress_port}\n"
        );
        let zone_token = token(
            "127.0.0.1",
            global.api_port,
            "/tokens/zone",
            json!({"zone": "zone-2", "scope": ["ingress"]}),
        )
        .await;
        let ingress_dp = spawn_kuma_dp_in(
            &z2,
            &dir,
            &zone2_dp,
            &zone_token,
            &zone2.ca_file,
            "ingress-2",
            &ingress,
            &["--proxy-type", "ingress"],
        )
        .await;

        // zone-1: web, calling backend through an outbound.
        let (web_app, web_inbound, to_backend) =
            (free_port().await, free_port().await, free_port().await);
        let web = format!(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {web_inbound}\n    servicePort: {web_app}\n    tags:\n      kuma.io/service: web\n      kuma.io/protocol: http\n  outbound:\n  - port: {to_backend}\n    tags:\n      kuma.io/service: backend\n"
        );
        let web_token = token(
            "127.0.0.1",
            zone1.api_port,
            "/tokens/dataplane",
            json!({"name": "web-1", "mesh": "default"}),
        )
        .await;
        let web_dp = spawn_kuma_dp_in(
            &[],
            &dir,
            &format!("https://localhost:{}", zone1.dp_port),
            &web_token,
            &zone1.ca_file,
            "web-1",
            &web,
            &[],
        )
        .await;

        // zone-1 has an ingress of its own, which zone-2 learns of with web listed.
        let zone1_ingress_port = free_port().await;
        let zone1_ingress = format!(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: {CP_IP}\n  port: {zone1_ingress_port}\n  advertisedAddress: {CP_IP}\n  advertisedPort: {zone1_ingress_port}\n"
        );
        let zone1_token = token(
            "127.0.0.1",
            global.api_port,
            "/tokens/zone",
            json!({"zone": "zone-1", "scope": ["ingress"]}),
        )
        .await;
        let _zone1_ingress = spawn_kuma_dp_in(
            &[],
            &dir,
            &format!("https://localhost:{}", zone1.dp_port),
            &zone1_token,
            &zone1.ca_file,
            "ingress-1",
            &zone1_ingress,
            &["--proxy-type", "ingress"],
        )
        .await;
        eventually("zone-1's ingress reaches zone-2 with web", || async {
            let (_, body) =
                on_remote_api(&lab, zone2.api_port, "GET", "/zoneingresses", Value::Null).await;
            let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            list["items"].as_array().is_some_and(|items| {
                items.iter().any(|i| {
                    i["zone"] == "zone-1"
                        && i["availableServices"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|s| s["tags"]["kuma.io/service"] == "web"))
                })
            })
        })
        .await;

        // zone-2's ingress reaches zone-1 through global, listing backend.
        eventually("zone-2's ingress reaches zone-1 with backend", || async {
            let (_, body) =
                send_json_at("127.0.0.1", zone1.api_port, "GET", "/zoneingresses", "").await;
            body.contains("\"kuma.io/service\":\"backend\"") && body.contains("zone-2")
        })
        .await;
        // web reaches backend over mesh mTLS: the backend sees web's identity.
        eventually("web calls backend in zone-2", || async {
            let (status, raw) = http_get(to_backend, "/").await;
            status == 200 && raw.contains("URI=spiffe://default/web")
        })
        .await;
        // The ingress forwarded TCP and terminated no TLS.
        let stats = remote_stats(&lab, ingress_dp.admin_port).await;
        assert!(
            stat(&stats, "tcp.default_backend.downstream_cx_total").unwrap_or(0) >= 1,
            "{stats}"
        );
        let listener = format!("listener.inbound_{REMOTE_IP}_{ingress_port}.");
        assert!(
            !stats.lines().any(|l| l.starts_with(&listener) && l.contains(".ssl.")),
            "the ingress terminated TLS: {stats}"
        );

        // A permission written on global denies web, in zone-2's backend.
        put(
            "127.0.0.1",
            global.api_port,
            "/meshes/default/meshtrafficpermissions/deny-web",
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-web",
                "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                    "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                        "default": {"action": "Deny"}}]}}),
        )
        .await;
        eventually("web is denied across zones", || async {
            http_get(to_backend, "/").await.0 == 403
        })
        .await;
        let (status, _) = send_json_at(
            "127.0.0.1",
            global.api_port,
            "DELETE",
            "/meshes/default/meshtrafficpermissions/deny-web",
            "",
        )
        .await;
        assert_eq!(status, 200);
        // Connections opened under the old config may still answer (Envoy drains them): the
        // removal is in when zone-2 holds one permission and every new call passes.
        eventually("web is let in again", || async {
            let (_, list) = on_remote_api(
                &lab,
                zone2.api_port,
                "GET",
                "/meshes/default/meshtrafficpermissions",
                Value::Null,
            )
            .await;
            let one = serde_json::from_str::<Value>(&list).unwrap_or(Value::Null)["total"] == 1;
            let mut passes = one;
            for _ in 0..5 {
                passes &= http_get(to_backend, "/").await.0 == 200;
            }
            passes
        })
        .await;

        // With routing.zoneEgress, web reaches zone-2 through zone-1's egress, which passes
        // the mesh mTLS on to zone-2's ingress untouched.
        let egress_port = free_port().await;
        let egress = format!(
            "type: ZoneEgress\nname: egress-1\nnetworking:\n  address: {CP_IP}\n  port: {egress_port}\n"
        );
        let egress_token = token(
            "127.0.0.1",
            global.api_port,
            "/tokens/zone",
            json!({"zone": "zone-1", "scope": ["egress"]}),
        )
        .await;
        let egress_dp = spawn_kuma_dp_in(
            &[],
            &dir,
            &format!("https://localhost:{}", zone1.dp_port),
            &egress_token,
            &zone1.ca_file,
            "egress-1",
            &egress,
            &["--proxy-type", "egress"],
        )
        .await;
        let mesh = |zone_egress: bool| {
            json!({"type": "Mesh", "name": "default", "routing": {"zoneEgress": zone_egress},
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}})
        };
        put("127.0.0.1", global.api_port, "/meshes/default", mesh(true)).await;
        let via = |address: String| async move {
            let clusters = http_get(web_dp.admin_port, "/clusters").await.1;
            clusters.contains(&format!("backend::{address}::"))
        };
        eventually("web sends to backend through zone-1's egress", || {
            via(format!("{CP_IP}:{egress_port}"))
        })
        .await;
        eventually("web calls backend through the egress", || async {
            let (status, raw) = http_get(to_backend, "/").await;
            status == 200 && raw.contains("URI=spiffe://default/web")
        })
        .await;
        let stats = http_get(egress_dp.admin_port, "/stats").await.1;
        assert!(
            stat(&stats, "tcp.default_backend.downstream_cx_total").unwrap_or(0) >= 1,
            "{stats}"
        );
        let listener = format!("listener.inbound_{CP_IP}_{egress_port}.");
        assert!(
            !stats.lines().any(|l| l.starts_with(&listener) && l.contains(".ssl.")),
            "the egress terminated TLS: {stats}"
        );
        put("127.0.0.1", global.api_port, "/meshes/default", mesh(false)).await;
        eventually("web sends to zone-2's ingress again", || {
            via(format!("{REMOTE_IP}:{ingress_port}"))
        })
        .await;

        // zone-2's control plane dies: its proxies keep their last config, and so does web.
        // (Before zone-1 gets a backend of its own: a call retried after a connection closing
        // under it must find zone-2 again, not a failing local instance.)
        let mut zone2 = zone2;
        zone2.child.kill().await.unwrap();
        for _ in 0..10 {
            let (status, raw) = http_get(to_backend, "/").await;
            assert_eq!(status, 200, "cross-zone traffic with zone-2's CP down: {raw}");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }

        // backend in zone-1 too, preferred while healthy; health checks and failover to any
        // zone written on global.
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let local_app = zone1_app(failing.clone()).await;
        let local_inbound = free_port().await;
        let local_backend = format!(
            "type: Dataplane\nmesh: default\nname: backend-2\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {local_inbound}\n    servicePort: {local_app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n"
        );
        let local_token = token(
            "127.0.0.1",
            zone1.api_port,
            "/tokens/dataplane",
            json!({"name": "backend-2", "mesh": "default"}),
        )
        .await;
        let _local_backend = spawn_kuma_dp_in(
            &[],
            &dir,
            &format!("https://localhost:{}", zone1.dp_port),
            &local_token,
            &zone1.ca_file,
            "backend-2",
            &local_backend,
            &[],
        )
        .await;
        let health_check = json!({"type": "MeshHealthCheck", "mesh": "default", "name": "backend",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"interval": "1s", "timeout": "1s", "unhealthyThreshold": 1,
                    "healthyThreshold": 1, "http": {"path": "/"}}}]}});
        put(
            "127.0.0.1",
            global.api_port,
            "/meshes/default/meshhealthchecks/backend",
            health_check.clone(),
        )
        .await;
        let failover = |to: Value| {
            json!({"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "failover",
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
                    "targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {"localityAwareness": {"crossZone": {"failover": [{"to": to}]}}}}]}})
        };
        let lbs = "/meshes/default/meshloadbalancingstrategies/failover";
        put("127.0.0.1", global.api_port, lbs, failover(json!({"type": "Any"}))).await;
        // Five calls in a row answered as `answered` says.
        let five = |answered: fn(u16, &str) -> bool| async move {
            for _ in 0..5 {
                let (status, raw) = http_get(to_backend, "/").await;
                if !answered(status, &raw) {
                    return false;
                }
            }
            true
        };
        eventually("traffic stays in zone-1", || {
            five(|status, raw| status == 200 && in_zone1(raw))
        })
        .await;
        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        eventually("traffic fails over to zone-2", || {
            five(|status, raw| {
                status == 200 && raw.contains("URI=spiffe://default/web") && !in_zone1(raw)
            })
        })
        .await;
        // A failover that excludes zone-2: nowhere to go. (Envoy keeps a host gone from its
        // endpoints while active health checks pass it, as in Kuma; without them it goes.)
        put(
            "127.0.0.1",
            global.api_port,
            lbs,
            failover(json!({"type": "AnyExcept", "zones": ["zone-2"]})),
        )
        .await;
        let checks = "/meshes/default/meshhealthchecks/backend";
        let (status, _) = send_json_at("127.0.0.1", global.api_port, "DELETE", checks, "").await;
        assert_eq!(status, 200);
        eventually("zone-2 is excluded", || five(|status, _| status == 503)).await;
        put("127.0.0.1", global.api_port, checks, health_check.clone()).await;
        put("127.0.0.1", global.api_port, lbs, failover(json!({"type": "Any"}))).await;
        eventually("zone-2 takes traffic again", || {
            five(|status, raw| status == 200 && !in_zone1(raw))
        })
        .await;

    });
}
