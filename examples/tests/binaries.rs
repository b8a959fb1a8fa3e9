//! End to end through the binaries a user runs: `standalone` and two `kuma-dp` agents, each
//! starting a real Envoy 1.40. TCP traffic flows client -> web's outbound -> backend's inbound ->
//! echo service; kuma-dp reports readiness; SIGTERM stops a kuma-dp and its Envoy, the backend
//! is deregistered, and SIGTERM stops the control plane cleanly.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Standalone, kuma_dp, sigterm, test_dir};
use kuma_testkit::{envoy_binary, eventually, free_port, http_get, http_request, response_body};
use tokio::process::Command;

/// Whether "hello" comes back through `port`.
async fn echoes(port: u16) -> bool {
    kuma_testkit::round_trip(port, b"hello").await.as_deref() == Some(b"hello".as_slice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_and_kuma_dp_carry_traffic() {
    let dir = test_dir("binaries");
    let Standalone {
        child: mut cp,
        mut lines,
        table,
        dp_port: cp_port,
        api_port,
        api_tls_port,
        diagnostics_port,
        dns_port,
        mads_port,
        ca_file,
        ..
    } = Standalone::start(&[]).await;
    for port in [
        diagnostics_port,
        cp_port,
        api_port,
        api_tls_port,
        dns_port,
        mads_port,
    ] {
        assert!(
            table.contains(&format!(":{port}")),
            "the listen table names port {port}: {table}"
        );
    }
    assert!(
        std::fs::read_to_string(&ca_file)
            .unwrap()
            .contains("BEGIN CERTIFICATE"),
        "{ca_file}"
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
    let tls = kuma_dp::tls::client_config(Some(&ca_pem)).unwrap();
    let stream = kuma_dp::tls::connect("localhost", api_tls_port, tls.clone())
        .await
        .unwrap();
    let (status, raw) = http_request(stream, "GET", "/meshes/demo", &[], "").await;
    assert_eq!(status, 200, "{raw}");
    assert!(response_body(&raw).contains(r#""name":"demo""#), "{raw}");
    let stream = kuma_dp::tls::connect("localhost", api_tls_port, tls)
        .await
        .unwrap();
    let (status, _) = http_request(stream, "GET", "/meshes/nope", &[], "").await;
    assert_eq!(status, 404);

    // An agent trusting another CA is refused before anything starts.
    let foreign = dir.join("foreign-ca.crt");
    let other = kuma_ca::BuiltinCa::generate("foreign", kuma_ca::KeyType::EcdsaP256).unwrap();
    std::fs::write(&foreign, kuma_ca::CertificateAuthority::root_pem(&other)).unwrap();
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
    let mut b = kuma_dp(
        &dir,
        cp_port,
        api_port,
        &ca_file,
        "backend-1",
        &backend,
        &[],
    )
    .await;
    let mut w = kuma_dp(&dir, cp_port, api_port, &ca_file, "web-1", &web, &[]).await;

    eventually("web's kuma-dp reports ready", || async {
        http_get(w.readiness_port, "/ready").await.0 == 200
    })
    .await;
    eventually("traffic flows web -> backend", || async {
        echoes(w_out).await
    })
    .await;
    // The leader gave both services VIPs, and the DNS server answers them to `dig`.
    eventually("dig resolves backend.mesh and web.mesh", || async {
        let (b, w) = (
            common::dig(dns_port, "backend.mesh"),
            common::dig(dns_port, "web.mesh"),
        );
        // The first two addresses of 240.0.0.0/4, in the order the services appeared.
        let mut both = [b.as_str(), w.as_str()];
        both.sort();
        both == ["240.0.0.1", "240.0.0.2"]
    })
    .await;
    // A service another zone offers through its ZoneIngress gets a VIP too, and loses it with
    // the ingress.
    let ingress = r#"{"type":"ZoneIngress","name":"east-ingress","zone":"east","networking":{"address":"192.0.2.7","advertisedAddress":"192.0.2.7","port":10001,"advertisedPort":10001},"availableServices":[{"mesh":"default","tags":{"kuma.io/service":"payments"},"instances":1}]}"#;
    let api = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .unwrap()
    };
    let (status, raw) = http_request(
        api().await,
        "PUT",
        "/zoneingresses/east-ingress",
        &[],
        ingress,
    )
    .await;
    assert_eq!(status, 201, "{raw}");
    eventually("dig resolves payments.mesh", || async {
        common::dig(dns_port, "payments.mesh") == "240.0.0.3"
    })
    .await;
    let (status, raw) = http_request(
        api().await,
        "DELETE",
        "/zoneingresses/east-ingress",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    eventually("payments.mesh is gone with the ingress", || async {
        common::dig(dns_port, "payments.mesh").is_empty()
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
    assert_eq!(
        http_get(b.admin_port, "/ready").await.0,
        200,
        "backend's Envoy answers on its admin port"
    );
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
    // And its Envoy with it: the admin port, which answered, no longer does.
    let admin = b.admin_port;
    eventually("backend's Envoy has exited", || async move {
        http_get(admin, "/ready").await.0 == 0
    })
    .await;
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

/// kuma-dp takes every setting from Kuma's `KUMA_*` variables alone, with `run` the only
/// argument; and a Dataplane template from standard input, rendered with `--dataplane-var`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuma_dp_runs_from_kuma_variables_alone() {
    let dir = test_dir("kuma-dp-env");
    let cp = Standalone::start(&[]).await;
    let token = common::dataplane_token(cp.api_port, "default", "env-1").await;
    let token_file = dir.join("env-1.token");
    std::fs::write(&token_file, &token).unwrap();
    let (admin, readiness, inbound) = (free_port().await, free_port().await, free_port().await);
    // The name and mesh come from variables, not from the resource.
    let dataplane = format!(
        "type: Dataplane\nname: ignored\nmesh: ignored\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n  - port: {inbound}\n    tags:\n      kuma.io/service: env\n"
    );
    let env = [
        (
            "KUMA_CONTROL_PLANE_URL",
            format!("https://localhost:{}", cp.dp_port),
        ),
        ("KUMA_CONTROL_PLANE_CA_CERT_FILE", cp.ca_file.clone()),
        ("KUMA_DATAPLANE_NAME", "env-1".to_string()),
        ("KUMA_DATAPLANE_MESH", "default".to_string()),
        ("KUMA_DATAPLANE_RUNTIME_RESOURCE", dataplane),
        (
            "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH",
            token_file.display().to_string(),
        ),
        ("KUMA_DATAPLANE_RUNTIME_BINARY_PATH", envoy_binary()),
        ("KUMA_DATAPLANE_RUNTIME_WORK_DIR", dir.display().to_string()),
        ("KUMA_READINESS_PORT", readiness.to_string()),
        ("KUMA_DATAPLANE_DRAIN_TIME", "2s".to_string()),
    ];
    let mut dp = Command::new(env!("CARGO_BIN_EXE_kuma-dp"))
        .arg("run")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        "the proxy configured from KUMA_* variables is ready",
        || async { http_get(readiness, "/ready").await.0 == 200 },
    )
    .await;
    let (status, body) = http_get(cp.api_port, "/meshes/default/dataplanes/env-1").await;
    assert_eq!(
        status, 200,
        "registered under the name from KUMA_DATAPLANE_NAME: {body}"
    );
    sigterm(&dp);
    let _ = tokio::time::timeout(Duration::from_secs(10), dp.wait()).await;

    // A template on standard input, its variables from the command line; a flag wins over
    // its variable (KUMA_DATAPLANE_NAME says env-1, --name says tpl-1).
    let token = common::dataplane_token(cp.api_port, "default", "tpl-1").await;
    std::fs::write(&token_file, &token).unwrap();
    let (admin, readiness, inbound) = (free_port().await, free_port().await, free_port().await);
    let template = "type: Dataplane\nname: x\nmesh: default\nnetworking:\n  address: {{ address }}\n  admin:\n    port: {{ admin }}\n  inbound:\n  - port: {{ port }}\n    tags:\n      kuma.io/service: {{ service }}\n";
    let mut env = env.to_vec();
    env.retain(|(k, _)| *k != "KUMA_DATAPLANE_RUNTIME_RESOURCE" && *k != "KUMA_READINESS_PORT");
    let mut dp = Command::new(env!("CARGO_BIN_EXE_kuma-dp"))
        .args(["run", "--name", "tpl-1", "--dataplane-file", "-"])
        .args(["--readiness-port", &readiness.to_string()])
        .args(["-v", "address=127.0.0.1,service=tpl"])
        .args(["-v", &format!("admin={admin}")])
        .args(["--dataplane-var", &format!("port={inbound}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = dp.stdin.take().unwrap();
        stdin.write_all(template.as_bytes()).await.unwrap();
    }
    eventually("the proxy from a rendered template is ready", || async {
        http_get(readiness, "/ready").await.0 == 200
    })
    .await;
    let (status, body) = http_get(cp.api_port, "/meshes/default/dataplanes/tpl-1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"port\":{inbound}")), "{body}");
    assert!(body.contains("\"kuma.io/service\":\"tpl\""), "{body}");
    sigterm(&dp);
    let _ = tokio::time::timeout(Duration::from_secs(10), dp.wait()).await;
}
