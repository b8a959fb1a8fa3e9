//! End to end through the binaries a user runs: `standalone` and two `kuma-dp` agents, each
//! starting a real Envoy 1.40. TCP traffic flows client -> web's outbound -> backend's inbound ->
//! echo service; kuma-dp reports readiness; SIGTERM stops a kuma-dp and its Envoy, the backend
//! is deregistered, and SIGTERM stops the control plane cleanly.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use kuma_testkit::{envoy_binary, eventually, free_port, http_get, http_request, response_body};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn sigterm(child: &Child) {
    kill(
        Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
}

struct Dp {
    child: Child,
    admin_port: u16,
    readiness_port: u16,
}

/// Whether "hello" comes back through `port`.
async fn echoes(port: u16) -> bool {
    kuma_testkit::round_trip(port, b"hello").await.as_deref() == Some(b"hello".as_slice())
}

async fn kuma_dp(
    dir: &std::path::Path,
    cp_port: u16,
    ca_file: &str,
    name: &str,
    dataplane: &str,
) -> Dp {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, dataplane).unwrap();
    let (admin_port, readiness_port) = (free_port().await, free_port().await);
    let child = Command::new(env!("CARGO_BIN_EXE_kuma-dp"))
        .args([
            "run",
            "--cp-address",
            &format!("https://localhost:{cp_port}"),
            "--ca-cert-file",
            ca_file,
            "--dataplane-file",
        ])
        .arg(&file)
        .args([
            "--binary-path",
            &envoy_binary(),
            "--admin-port",
            &admin_port.to_string(),
        ])
        .args([
            "--readiness-port",
            &readiness_port.to_string(),
            "--config-dir",
        ])
        .arg(dir.join(name))
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("{name}.log")))
                .map(Stdio::from)
                .unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Dp {
        child,
        admin_port,
        readiness_port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_and_kuma_dp_carry_traffic() {
    let dir = std::env::temp_dir().join(format!("kuma-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cp_port = free_port().await;
    let api_port = free_port().await;
    let api_tls_port = free_port().await;
    let diagnostics_port = free_port().await;
    let mut cp = Command::new(env!("CARGO_BIN_EXE_standalone"))
        .env("KUMA_DP_SERVER_PORT", cp_port.to_string())
        .env("KUMA_API_SERVER_HTTP_PORT", api_port.to_string())
        .env("KUMA_API_SERVER_HTTPS_PORT", api_tls_port.to_string())
        .env("KUMA_DIAGNOSTICS_SERVER_PORT", diagnostics_port.to_string())
        .env("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "1s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cp.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("running"), "{first}");
    let mut table = Vec::new();
    let ca_line = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("standalone prints its table")
            .unwrap()
            .expect("the table ends with the CA line");
        if line.contains("CA certificate") {
            break line;
        }
        table.push(line);
    };
    let table = table.join("\n");
    for port in [diagnostics_port, cp_port, api_port, api_tls_port] {
        assert!(
            table.contains(&format!(":{port}")),
            "the listen table names port {port}: {table}"
        );
    }
    let ca_file = ca_line.split_whitespace().last().unwrap().to_string();
    assert!(
        std::fs::read_to_string(&ca_file)
            .unwrap()
            .contains("BEGIN CERTIFICATE"),
        "{ca_line}"
    );

    // Once the table is printed every component has started.
    assert_eq!(http_get(diagnostics_port, "/ready").await.0, 200);
    assert_eq!(http_get(diagnostics_port, "/healthy").await.0, 200);

    // The API answers over HTTP and, with the same CA, over HTTPS.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api_port))
        .await
        .unwrap();
    let mesh = r#"{"type":"Mesh","name":"demo"}"#;
    let (status, raw) = http_request(tcp, "PUT", "/meshes/demo", &[], mesh).await;
    assert_eq!(status, 201, "{raw}");
    let ca_pem = std::fs::read_to_string(&ca_file).unwrap();
    let tls = kuma_cp::tls::client_config(Some(&ca_pem)).unwrap();
    let stream = kuma_cp::tls::connect("localhost", api_tls_port, tls.clone())
        .await
        .unwrap();
    let (status, raw) = http_request(stream, "GET", "/meshes/demo", &[], "").await;
    assert_eq!(status, 200, "{raw}");
    assert!(response_body(&raw).contains(r#""name":"demo""#), "{raw}");
    let stream = kuma_cp::tls::connect("localhost", api_tls_port, tls)
        .await
        .unwrap();
    let (status, _) = http_request(stream, "GET", "/meshes/nope", &[], "").await;
    assert_eq!(status, 404);

    // An agent trusting another CA is refused before anything starts.
    let foreign = dir.join("foreign-ca.crt");
    let other = kuma_cp::tls::CpCertificate::load_or_generate(
        "",
        "",
        &dir.join("foreign"),
        &["localhost".into()],
    )
    .unwrap();
    std::fs::write(&foreign, other.ca_pem).unwrap();
    std::fs::write(
        dir.join("any.yaml"),
        "type: Dataplane\nmesh: default\nname: x\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kuma-dp"))
        .args([
            "run",
            "--cp-address",
            &format!("https://localhost:{cp_port}"),
            "--ca-cert-file",
        ])
        .arg(&foreign)
        .args(["--binary-path", &envoy_binary(), "--dataplane-file"])
        .arg(dir.join("any.yaml"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a foreign CA is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS handshake"), "{stderr}");

    let echo = kuma_testkit::echo_server("").await;
    let (b_in, w_in, w_out) = (free_port().await, free_port().await, free_port().await);
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: {b_in}\n    servicePort: {echo}\n    serviceAddress: 127.0.0.1\n    tags:\n      kuma.io/service: backend\n"
    );
    let web = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {w_in}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {w_out}\n    tags:\n      kuma.io/service: backend\n",
        free_port().await
    );
    let mut b = kuma_dp(&dir, cp_port, &ca_file, "backend-1", &backend).await;
    let mut w = kuma_dp(&dir, cp_port, &ca_file, "web-1", &web).await;

    eventually("web's kuma-dp reports ready", || async {
        http_get(w.readiness_port, "/ready").await.0 == 200
    })
    .await;
    eventually("traffic flows web -> backend", || async {
        echoes(w_out).await
    })
    .await;
    // The backend's address is not loopback's 127.0.0.1, so its Envoy also gets the
    // `kuma:envoy:admin` listener on <address>:<admin port>, serving kuma-dp's readiness.
    eventually("backend /ready through kuma:envoy:admin", || async {
        kuma_testkit::http_get_at("127.0.0.2", b.admin_port, "/ready")
            .await
            .1
            .ends_with("READY")
    })
    .await;
    let (_, stats) = http_get(w.admin_port, "/stats").await;
    assert!(stats.contains("control_plane.connected_state: 1"));
    assert!(stats.contains("listener_manager.lds.update_rejected: 0"));

    // Stopping the backend's agent stops its Envoy; the backend is deregistered.
    sigterm(&b.child);
    let status = tokio::time::timeout(Duration::from_secs(10), b.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.code().is_some(),
        "kuma-dp exits with Envoy's status: {status}"
    );
    assert_eq!(
        http_get(b.readiness_port, "/ready").await.0,
        0,
        "backend's readiness endpoint is gone"
    );
    eventually("backend endpoint removed from web's Envoy", || async {
        !http_get(w.admin_port, "/clusters")
            .await
            .1
            .contains(&format!("127.0.0.2:{b_in}::"))
    })
    .await;

    // SIGTERM to the control plane while web's proxy is still connected: its stream is ended
    // deliberately (not cut after the grace period) and the control plane exits 0.
    sigterm(&cp);
    let status = tokio::time::timeout(Duration::from_secs(10), cp.wait())
        .await
        .expect("standalone stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "standalone exits 0 on SIGTERM: {status}");
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l == "stopped: every connection closed"),
        "streams were ended, not cut after the grace period: {rest:?}"
    );
    sigterm(&w.child);
    tokio::time::timeout(Duration::from_secs(10), w.child.wait())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
