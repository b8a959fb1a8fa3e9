//! What the kuma-cp integration tests share: fetching a bootstrap from the dp-server and
//! running a real Envoy with it, Dataplane fixtures, and calling through a proxy.
#![allow(dead_code)] // each test file uses its own part

use kuma_testkit::{envoy_binary, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `POST /bootstrap` over TLS (trusting `ca`); the status and body.
pub async fn post_bootstrap(cp_port: u16, ca: &str, body: &str) -> (u16, String) {
    let config = kuma_dp::tls::client_config(Some(ca)).unwrap();
    let mut s = kuma_dp::tls::connect("localhost", cp_port, config)
        .await
        .unwrap();
    let request = format!(
        "POST /bootstrap HTTP/1.1\r\nHost: localhost:{cp_port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await; // peers may close without close_notify
    let body = kuma_testkit::response_body(&out).to_string();
    (kuma_testkit::response_status(&out), body)
}

/// A running Envoy.
pub struct Proxy {
    pub child: Child,
    pub admin_port: u16,
    pub dir: std::path::PathBuf,
}

/// Which backend answered "ping" through `port` (its echo prefix), if any.
pub async fn call(port: u16) -> Option<String> {
    let reply = String::from_utf8(kuma_testkit::round_trip(port, b"ping").await?).ok()?;
    reply.strip_suffix(":ping").map(str::to_string)
}

/// Fetches the bootstrap of Dataplane `name` (presenting `token`) and runs an Envoy with it.
pub async fn start_proxy(
    cp_port: u16,
    ca: &str,
    name: &str,
    dataplane_yaml: &str,
    token: &str,
) -> Proxy {
    start_proxy_with(cp_port, ca, name, dataplane_yaml, token, |b| b).await
}

/// As [`start_proxy`], running Envoy with `edit` applied to the bootstrap.
pub async fn start_proxy_with(
    cp_port: u16,
    ca: &str,
    name: &str,
    dataplane_yaml: &str,
    token: &str,
    edit: impl FnOnce(String) -> String,
) -> Proxy {
    let admin_port = free_port().await;
    let yaml = format!("{dataplane_yaml}  admin:\n    port: {admin_port}\n");
    let req = serde_json::json!({"mesh": "default", "name": name, "proxyType": "dataplane", "dataplaneResource": yaml, "dataplaneToken": token});
    let (status, bootstrap) = post_bootstrap(cp_port, ca, &req.to_string()).await;
    assert_eq!(status, 200, "bootstrap for {name}: {bootstrap}");
    assert!(
        bootstrap.contains("default.") && bootstrap.contains("ads_cluster"),
        "{bootstrap}"
    );
    let bootstrap = edit(bootstrap);
    let dir = std::env::temp_dir().join(format!("kuma-cp-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap).unwrap();
    let child = Command::new(envoy_binary())
        .args([
            "-c",
            path.to_str().unwrap(),
            "--base-id",
            &admin_port.to_string(),
            "-l",
            "warning",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("envoy.log"))
                .map(std::process::Stdio::from)
                .unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts");
    Proxy {
        child,
        admin_port,
        dir,
    }
}

pub fn dataplane(
    name: &str,
    inbound_port: u16,
    service_port: u16,
    service: &str,
    outbound: Option<(u16, &str)>,
) -> String {
    let mut y = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound_port}\n    servicePort: {service_port}\n    tags:\n      kuma.io/service: {service}\n"
    );
    if let Some((port, svc)) = outbound {
        y.push_str(&format!(
            "  outbound:\n  - port: {port}\n    tags:\n      kuma.io/service: {svc}\n"
        ));
    }
    y
}
