//! A zone ingress run by the binaries users run: `standalone` issues a zone token, `kuma-dp
//! --proxy-type ingress` runs a real Envoy for a ZoneIngress, the control plane lists the
//! zone's services in its `availableServices` and generates its config. A TLS client that
//! sends the SNI another zone's proxy sends (`backend{mesh=default}`) reaches the backend's
//! own Envoy through it: the certificate it sees is the backend's workload certificate, and
//! the ingress terminates no TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Standalone, post_json, put_json, send_json, spawn_kuma_dp, test_dir};
use kuma_testkit::{eventually, free_port, stat};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// What `openssl s_client` sees at 127.0.0.1:`port` when it sends `sni`: the server's
/// certificate as text (empty when the handshake reached no certificate).
fn presented_certificate(port: u16, sni: &str) -> String {
    let connect = format!("127.0.0.1:{port}");
    let out = kuma_testkit::run_with_stdin(
        std::process::Command::new("openssl").args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            sni,
        ]),
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else {
        return String::new();
    };
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    let decoded = kuma_testkit::run_with_stdin(
        std::process::Command::new("openssl").args(["x509", "-noout", "-text"]),
        text[start..end].as_bytes(),
    );
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_passes_mesh_tls_through_to_the_zones_services() {
    let dir = test_dir("zone-ingress");
    let cp = Standalone::start(&[("KUMA_MULTIZONE_ZONE_INGRESS_UPDATE_INTERVAL", "100ms")]).await;
    put_json(
        cp.api_port,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin"}]}})
        .to_string(),
    )
    .await;

    // Zone tokens: for a zone and a scope; the API refuses an unknown scope.
    let (status, body) = post_json(
        cp.api_port,
        "/tokens/zone",
        r#"{"zone": "default", "scope": ["gateway"]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("scope"), "{body}");
    let (status, egress_only) = post_json(
        cp.api_port,
        "/tokens/zone",
        r#"{"zone": "default", "scope": ["egress"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{egress_only}");
    let (status, token) = post_json(
        cp.api_port,
        "/tokens/zone",
        r#"{"zone": "default", "scope": ["ingress"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{token}");

    let port = free_port().await;
    let ingress = format!(
        "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {port}\n"
    );
    // A token whose scope is egress only does not run an ingress.
    let request = json!({"mesh": "", "name": "ingress-1", "proxyType": "ingress",
        "dataplaneToken": egress_only, "dataplaneResource": ingress});
    let refused = cp
        .https_client()
        .post(format!("https://localhost:{}/bootstrap", cp.dp_port))
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    let status = refused.status().as_u16();
    let body = refused.text().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("ingress"), "{body}");

    let cp_address = format!("https://localhost:{}", cp.dp_port);
    let ingress_dp = spawn_kuma_dp(
        &dir,
        &cp_address,
        &token,
        &cp.ca_file,
        "ingress-1",
        &ingress,
        &["--proxy-type", "ingress"],
    )
    .await;

    // Nothing offered yet: Kuma's direct response names the proxy and the zone.
    eventually("the empty ingress answers", || async {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let mut answer = String::new();
        let read = tokio::time::timeout(Duration::from_secs(1), tcp.read_to_string(&mut answer));
        read.await.is_ok() && answer == r#"{"proxy":".ingress-1","zone":"default"}"#
    })
    .await;
    let (status, _) = send_json(cp.api_port, "GET", "/zoneingresses/ingress-1", "").await;
    assert_eq!(status, 200, "the proxy registered its ZoneIngress");

    // A backend in the zone: the ingress lists it and forwards its SNI to it.
    let (app, inbound) = (free_port().await, free_port().await);
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n"
    );
    let _backend = cp.proxy(&dir, "backend-1", &backend, &[]).await;
    eventually("the ingress lists backend", || async {
        let (_, body) = send_json(cp.api_port, "GET", "/zoneingresses/ingress-1", "").await;
        let zi: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        zi["availableServices"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["tags"]["kuma.io/service"] == "backend"))
    })
    .await;
    let services = send_json(cp.api_port, "GET", "/zoneingresses/ingress-1", "").await;
    let services: Value = serde_json::from_str(&services.1).unwrap();
    let backend_entry = &services["availableServices"][0];
    assert_eq!(backend_entry["instances"], 1, "{services}");
    assert_eq!(backend_entry["mesh"], "default", "{services}");

    eventually(
        "the backend's certificate comes through the ingress",
        || async {
            let text = tokio::task::spawn_blocking(move || {
                presented_certificate(port, "backend{mesh=default}")
            })
            .await
            .unwrap();
            text.contains("URI:spiffe://default/backend")
        },
    )
    .await;
    // The ingress forwarded at the TCP level and terminated no handshake.
    let stats = kuma_testkit::http_get(ingress_dp.admin_port, "/stats")
        .await
        .1;
    assert!(
        stat(&stats, "tcp.default_backend.downstream_cx_total").unwrap_or(0) >= 1,
        "{stats}"
    );
    let listener = format!("listener.inbound_127.0.0.1_{port}.");
    assert!(
        !stats
            .lines()
            .any(|l| l.starts_with(&listener) && l.contains(".ssl.")),
        "the ingress terminated TLS: {stats}"
    );
    // A name no service offers reaches nothing.
    let unknown =
        tokio::task::spawn_blocking(move || presented_certificate(port, "nobody{mesh=default}"))
            .await
            .unwrap();
    assert!(unknown.is_empty(), "{unknown}");
    let stats = kuma_testkit::http_get(ingress_dp.admin_port, "/stats")
        .await
        .1;
    let unmatched = format!("{listener}no_filter_chain_match");
    assert!(stat(&stats, &unmatched).unwrap_or(0) >= 1, "{stats}");
}
