//! MADS on the running `standalone`: the exchanges Prometheus's `kuma_sd_configs` and vmagent's
//! send, replayed byte for byte (first poll, follow-up with version and nonce, long-poll
//! wake-up on a new Dataplane, timeout -> 304, chunked bodies, `"resource_names": null`), bad
//! requests, and then a real Prometheus (Debian's) that scrapes Envoy's metrics from the
//! targets MADS assigns (through file_sd: Debian builds Prometheus without kuma_sd_configs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Standalone, put_json, test_dir};
use kuma_testkit::{eventually, free_port, response_body, response_status};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TYPE_URL: &str = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment";
const PATH: &str = "/v3/discovery:monitoringassignments";

/// POSTs `body` to MADS, with `query` appended to the path, its length given or chunked:
/// (status, body).
async fn mads(port: u16, query: &str, body: &str, chunked: bool) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let mut request = format!(
        "POST {PATH}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json\r\nConnection: close\r\n{framing}\r\n\r\n"
    );
    if chunked {
        // In two chunks, split inside the JSON.
        let (a, b) = body.split_at(body.len() / 2);
        for part in [a, b] {
            request.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        request.push_str("0\r\n\r\n");
    } else {
        request.push_str(body);
    }
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    (response_status(&raw), response_body(&raw).to_string())
}

/// What Prometheus sends: protobuf JSON with proto field names, empty fields left out.
fn prometheus_request(version: &str, nonce: &str) -> String {
    let mut r = json!({"node": {"id": "prometheus-host"}, "type_url": TYPE_URL});
    if !version.is_empty() {
        r["version_info"] = json!(version);
        r["response_nonce"] = json!(nonce);
    }
    r.to_string()
}

/// What vmagent sends: every field, `resource_names` as null.
fn vmagent_request(version: &str, nonce: &str) -> String {
    json!({
        "version_info": version,
        "node": {"id": "vmagent-host"},
        "resource_names": null,
        "type_url": TYPE_URL,
        "response_nonce": nonce,
    })
    .to_string()
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_vmagent_exchanges_and_a_real_prometheus() {
    let dir = test_dir("mads");
    let cp = Standalone::start(&[]).await;
    let port = cp.mads_port;

    // No mesh enables Prometheus yet: nothing to assign.
    let (status, body) = mads(
        port,
        "?fetch-timeout=0s",
        &prometheus_request("", ""),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let empty: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(empty["resources"], json!([]));

    // The default mesh turns its Prometheus backend on; backend-1's proxy serves its metrics
    // on a port of its own (its Dataplane overrides the mesh's).
    put_json(
        cp.api_port,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "metrics": {
            "enabledBackend": "prometheus-1",
            "backends": [{"name": "prometheus-1", "type": "prometheus",
                          "conf": {"port": 5670, "path": "/metrics"}}]}})
        .to_string(),
    )
    .await;
    let metrics_port = free_port().await;
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n      version: v1\nmetrics:\n  type: prometheus\n  conf:\n    port: {metrics_port}\n",
        free_port().await,
        free_port().await,
    );
    let _backend = cp.proxy(&dir, "backend-1", &backend, &[]).await;

    // Prometheus's first poll: the assignment of backend-1, in exactly the shape it reads.
    let mut first = Value::Null;
    for _ in 0..100 {
        let (status, body) = mads(
            port,
            "?fetch-timeout=2m0s",
            &prometheus_request("", ""),
            false,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        first = serde_json::from_str(&body).unwrap();
        if first["resources"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        keys(&first),
        ["nonce", "resources", "type_url", "version_info"]
    );
    assert_eq!(first["type_url"], TYPE_URL);
    let resources = first["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1, "{first}");
    let assignment = &resources[0];
    assert_eq!(keys(assignment), ["@type", "mesh", "service", "targets"]);
    assert_eq!(assignment["@type"], TYPE_URL);
    assert_eq!(assignment["mesh"], "default");
    assert_eq!(assignment["service"], "backend");
    let target = &assignment["targets"][0];
    assert_eq!(
        keys(target),
        ["address", "labels", "metrics_path", "name", "scheme"]
    );
    assert_eq!(target["name"], "backend-1");
    assert_eq!(target["scheme"], "http");
    assert_eq!(target["address"], format!("127.0.0.1:{metrics_port}"));
    assert_eq!(target["metrics_path"], "/metrics");
    assert_eq!(
        target["labels"],
        json!({
            "kuma_io_service": "backend", "kuma_io_services": ",backend,",
            "kuma_io_protocol": "http", "kuma_io_protocols": ",http,",
            "version": "v1", "versions": ",v1,",
        })
    );
    let version = first["version_info"].as_str().unwrap().to_string();
    let nonce = first["nonce"].as_str().unwrap().to_string();

    // The follow-up with that version and nonce is held, then 304 with no body.
    let started = Instant::now();
    let (status, body) = mads(
        port,
        "?fetch-timeout=1s",
        &prometheus_request(&version, &nonce),
        false,
    )
    .await;
    assert_eq!((status, body.as_str()), (304, ""));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A fetch-timeout of 0 answers at once.
    let (status, _) = mads(
        port,
        "?fetch-timeout=0",
        &prometheus_request(&version, &nonce),
        false,
    )
    .await;
    assert_eq!(status, 304);

    // vmagent's request (no fetch-timeout, resource_names null), sent chunked.
    let (status, body) = mads(port, "", &vmagent_request("", ""), true).await;
    assert_eq!(status, 200, "{body}");
    let vm: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(vm["version_info"], version.as_str());
    assert_eq!(vm["resources"], first["resources"]);

    // A pending long poll wakes up when a Dataplane is added through the API.
    let held = tokio::spawn(async move {
        let r = mads(
            port,
            "?fetch-timeout=30s",
            &vmagent_request(&version, &nonce),
            true,
        )
        .await;
        (r, Instant::now())
    });
    eventually("the control plane holds the long poll", || async {
        kuma_testkit::http_get(cp.diagnostics_port, "/metrics")
            .await
            .1
            .contains("mads_requests_held 1")
    })
    .await;
    let added = Instant::now();
    put_json(
        cp.api_port,
        "/meshes/default/dataplanes/web-2",
        &json!({"type": "Dataplane", "mesh": "default", "name": "web-2", "networking": {
            "address": "192.0.2.2",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}})
        .to_string(),
    )
    .await;
    let ((status, body), answered) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let woke: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = woke["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["targets"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["backend-1", "web-2"]);
    eprintln!(
        "long poll answered {} ms after the Dataplane was added",
        answered.duration_since(added).as_millis()
    );
    assert_eq!(
        woke["resources"][1]["targets"][0]["address"],
        "192.0.2.2:5670"
    );
    eventually("the answered long poll is no longer held", || async {
        kuma_testkit::http_get(cp.diagnostics_port, "/metrics")
            .await
            .1
            .contains("mads_requests_held 0")
    })
    .await;

    // Bad requests get 400 and say what is wrong.
    for (query, body, says) in [
        (
            "?fetch-timeout=soon",
            prometheus_request("", ""),
            "fetch-timeout",
        ),
        (
            "?fetch-timeout=10",
            prometheus_request("", ""),
            "fetch-timeout",
        ),
        ("", "{not json".to_string(), "JSON"),
        ("", "[]".to_string(), "JSON object"),
        ("", r#"{"version_info": 7}"#.to_string(), "version_info"),
        (
            "",
            r#"{"resource_names": "x"}"#.to_string(),
            "resource_names",
        ),
        (
            "",
            r#"{"type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}"#.to_string(),
            "type_url",
        ),
    ] {
        let (status, answer) = mads(port, query, &body, false).await;
        assert_eq!(status, 400, "{query} {body}: {answer}");
        assert!(answer.contains(says), "{query} {body}: {answer}");
    }

    // A real Prometheus discovers backend-1 through MADS and scrapes Envoy's metrics.
    real_prometheus(&dir, port).await;
}

/// Runs Debian's Prometheus on the targets MADS on `mads_port` assigns and waits until it
/// scrapes backend-1's proxy. Debian builds Prometheus without `kuma_sd_configs`, so
/// `mads_to_file_sd.py` stands in for that discovery: it reads MADS's answer with protobuf's
/// JSON mapping, as Prometheus's client does, and hands Prometheus the same labels through
/// `file_sd_configs`.
async fn real_prometheus(dir: &std::path::Path, mads_port: u16) {
    let (status, answer) = mads(
        mads_port,
        "?fetch-timeout=0",
        &prometheus_request("", ""),
        false,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let out = kuma_testkit::run_with_stdin(
        std::process::Command::new("python3").arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/mads_to_file_sd.py"
        )),
        answer.as_bytes(),
    );
    assert!(
        out.status.success(),
        "protobuf's JSON mapping reads the MADS answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let targets_file = dir.join("kuma-targets.json");
    std::fs::write(&targets_file, &out.stdout).unwrap();

    let web_port = free_port().await;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n- job_name: kuma-dataplanes\n  file_sd_configs:\n  - files: [{}]\n    refresh_interval: 1s\n  relabel_configs:\n  - source_labels: [__meta_kuma_mesh]\n    target_label: mesh\n  - source_labels: [__meta_kuma_service]\n    target_label: service\n  - source_labels: [__meta_kuma_dataplane]\n    target_label: dataplane\n  - action: labelmap\n    regex: __meta_kuma_label_(.+)\n",
            targets_file.display()
        ),
    )
    .unwrap();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("prometheus.log"))
                .map(std::process::Stdio::from)
                .unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus runs (Debian package prometheus)");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let Ok(r) = client
                .get(format!("http://127.0.0.1:{web_port}{path}"))
                .send()
                .await
            else {
                return Value::Null;
            };
            let text = r.text().await.unwrap_or_default();
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
        }
    };
    let mut last = Value::Null;
    for _ in 0..300 {
        last = get("/api/v1/query?query=envoy_server_live%7Bdataplane%3D%22backend-1%22%7D".into())
            .await;
        if last["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sample = &last["data"]["result"][0];
    assert_eq!(
        sample["value"][1], "1",
        "Prometheus scraped backend-1: {last}"
    );
    assert_eq!(sample["metric"]["mesh"], "default", "{sample}");
    assert_eq!(sample["metric"]["service"], "backend", "{sample}");
    assert_eq!(sample["metric"]["kuma_io_service"], "backend", "{sample}");
    assert_eq!(sample["metric"]["version"], "v1", "{sample}");
    // web-2 (no proxy behind it) is a target too.
    let targets = get("/api/v1/targets?state=active".into()).await;
    let web = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["dataplane"] == "web-2")
        .unwrap_or_else(|| panic!("web-2 among the targets: {targets}"));
    assert_eq!(web["scrapeUrl"], "http://192.0.2.2:5670/metrics");
}

/// `monitoringAssignmentServer.tlsEnabled`: MADS over HTTPS with the control plane's
/// certificate, verified by curl (an independent TLS client, as Prometheus's `tls_config`
/// would); plain HTTP to the port gets no assignments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mads_over_https() {
    let cp = Standalone::start(&[("KUMA_MONITORING_ASSIGNMENT_SERVER_TLS_ENABLED", "true")]).await;
    put_json(
        cp.api_port,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "metrics": {
            "enabledBackend": "prometheus-1",
            "backends": [{"name": "prometheus-1", "type": "prometheus"}]}})
        .to_string(),
    )
    .await;
    put_json(
        cp.api_port,
        "/meshes/default/dataplanes/web-1",
        r#"{"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {"address": "192.0.2.7", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}"#,
    )
    .await;
    let url = format!("https://localhost:{}{PATH}?fetch-timeout=0s", cp.mads_port);
    let mut body = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--cacert", &cp.ca_file, "-X", "POST"])
            .args(["-H", "content-type: application/json"])
            .args(["--data", &prometheus_request("", ""), &url])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("192.0.2.7:5670") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["type_url"], TYPE_URL);
    assert_eq!(
        answer["resources"][0]["targets"][0]["address"], "192.0.2.7:5670",
        "{body}"
    );
    // Plain HTTP on the TLS port: no answer.
    let plain = kuma_testkit::http_get(cp.mads_port, PATH).await;
    assert!(!plain.1.contains(TYPE_URL), "{plain:?}");
}
