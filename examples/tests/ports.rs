//! The port matrix of `standalone` in the default layout: every port it lists answers a real
//! request of its own protocol (gRPC from grpcio, HTTP, HTTPS verified against the control
//! plane's CA, DNS from dig over UDP and TCP), and the process has no other port open.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use common::Standalone;
use kuma_testkit::{free_port, http_get};

/// The ports (TCP, UDP) that process `pid` listens on, from /proc: the sockets among its open
/// files that are listening (TCP) or bound (UDP).
fn open_ports(pid: u32) -> (BTreeSet<u16>, BTreeSet<u16>) {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let ports = |files: &[&str], listening_only: bool| -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        for file in files {
            let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
                continue;
            };
            for line in table.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // local_address st ... inode
                let (Some(local), Some(state), Some(inode)) =
                    (cols.get(1), cols.get(3), cols.get(9))
                else {
                    continue;
                };
                // 0A: LISTEN (TCP); 07: unconnected (UDP).
                let wanted = if listening_only { "0A" } else { "07" };
                if *state != wanted || !inodes.contains(*inode) {
                    continue;
                }
                let port = local.rsplit(':').next().unwrap();
                out.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
        out
    };
    (
        ports(&["tcp", "tcp6"], true),
        ports(&["udp", "udp6"], false),
    )
}

/// How the dp-server ends an ADS stream (grpcio over TLS) for a proxy whose Dataplane does not
/// exist: the gRPC status and its message.
fn grpc_status(port: u16, ca_file: &str) -> String {
    use kuma_testkit::pb_field;
    // A DiscoveryRequest whose node (field 2) has the id (field 1) default.web-1.
    let request = pb_field(2, &pb_field(1, b"default.web-1"));
    kuma_testkit::grpcio_stream_status(
        port,
        Some(ca_file),
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        &request,
    )
}

/// dig's status line for `name` over UDP or TCP.
fn dig_status(port: u16, name: &str, tcp: bool) -> String {
    let mut cmd = std::process::Command::new("dig");
    cmd.args(["@127.0.0.1", "-p", &port.to_string(), name]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("status:"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_port_answers_its_protocol_and_no_other_is_open() {
    let webhook = free_port().await;
    let webhook_port = webhook.to_string();
    let cp = Standalone::start(&[
        ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_ENABLED", "true"),
        (
            "KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_PORT",
            &webhook_port,
        ),
    ])
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cp.ca_file).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()
        .unwrap();

    // 5680 diagnostics (HTTP).
    assert_eq!(http_get(cp.diagnostics_port, "/ready").await.0, 200);
    // 5681 API (HTTP) and its GUI.
    let (status, raw) = http_get(cp.api_port, "/").await;
    assert_eq!(status, 200);
    assert!(raw.contains(r#""product""#), "{raw}");
    assert_eq!(http_get(cp.api_port, "/gui/").await.0, 200);
    // 5682 API (HTTPS).
    let r = https
        .get(format!("https://localhost:{}/meshes", cp.api_tls_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // 5678 dp-server: gRPC (ADS refuses a stream without a token) and HTTPS /bootstrap.
    let status = grpc_status(cp.dp_port, &cp.ca_file);
    // A proxy of no known Dataplane is refused with a gRPC status.
    assert!(
        status.starts_with("PERMISSION_DENIED") && status.contains("web-1"),
        "{status}"
    );
    let r = https
        .post(format!("https://localhost:{}/bootstrap", cp.dp_port))
        .header("content-type", "application/json")
        .body(r#"{"mesh": "default", "name": "web-1"}"#)
        .send()
        .await
        .unwrap();
    // The bootstrap handler answers (a request without the Dataplane is refused as such).
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("dataplaneResource"));
    // 5676 MADS (HTTP).
    let r = https
        .post(format!(
            "http://127.0.0.1:{}/v3/discovery:monitoringassignments?fetch-timeout=0",
            cp.mads_port
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("MonitoringAssignment"));
    // 5653 DNS, over UDP and TCP.
    for tcp in [false, true] {
        let status = dig_status(cp.dns_port, "nope.mesh", tcp);
        assert!(status.contains("NXDOMAIN"), "tcp={tcp}: {status}");
    }
    // 5443 admission webhook (HTTPS).
    let r = https
        .post(format!(
            "https://localhost:{webhook}/validate-kuma-io-v1alpha1"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Nothing else is open.
    let (tcp, udp) = open_ports(cp.child.id().unwrap());
    let listed_tcp: BTreeSet<u16> = [
        cp.diagnostics_port,
        cp.api_port,
        cp.api_tls_port,
        cp.dp_port,
        cp.mads_port,
        cp.dns_port,
        webhook,
    ]
    .into();
    assert_eq!(tcp, listed_tcp, "TCP ports open");
    assert_eq!(udp, [cp.dns_port].into(), "UDP ports open");
}
