//! Mesh policies shaping real traffic: `standalone` + `kuma-dp` + Envoy per proxy + small HTTP
//! services on loopback. Every assertion is on what a client observes through the web proxy's
//! outbound listeners, never on config text. Policies are applied and removed through the HTTP
//! API while everything keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::{Standalone, kuma_dp, test_dir};
use kuma_testkit::{eventually, free_port};
use serde_json::{Value, json};

/// How a test service answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with its name.
    Ok,
    /// 503 on every other request.
    FailEveryOther,
    /// Answers after a while.
    Slow(Duration),
    /// 500 always.
    Broken,
}

/// Starts an HTTP service on 127.0.0.1 answering `name` (and echoing `x-routed`).
async fn service(name: &'static str, behaviour: Behaviour) -> u16 {
    let count = Arc::new(AtomicU64::new(0));
    let handler = move |headers: HeaderMap| {
        let count = count.clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let routed = headers
                .get("x-routed")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let status = match behaviour {
                Behaviour::Ok => StatusCode::OK,
                Behaviour::FailEveryOther if n.is_multiple_of(2) => StatusCode::SERVICE_UNAVAILABLE,
                Behaviour::FailEveryOther => StatusCode::OK,
                Behaviour::Slow(d) => {
                    tokio::time::sleep(d).await;
                    StatusCode::OK
                }
                Behaviour::Broken => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, [("x-seen-routed", routed)], name)
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct Mesh {
    cp: Standalone,
    http: reqwest::Client,
    _dps: Vec<common::Dp>,
    /// web's outbound port per service.
    outbound: std::collections::BTreeMap<&'static str, u16>,
}

impl Mesh {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> StatusCode {
        let url = format!("http://127.0.0.1:{}{path}", self.cp.api_port);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).unwrap());
        }
        let status = req.send().await.unwrap().status();
        StatusCode::from_u16(status.as_u16()).unwrap()
    }

    async fn apply(&self, policy: Value) {
        let path = format!(
            "/meshes/default/{}/{}",
            collection(policy["type"].as_str().unwrap()),
            policy["name"].as_str().unwrap()
        );
        let status = self.api(reqwest::Method::PUT, &path, Some(policy)).await;
        assert!(status.is_success(), "PUT {path}: {status}");
    }

    async fn remove(&self, rtype: &str, name: &str) {
        let path = format!("/meshes/default/{}/{name}", collection(rtype));
        let status = self.api(reqwest::Method::DELETE, &path, None).await;
        assert!(status.is_success(), "DELETE {path}: {status}");
    }

    /// GET through web's outbound to `service`: (status, body, x-seen-routed).
    async fn call(&self, service: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let port = self.outbound[service];
        let mut req = self.http.get(format!("http://127.0.0.1:{port}/"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let routed = r
                    .headers()
                    .get("x-seen-routed")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (status, r.text().await.unwrap_or_default(), routed)
            }
            Err(_) => (0, String::new(), String::new()),
        }
    }
}

fn collection(rtype: &str) -> &'static str {
    kuma_core::resource::ResourceType::from_name(rtype)
        .and_then(|t| t.collection())
        .unwrap_or_else(|| panic!("no collection for {rtype}"))
}

/// One proxied endpoint: Dataplane name, service, version, address, behaviour.
type Endpoint = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Behaviour,
);

async fn start_mesh(test: &str, endpoints: &[Endpoint], services: &[&'static str]) -> Mesh {
    let dir = test_dir(test);
    let cp = Standalone::start(&[]).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut dps = Vec::new();
    for (name, svc, version, address, behaviour) in endpoints {
        let app = service(version, *behaviour).await;
        let inbound = free_port().await;
        let yaml = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    serviceAddress: 127.0.0.1\n    tags:\n      kuma.io/service: {svc}\n      kuma.io/protocol: http\n      version: {version}\n"
        );
        dps.push(kuma_dp(&dir, cp.dp_port, &cp.ca_file, name, &yaml).await);
    }
    let web_app = service("web", Behaviour::Ok).await;
    let web_in = free_port().await;
    let mut outbound = std::collections::BTreeMap::new();
    let mut yaml = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {web_in}\n    servicePort: {web_app}\n    tags:\n      kuma.io/service: web\n      kuma.io/protocol: http\n  outbound:\n"
    );
    for svc in services {
        let port = free_port().await;
        outbound.insert(*svc, port);
        yaml.push_str(&format!(
            "  - port: {port}\n    tags:\n      kuma.io/service: {svc}\n"
        ));
    }
    dps.push(kuma_dp(&dir, cp.dp_port, &cp.ca_file, "web-1", &yaml).await);
    let mesh = Mesh {
        cp,
        http,
        _dps: dps,
        outbound,
    };
    // Kuma's default retries would hide the failures some scenarios start from.
    mesh.remove("MeshRetry", "mesh-retry-all-default").await;
    for svc in services {
        eventually(&format!("traffic flows web -> {svc}"), || async {
            mesh.call(svc, &[]).await.0 != 0
        })
        .await;
    }
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_split_and_match_real_traffic() {
    let mesh = start_mesh(
        "routes",
        &[
            ("backend-v1", "backend", "v1", "127.0.0.11", Behaviour::Ok),
            ("backend-v2", "backend", "v2", "127.0.0.12", Behaviour::Ok),
        ],
        &["backend"],
    )
    .await;
    // Plain HTTP reaches both versions.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, body, _) = mesh.call("backend", &[]).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);

    mesh.apply(json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "split",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "default": {"backendRefs": [
                        {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 80},
                        {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 20}]}},
                    {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
                     "default": {
                        "backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}],
                        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-routed", "value": "by-header"}]}}]}}
                ]
            }]
        }
    }))
    .await;
    // The header rule is in force once a request carrying it is rewritten on its way.
    eventually("the header route is in force", || async {
        mesh.call("backend", &[("x-version", "v2")]).await.2 == "by-header"
    })
    .await;
    for _ in 0..20 {
        let (status, body, routed) = mesh.call("backend", &[("x-version", "v2")]).await;
        assert_eq!(
            (status, body.as_str(), routed.as_str()),
            (200, "v2", "by-header")
        );
    }
    // 80/20: with n = 400 the v1 count has mean 320 and standard deviation 8; accept 5 sd.
    let mut v1 = 0;
    for _ in 0..400 {
        let (status, body, _) = mesh.call("backend", &[]).await;
        assert_eq!(status, 200);
        if body == "v1" {
            v1 += 1;
        }
    }
    assert!((280..=360).contains(&v1), "v1 got {v1} of 400 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilience_policies_change_what_clients_see() {
    let mesh = start_mesh(
        "resilience",
        &[
            (
                "flaky-1",
                "flaky",
                "v1",
                "127.0.0.21",
                Behaviour::FailEveryOther,
            ),
            (
                "slow-1",
                "slow",
                "v1",
                "127.0.0.22",
                Behaviour::Slow(Duration::from_secs(3)),
            ),
            ("pair-ok", "pair", "ok", "127.0.0.23", Behaviour::Ok),
            (
                "pair-broken",
                "pair",
                "broken",
                "127.0.0.24",
                Behaviour::Broken,
            ),
        ],
        &["flaky", "slow", "pair"],
    )
    .await;

    // Without retries every other request fails; MeshRetry turns that into all successes.
    let mut failures = 0;
    for _ in 0..20 {
        if mesh.call("flaky", &[]).await.0 != 200 {
            failures += 1;
        }
    }
    assert!(failures >= 8, "only {failures} of 20 failed before retries");
    mesh.apply(json!({
        "type": "MeshRetry", "mesh": "default", "name": "flaky-retries",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "flaky"},
            "default": {"http": {"numRetries": 3, "retryOn": ["503"]}}}]}
    }))
    .await;
    eventually("20 requests in a row succeed", || async {
        for _ in 0..20 {
            if mesh.call("flaky", &[]).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;

    // MeshTimeout: a 1 s request timeout turns a 3 s answer into a 504 after about 1 s. (Its
    // top-level targetRef is more specific than the default timeout's `Mesh`, so it wins.)
    mesh.apply(json!({
        "type": "MeshTimeout", "mesh": "default", "name": "slow-timeout",
        "spec": {"targetRef": {"kind": "MeshService", "name": "web"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "slow"},
            "default": {"http": {"requestTimeout": "1s"}}}]}
    }))
    .await;
    eventually("slow answers 504", || async {
        mesh.call("slow", &[]).await.0 == 504
    })
    .await;
    let started = Instant::now();
    assert_eq!(mesh.call("slow", &[]).await.0, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "timed out after {took:?}"
    );

    // MeshHealthCheck ejects the broken endpoint of `pair`: then every request succeeds.
    let mut broken = 0;
    for _ in 0..20 {
        if mesh.call("pair", &[]).await.0 == 500 {
            broken += 1;
        }
    }
    assert!(
        broken > 0,
        "the broken endpoint got no traffic before the health check"
    );
    mesh.apply(json!({
        "type": "MeshHealthCheck", "mesh": "default", "name": "pair-check",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "pair"},
            "default": {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 1,
                        "healthyThreshold": 1, "http": {"path": "/"}}}]}
    }))
    .await;
    eventually("the broken endpoint is ejected", || async {
        for _ in 0..20 {
            if mesh.call("pair", &[]).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policies_abort_and_limit() {
    let mesh = start_mesh(
        "inbound",
        &[("backend-1", "backend", "v1", "127.0.0.31", Behaviour::Ok)],
        &["backend"],
    )
    .await;
    assert_eq!(mesh.call("backend", &[]).await.0, 200);

    // MeshFaultInjection on the backend's inbound: every request aborted with 418 ...
    mesh.apply(json!({
        "type": "MeshFaultInjection", "mesh": "default", "name": "teapot",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{
            "targetRef": {"kind": "Mesh"},
            "default": {"http": [{"abort": {"httpStatus": 418, "percentage": 100}}]}}]}
    }))
    .await;
    eventually("requests are aborted with 418", || async {
        mesh.call("backend", &[]).await.0 == 418
    })
    .await;
    // ... and removing the policy restores traffic, nothing restarted.
    mesh.remove("MeshFaultInjection", "teapot").await;
    eventually("requests succeed again", || async {
        mesh.call("backend", &[]).await.0 == 200
    })
    .await;

    // MeshRateLimit: 3 requests per minute, then 429.
    mesh.apply(json!({
        "type": "MeshRateLimit", "mesh": "default", "name": "three-a-minute",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{
            "targetRef": {"kind": "Mesh"},
            "default": {"local": {"http": {"requestRate": {"num": 3, "interval": "1m"}}}}}]}
    }))
    .await;
    eventually("requests past the rate get 429", || async {
        mesh.call("backend", &[]).await.0 == 429
    })
    .await;
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..5 {
            s.push(mesh.call("backend", &[]).await.0);
        }
        s
    };
    assert_eq!(
        statuses, [429; 5],
        "the bucket stays empty within the minute"
    );
}
