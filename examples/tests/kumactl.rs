//! `kumactl` against the real `standalone` binary, over HTTP and HTTPS, with a real Envoy
//! connected through `kuma-dp`: apply, paged gets, validation errors with field paths, stale
//! updates, unknown names, access control for remote callers with and without the bootstrapped
//! admin token, `inspect dataplanes` with ACKs and a provoked NACK, `inspect dataplane --type
//! config`, and `/metrics` read by Prometheus's own text parser.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use common::netns::{CP_IP, Lab};
use common::{Standalone, test_dir};
use kuma_testkit::{eventually, free_port, http_get, http_request, response_body, response_header};
use serde_json::Value;
use tokio::process::Command;

/// Runs kumactl with its own config file; stdin from `input` when given.
async fn kumactl(config: &Path, args: &[&str], input: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kumactl"))
        .arg("--config-file")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("kumactl finishes")
        .unwrap()
}

/// The claims of a JWT (not verified: what kumactl printed is only read).
fn jwt_claims(token: &str) -> Value {
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap()
}

/// Stdout of a kumactl run that must succeed.
async fn ok(config: &Path, args: &[&str]) -> String {
    let out = kumactl(config, args, None).await;
    assert!(
        out.status.success(),
        "kumactl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stderr of a kumactl run that must fail.
async fn fails(config: &Path, args: &[&str], input: Option<&str>) -> String {
    let out = kumactl(config, args, input).await;
    assert!(!out.status.success(), "kumactl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// Parses `text` with the Python Prometheus client's parser `module` (Prometheus's reference
/// implementation of the formats); one line per family: name, type, sum of its samples.
fn prometheus_parse(module: &str, text: &str) -> String {
    let script = format!(
        "import sys\nfrom {module} import text_string_to_metric_families as p\n\
         fams = {{f.name: f for f in p(sys.stdin.read())}}\n\
         for name in sorted(fams):\n    \
         print(name, fams[name].type, sum(s.value for s in fams[name].samples \
         if not s.name.endswith(('_bucket', '_created'))))"
    );
    let out = kuma_testkit::run_with_stdin(
        std::process::Command::new("python3").args(["-c", &script]),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{module} rejects /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn request(
    ip: IpAddr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
    http_request(tcp, method, path, headers, body).await
}

const RESOURCES: &str = r#"
type: Mesh
name: demo
---
type: Dataplane
mesh: demo
name: dp-a
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
---
type: Dataplane
mesh: demo
name: dp-b
networking:
  address: 10.0.0.2
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
---
type: Dataplane
mesh: demo
name: dp-c
networking:
  address: 10.0.0.3
  inbound:
    - port: 9090
      tags:
        kuma.io/service: backend
---
type: MeshTrafficPermission
mesh: demo
name: allow-web
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
"#;

#[test]
fn kumactl_manages_and_inspects_a_running_control_plane() {
    // A host of the test's own, so that requests to its address are not from loopback.
    let lab = Lab::create("kctl");
    lab.enter_cp().block_on(async {
        let dir = test_dir("kumactl");
        let cp = Standalone::start(&[]).await;
        let config = dir.join("kumactl.yaml");
        let cfg = config.as_path();

        // Over HTTPS, trusting the control plane's generated CA.
        let https = format!("https://localhost:{}", cp.api_tls_port);
        let added = ok(
            cfg,
            &[
                "config",
                "control-planes",
                "add",
                "--name",
                "local",
                "--address",
                &https,
                "--ca-cert-file",
                &cp.ca_file,
            ],
        )
        .await;
        assert!(
            added.contains("switched active Control Plane to \"local\""),
            "{added}"
        );

        // --dry-run prints without applying; then apply a multi-document file.
        let file = dir.join("resources.yaml");
        std::fs::write(&file, RESOURCES).unwrap();
        let file = file.to_str().unwrap();
        let dry = ok(cfg, &["apply", "-f", file, "--dry-run"]).await;
        assert_eq!(dry.matches("---").count(), 4, "{dry}");
        assert!(
            fails(cfg, &["get", "mesh", "demo"], None)
                .await
                .contains("404")
        );
        ok(cfg, &["apply", "-f", file]).await;

        // Paging across pages, as Kuma pages: a footer names the next offset.
        let first = ok(cfg, &["get", "dataplanes", "-m", "demo", "--size", "2"]).await;
        let header = first.lines().next().unwrap();
        for column in ["MESH", "NAME", "TAGS", "ADDRESS", "AGE"] {
            assert!(header.contains(column), "{first}");
        }
        assert!(
            first.contains("dp-a") && first.contains("dp-b") && !first.contains("dp-c"),
            "{first}"
        );
        let footer = first.lines().last().unwrap();
        let offset = footer
            .split("--offset=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("a footer with the next offset: {first}"));
        let second = ok(
            cfg,
            &[
                "get",
                "dataplanes",
                "-m",
                "demo",
                "--size",
                "2",
                "--offset",
                offset,
            ],
        )
        .await;
        assert!(
            second.contains("dp-c") && !second.contains("dp-a"),
            "{second}"
        );
        assert!(
            !second.contains("--offset"),
            "the last page has no footer: {second}"
        );

        let json: Value = serde_json::from_str(
            &ok(
                cfg,
                &["get", "meshtrafficpermissions", "-m", "demo", "-o", "json"],
            )
            .await,
        )
        .unwrap();
        assert_eq!(json["total"], 1);
        assert_eq!(
            json["items"][0]["spec"]["from"][0]["default"]["action"],
            "Allow"
        );
        let yaml = ok(
            cfg,
            &["get", "dataplane", "dp-c", "-m", "demo", "-o", "yaml"],
        )
        .await;
        assert!(yaml.contains("kuma.io/service: backend"), "{yaml}");

        // A bad resource: 400 with every field path.
        let bad = "type: Dataplane\nmesh: demo\nname: bad\nnetworking:\n  address: 10.0.0.9\n  inbound:\n    - port: 70000\n      tags: {}\n";
        let err = fails(cfg, &["apply", "-f", "-"], Some(bad)).await;
        assert!(err.contains("status 400"), "{err}");
        assert!(err.contains("networking.inbound[0].port"), "{err}");
        assert!(
            err.contains("networking.inbound[0].tags[\"kuma.io/service\"]"),
            "{err}"
        );
        // Unknown names: 404.
        let err = fails(cfg, &["get", "dataplane", "nope", "-m", "demo"], None).await;
        assert!(err.contains("status 404"), "{err}");
        let err = fails(cfg, &["delete", "dataplane", "nope", "-m", "demo"], None).await;
        assert!(err.contains("status 404"), "{err}");

        // A stale update (If-Match with an old version) is a 409.
        let get = |port| async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            http_request(tcp, "GET", "/meshes/demo/dataplanes/dp-a", &[], "").await
        };
        let (_, raw) = get(cp.api_port).await;
        let etag = response_header(&raw, "etag").unwrap().to_string();
        let body = response_body(&raw).replace("10.0.0.1", "10.0.0.11");
        let put = |body: String, etag: String| async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.api_port))
                .await
                .unwrap();
            http_request(
                tcp,
                "PUT",
                "/meshes/demo/dataplanes/dp-a",
                &[("If-Match", &etag)],
                &body,
            )
            .await
        };
        assert_eq!(put(body.clone(), etag.clone()).await.0, 200);
        let (status, raw) = put(body, etag).await;
        assert_eq!(status, 409, "{raw}");

        // Remote callers: reads are allowed, writes need a token, secrets need an admin.
        let ip: IpAddr = CP_IP.parse().unwrap();
        let mesh = r#"{"type":"Mesh","name":"remote"}"#;
        assert_eq!(
            request(ip, cp.api_port, "GET", "/meshes", &[], "").await.0,
            200
        );
        assert_eq!(
            request(ip, cp.api_port, "PUT", "/meshes/remote", &[], mesh)
                .await
                .0,
            401
        );
        assert_eq!(
            request(
                ip,
                cp.api_port,
                "GET",
                "/global-secrets/admin-user-token",
                &[],
                ""
            )
            .await
            .0,
            403
        );
        let (status, _) = request(
            ip,
            cp.api_port,
            "GET",
            "/meshes",
            &[("Authorization", "Bearer not-a-token")],
            "",
        )
        .await;
        assert_eq!(status, 401);

        // The admin token, read as Kuma documents it (from localhost), lets a remote kumactl write.
        let secret: Value = serde_json::from_str(
            &ok(
                cfg,
                &["get", "global-secret", "admin-user-token", "-o", "json"],
            )
            .await,
        )
        .unwrap();
        let token = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let bearer = format!("Bearer {token}");
        let (status, raw) = request(
            ip,
            cp.api_port,
            "PUT",
            "/meshes/remote",
            &[("Authorization", &bearer)],
            mesh,
        )
        .await;
        assert_eq!(status, 201, "{raw}");
        let remote = dir.join("remote.yaml");
        let remote = remote.as_path();
        ok(
            remote,
            &[
                "config",
                "control-planes",
                "add",
                "--name",
                "remote",
                "--address",
                &format!("http://{ip}:{}", cp.api_port),
                "--auth-type",
                "tokens",
                "--auth-conf",
                &format!("token={token}"),
            ],
        )
        .await;
        ok(remote, &["delete", "mesh", "remote"]).await;
        assert!(
            ok(remote, &["get", "global-secrets"])
                .await
                .contains("admin-user-token")
        );

        // A real Envoy connects through kuma-dp; its ACKs show in `inspect dataplanes`.
        let (inbound, outbound) = (free_port().await, free_port().await);
        let dataplane = format!(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n"
        );
        let mut dp = cp.proxy(&dir, "web-1", &dataplane, &[]).await;
        let acked = || async {
            let out = ok(cfg, &["inspect", "dataplanes", "-o", "json"]).await;
            let json: Value = serde_json::from_str(&out).unwrap();
            json["items"][0]["dataplaneInsight"]["subscriptions"][0]["status"]["total"]
                ["responsesAcknowledged"]
                .as_u64()
                .unwrap_or_default()
        };
        eventually(
            "web-1's Envoy ACKs clusters, endpoints and listeners",
            || async { acked().await >= 3 },
        )
        .await;
        let online = ok(cfg, &["inspect", "dataplanes"]).await;
        assert!(
            online
                .lines()
                .any(|l| l.contains("web-1") && l.contains("Online") && l.contains("1.40.0")),
            "{online}"
        );
        let table = ok(cfg, &["inspect", "dataplanes"]).await;
        for column in [
            "STATUS",
            "LAST CONNECTED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "ENVOY VERSION",
            "LAST NACK",
        ] {
            assert!(table.lines().next().unwrap().contains(column), "{table}");
        }
        let json: Value =
            serde_json::from_str(&ok(cfg, &["inspect", "dataplanes", "-o", "json"]).await).unwrap();
        let insight = &json["items"][0]["dataplaneInsight"];
        let total = &insight["subscriptions"][0]["status"]["total"];
        assert!(
            total["responsesAcknowledged"].as_u64().unwrap() >= 3,
            "{insight}"
        );
        assert_eq!(total["responsesRejected"], 0, "{insight}");
        for kind in ["cds", "eds", "lds"] {
            assert!(
                insight["metadata"]["xds"][kind]["lastAckedVersion"].is_string(),
                "{insight}"
            );
        }

        // The config the control plane serves it, as JSON.
        let config_dump: Value = serde_json::from_str(
            &ok(cfg, &["inspect", "dataplane", "web-1", "--type", "config"]).await,
        )
        .unwrap();
        let listeners = &config_dump["type.googleapis.com/envoy.config.listener.v3.Listener"];
        assert!(
            listeners[format!("inbound:127.0.0.1:{inbound}")].is_object(),
            "{config_dump}"
        );
        assert_eq!(
            config_dump["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["backend"]["type"],
            "EDS"
        );

        // A dataplane token for web-1, with its tags (the admin config kumactl uses).
        let token = ok(
            cfg,
            &[
                "generate",
                "dataplane-token",
                "--name",
                "web-1",
                "--tag",
                "kuma.io/service=web",
                "--valid-for",
                "1h",
            ],
        )
        .await;
        let claims = jwt_claims(&token);
        assert_eq!(claims["Name"], "web-1");
        assert_eq!(
            claims["Tags"],
            serde_json::json!({"kuma.io/service": ["web"]})
        );
        let bad = kumactl(
            cfg,
            &["generate", "dataplane-token", "--tag", "novalue"],
            None,
        )
        .await;
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("expected key=value"));

        // The merged rules, each with the policies it came from: the mesh's default timeout
        // applies to web's outbound to backend.
        let rules: Value =
            serde_json::from_str(&ok(cfg, &["inspect", "dataplane", "web-1", "--type", "rules"]).await)
                .unwrap();
        let timeouts = rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "MeshTimeout")
            .unwrap_or_else(|| panic!("no MeshTimeout rules: {rules}"));
        assert!(
            timeouts.to_string().contains("mesh-timeout-all-default"),
            "{timeouts}"
        );
        let unknown = kumactl(
            cfg,
            &["inspect", "dataplane", "web-1", "--type", "nope"],
            None,
        )
        .await;
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("use config, rules or policies"),
            "{}",
            String::from_utf8_lossy(&unknown.stderr)
        );

        // An outbound on the inbound's port: Envoy rejects the listeners; the NACK and its text
        // show up.
        let clash = dataplane.replace(&format!("port: {outbound}"), &format!("port: {inbound}"));
        let out = kumactl(cfg, &["apply", "-f", "-"], Some(&clash)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eventually("inspect dataplanes shows the NACK", || async {
            ok(cfg, &["inspect", "dataplanes"])
                .await
                .contains("duplicate address")
        })
        .await;
        let table = ok(cfg, &["inspect", "dataplanes"]).await;
        let row = table.lines().find(|l| l.contains("web-1")).unwrap();
        assert!(row.contains("lds: "), "{table}");

        // /metrics is Prometheus text that Prometheus's own parser reads, and counts what happened.
        let (status, raw) = http_get(cp.diagnostics_port, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            response_header(&raw, "content-type")
                .unwrap()
                .contains("version=0.0.4")
        );
        let metrics = response_body(&raw).to_string();
        let families = prometheus_parse("prometheus_client.parser", &metrics);
        // What Prometheus itself asks for: OpenMetrics, checked by the strict OpenMetrics parser.
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.diagnostics_port))
            .await
            .unwrap();
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (status, raw) = http_request(tcp, "GET", "/metrics", &[("Accept", accept)], "").await;
        assert_eq!(status, 200);
        assert!(
            response_header(&raw, "content-type")
                .unwrap()
                .contains("openmetrics")
        );
        let open = prometheus_parse("prometheus_client.openmetrics.parser", response_body(&raw));
        assert_eq!(
            open.lines()
                .map(|l| l.split(' ').next())
                .collect::<Vec<_>>(),
            families
                .lines()
                .map(|l| l.split(' ').next())
                .collect::<Vec<_>>(),
            "both formats carry the same families"
        );
        let value = |name: &str| -> f64 {
            families
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {families}"))
                .split_whitespace()
                .last()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(value("xds_streams_active"), 1.0);
        assert_eq!(value("leader"), 1.0, "a memory-store instance always leads");
        assert!(value("xds_requests_received") >= 3.0);
        assert!(value("xds_responses_sent") >= 4.0);
        assert!(value("xds_nacks_received") >= 1.0);
        assert!(value("xds_generation_seconds") > 0.0);
        assert!(value("xds_delivery_seconds") > 0.0);
        assert!(value("store_operations") > 0.0);
        assert!(
            value("store_conflicts") >= 1.0,
            "the stale update counts as a conflict"
        );
        assert!(value("api_server_requests") > 0.0);
        assert!(
            metrics.contains(r#"api_server_requests_total{method="PUT",status="401"}"#),
            "{metrics}"
        );

        dp.child.kill().await.ok();
        std::fs::remove_dir_all(&dir).ok();
    });
}

/// In the split port layout the API issues no tokens: kumactl finds the admin server through
/// the API's `/catalog` and gets the token there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kumactl_gets_tokens_from_the_admin_server_in_the_split_layout() {
    let dir = test_dir("kumactl-split");
    let cp = Standalone::start(&[("KUMA_PORT_LAYOUT", "split")]).await;
    let config = dir.join("kumactl.yaml");
    let cfg = config.as_path();
    let api = format!("http://127.0.0.1:{}", cp.api_port);
    ok(
        cfg,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            "split",
            "--address",
            &api,
        ],
    )
    .await;
    let token = ok(
        cfg,
        &[
            "generate",
            "dataplane-token",
            "--name",
            "web-1",
            "--mesh",
            "default",
        ],
    )
    .await;
    let claims = jwt_claims(&token);
    assert_eq!(claims["Name"], "web-1");
    assert_eq!(claims["Mesh"], "default");
    // Zone tokens too: for a zone and the scopes asked (both by default).
    let token = ok(
        cfg,
        &[
            "generate",
            "zone-token",
            "--zone",
            "zone-1",
            "--scope",
            "ingress",
        ],
    )
    .await;
    let claims = jwt_claims(&token);
    assert_eq!(claims["Zone"], "zone-1");
    assert_eq!(claims["Scope"], serde_json::json!(["ingress"]));
    let token = ok(cfg, &["generate", "zone-token", "--zone", "zone-2"]).await;
    assert_eq!(
        jwt_claims(&token)["Scope"],
        serde_json::json!(["ingress", "egress"])
    );
    let refused = fails(
        cfg,
        &[
            "generate",
            "zone-token",
            "--zone",
            "zone-1",
            "--scope",
            "sidecar",
        ],
        None,
    )
    .await;
    assert!(refused.contains("scope"), "{refused}");
}
