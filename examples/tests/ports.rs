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

const ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const SDS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// How the server on `port` ends the gRPC stream `method` (grpcio over TLS) of a proxy whose
/// Dataplane does not exist: the gRPC status and its message.
fn grpc_status(port: u16, ca_file: &str, method: &str) -> String {
    use kuma_testkit::pb_field;
    // A DiscoveryRequest whose node (field 2) has the id (field 1) default.web-1.
    let request = pb_field(2, &pb_field(1, b"default.web-1"));
    kuma_testkit::grpcio_stream_status(port, Some(ca_file), method, &request)
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

/// The ports both layouts serve alike: 5676 MADS (HTTP), 5653 DNS over UDP and TCP, and the
/// admission webhook (HTTPS) on `webhook`.
async fn mads_dns_and_webhook_answer(https: &reqwest::Client, cp: &Standalone, webhook: u16) {
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
    for tcp in [false, true] {
        let status = dig_status(cp.dns_port, "nope.mesh", tcp);
        assert!(status.contains("NXDOMAIN"), "tcp={tcp}: {status}");
    }
    let r = https
        .post(format!(
            "https://localhost:{webhook}/validate-kuma-io-v1alpha1"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
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
    let https = cp.https_client();

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
    let status = grpc_status(cp.dp_port, &cp.ca_file, ADS);
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
    // The bootstrap handler answers (a request without a token is refused before anything
    // else it carries is looked at).
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("a dataplane token is required")
    );
    mads_dns_and_webhook_answer(&https, &cp, webhook).await;

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

/// The split layout (`--port-layout split`): SDS, the admin server, the plain-HTTP bootstrap
/// server and the GUI get ports of their own; the dp-server serves ADS only and the HTTPS API
/// is gone (its port is the bootstrap server's). Each port answers its own protocol and no
/// other port is open; the admin server listens on 127.0.0.1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_layout_serves_each_service_on_its_own_port() {
    let webhook = free_port().await;
    let webhook_port = webhook.to_string();
    let cp = Standalone::start_with(
        &["--port-layout", "split"],
        &[
            ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_ENABLED", "true"),
            (
                "KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_PORT",
                &webhook_port,
            ),
        ],
    )
    .await;
    let split = cp.split.unwrap();
    for line in [
        "SDS (TLS, gRPC)",
        "bootstrap server (HTTP)",
        "admin server",
        "GUI server",
    ] {
        assert!(cp.table.contains(line), "{line} in {}", cp.table);
    }
    let client = cp.https_client();

    // 5680 diagnostics.
    assert_eq!(http_get(cp.diagnostics_port, "/ready").await.0, 200);
    // 5681 API: no tokens, a catalog of the other servers.
    assert_eq!(http_get(cp.api_port, "/").await.0, 200);
    let (status, raw) = http_get(cp.api_port, "/catalog").await;
    assert_eq!(status, 200);
    // URLs on the host the API was reached by (`Host: localhost`); the admin server's local.
    assert!(
        raw.contains(&format!(
            r#""bootstrap":{{"url":"http://localhost:{}"}}"#,
            split.bootstrap
        )) && raw.contains(&format!(r#""localUrl":"http://127.0.0.1:{}""#, split.admin)),
        "{raw}"
    );
    let body = r#"{"name": "web-1", "mesh": "default"}"#;
    assert_eq!(
        common::post_json(cp.api_port, "/tokens/dataplane", body)
            .await
            .0,
        404
    );
    // 5679 admin server (HTTP, localhost): tokens (Kuma 0.x's path and today's) and secrets,
    // nothing else.
    for path in ["/tokens", "/tokens/dataplane"] {
        let (status, token) = common::post_json(split.admin, path, body).await;
        assert_eq!(status, 200, "{path}: {token}");
        assert_eq!(token.split('.').count(), 3, "a JWT from {path}: {token}");
    }
    assert_eq!(
        http_get(split.admin, "/meshes/default/secrets").await.0,
        200
    );
    assert_eq!(http_get(split.admin, "/meshes").await.0, 404);
    // 5683 GUI server: the GUI and an API that only reads.
    let (status, page) = http_get(split.gui, "/gui/").await;
    assert_eq!(status, 200);
    assert!(page.contains("app.js"), "{page}");
    assert_eq!(http_get(split.gui, "/meshes").await.0, 200);
    let (status, _) = common::send_json(
        split.gui,
        "PUT",
        "/meshes/other",
        r#"{"type": "Mesh", "name": "other"}"#,
    )
    .await;
    assert_eq!(status, 405, "the GUI server's API refuses writes");
    assert_eq!(
        common::post_json(split.gui, "/tokens/dataplane", body)
            .await
            .0,
        404
    );
    // 5682 bootstrap server (plain HTTP).
    let (status, answer) = common::post_json(split.bootstrap, "/bootstrap", body).await;
    assert_eq!(status, 401);
    assert!(answer.contains("a dataplane token is required"), "{answer}");
    // 5678 dp-server: ADS over TLS, and no longer the bootstrap.
    let status = grpc_status(cp.dp_port, &cp.ca_file, ADS);
    assert!(status.starts_with("PERMISSION_DENIED"), "{status}");
    let r = client
        .post(format!("https://localhost:{}/bootstrap", cp.dp_port))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("bootstrapServer.port"));
    // 5677 SDS over TLS: secrets only, with the same authentication as ADS.
    let status = grpc_status(split.sds, &cp.ca_file, SDS);
    assert!(
        status.starts_with("PERMISSION_DENIED") && status.contains("web-1"),
        "{status}"
    );
    let status = grpc_status(split.sds, &cp.ca_file, ADS);
    assert!(status.starts_with("UNIMPLEMENTED"), "{status}");
    mads_dns_and_webhook_answer(&client, &cp, webhook).await;

    let (tcp, udp) = open_ports(cp.child.id().unwrap());
    let listed_tcp: BTreeSet<u16> = [
        cp.diagnostics_port,
        cp.api_port,
        cp.dp_port,
        split.sds,
        split.admin,
        split.bootstrap,
        split.gui,
        cp.mads_port,
        cp.dns_port,
        webhook,
    ]
    .into();
    assert_eq!(tcp, listed_tcp, "TCP ports open");
    assert!(!tcp.contains(&cp.api_tls_port), "no HTTPS API");
    assert_eq!(udp, [cp.dns_port].into(), "UDP ports open");
    assert_eq!(
        listening_address(cp.child.id().unwrap(), split.admin),
        Some("127.0.0.1".parse().unwrap()),
        "the admin server listens on localhost only"
    );

    // kuma-dp given the API's address (as Kuma 0.x's docs give it) finds the bootstrap server
    // in the catalog; its Envoy starts and gets ready.
    let dir = common::test_dir("ports-split");
    let token = common::token_from(split.admin, "/tokens", "default", "web-1").await;
    let dataplane = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    tags:\n      kuma.io/service: web\n",
        free_port().await
    );
    let api = format!("http://127.0.0.1:{}", cp.api_port);
    let dp = common::spawn_kuma_dp(&dir, &api, &token, &cp.ca_file, "web-1", &dataplane, &[]).await;
    kuma_testkit::eventually("web-1's Envoy is ready", || async {
        http_get(dp.readiness_port, "/ready").await.0 == 200
    })
    .await;
    let log = std::fs::read_to_string(dir.join("web-1.log")).unwrap();
    assert!(
        log.contains(&format!(
            "names the bootstrap server 127.0.0.1:{}",
            split.bootstrap
        )),
        "{log}"
    );
}

/// The IPv4 address process `pid` listens on at TCP `port`.
fn listening_address(pid: u32, port: u16) -> Option<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, p) = cols.get(1)?.split_once(':')?;
        if cols.get(3) != Some(&"0A") || u16::from_str_radix(p, 16).ok()? != port {
            return None;
        }
        // The kernel prints the address as the in-memory (network order) word.
        let word = u32::from_str_radix(addr, 16).ok()?;
        Some(std::net::Ipv4Addr::from(word.to_le_bytes()))
    })
}

/// A layout that does not exist, and a split layout whose ports clash, are refused at start
/// with the flag or key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_layouts_are_refused_at_start() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_standalone"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&["--port-layout", "sideways"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--port-layout \"sideways\""),
        "{out:?}"
    );
    let api = free_port().await.to_string();
    let out = run(
        &["--port-layout=split"],
        &[
            ("KUMA_API_SERVER_HTTP_PORT", api.as_str()),
            ("KUMA_GUI_SERVER_PORT", api.as_str()),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("guiServer.port") && stderr.contains("already used by apiServer.http.port"),
        "{stderr}"
    );
}

/// The port matrix of `global` and of a `zone` connected to it, in both layouts: each lists
/// what it serves, each listed port answers, and no other port is open. Global serves KDS
/// (gRPC over TLS) and no proxy-facing port; a zone serves what standalone serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_and_zone_serve_their_ports_in_both_layouts() {
    use std::process::Stdio;
    for split in [false, true] {
        let args: &[&str] = if split {
            &["--port-layout", "split"]
        } else {
            &[]
        };
        let global = Standalone::launch_binary("global", &[], args, &[], Stdio::null()).await;
        assert!(
            global.table.contains("KDS (TLS): zone sync (gRPC)"),
            "{}",
            global.table
        );
        // KDS answers gRPC over TLS: a stream that does not name its zone is refused.
        let status = kuma_testkit::grpcio_stream_status(
            global.kds_port,
            Some(&global.ca_file),
            "/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync",
            &[],
        );
        assert!(
            status.starts_with("INVALID_ARGUMENT") && status.contains("client-id"),
            "{status}"
        );
        assert_eq!(http_get(global.diagnostics_port, "/ready").await.0, 200);
        assert_eq!(http_get(global.api_port, "/gui/").await.0, 200);
        let mut expected: BTreeSet<u16> =
            [global.diagnostics_port, global.api_port, global.kds_port].into();
        match global.split {
            Some(s) => {
                expected.extend([s.admin, s.gui]);
                assert_eq!(http_get(s.gui, "/gui/").await.0, 200);
            }
            None => {
                expected.insert(global.api_tls_port);
                let r = global
                    .https_client()
                    .get(format!("https://localhost:{}/zones", global.api_tls_port))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }
        let (tcp, udp) = open_ports(global.child.id().unwrap());
        assert_eq!(tcp, expected, "global's TCP ports (split: {split})");
        assert!(udp.is_empty(), "global serves no DNS: {udp:?}");

        let address = format!("grpcs://127.0.0.1:{}", global.kds_port);
        let env = [
            ("KUMA_MULTIZONE_ZONE_NAME", "zone-1"),
            ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", address.as_str()),
            (
                "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
                global.ca_file.as_str(),
            ),
        ];
        let zone = Standalone::launch_binary("zone", &[], args, &env, Stdio::null()).await;
        assert!(zone.table.contains(&address), "{}", zone.table);
        assert_eq!(http_get(zone.diagnostics_port, "/ready").await.0, 200);
        let status = grpc_status(zone.dp_port, &zone.ca_file, ADS);
        assert!(status.starts_with("PERMISSION_DENIED"), "{status}");
        for tcp in [false, true] {
            let status = dig_status(zone.dns_port, "nope.mesh", tcp);
            assert!(status.contains("NXDOMAIN"), "tcp={tcp}: {status}");
        }
        let mut expected: BTreeSet<u16> = [
            zone.diagnostics_port,
            zone.api_port,
            zone.dp_port,
            zone.mads_port,
            zone.dns_port,
        ]
        .into();
        match zone.split {
            Some(s) => expected.extend([s.sds, s.admin, s.bootstrap, s.gui]),
            None => {
                expected.insert(zone.api_tls_port);
            }
        }
        let (tcp, udp) = open_ports(zone.child.id().unwrap());
        assert_eq!(tcp, expected, "the zone's TCP ports (split: {split})");
        assert_eq!(udp, [zone.dns_port].into());
    }
}
