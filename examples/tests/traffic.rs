//! Mesh policies shaping real traffic: `standalone` + `kuma-dp` + Envoy per proxy + small HTTP
//! and gRPC services on loopback. Every assertion is on what a client observes through the web proxy's
//! outbound listeners, never on config text. Policies are applied and removed through the HTTP
//! API while everything keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::{Standalone, test_dir};
use kuma_testkit::{eventually, free_port};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

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
    /// A gRPC server (the `grpc.health.v1.Health` service): `Check` answers SERVING.
    GrpcOk,
    /// A gRPC server whose `Check` fails with UNAVAILABLE on every other call.
    GrpcFailEveryOther,
}

impl Behaviour {
    /// The `kuma.io/protocol` tag of a service behaving so.
    fn protocol(self) -> &'static str {
        match self {
            Behaviour::GrpcOk | Behaviour::GrpcFailEveryOther => "grpc",
            _ => "http",
        }
    }
}

/// Starts a service on 127.0.0.1 answering `name` (and echoing `x-routed`): HTTP, or gRPC for
/// the gRPC behaviours.
async fn service(name: &'static str, behaviour: Behaviour) -> u16 {
    match behaviour {
        Behaviour::GrpcOk => return grpc_service(name, false).await,
        Behaviour::GrpcFailEveryOther => return grpc_service(name, true).await,
        _ => {}
    }
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
                Behaviour::Broken | Behaviour::GrpcOk | Behaviour::GrpcFailEveryOther => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
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

/// The gRPC test service: `grpc.health.v1.Health/Check` answering SERVING with its name in
/// the `x-served-by` response metadata and the request's `x-routed` in `x-seen-routed`.
struct GrpcReplier {
    name: &'static str,
    fail_every_other: bool,
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Health for GrpcReplier {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_every_other && n.is_multiple_of(2) {
            return Err(tonic::Status::unavailable("every other call fails"));
        }
        let routed = request
            .metadata()
            .get("x-routed")
            .cloned()
            .unwrap_or_else(|| MetadataValue::from_static(""));
        let mut response = tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        });
        let md = response.metadata_mut();
        md.insert("x-served-by", MetadataValue::from_static(self.name));
        md.insert("x-seen-routed", routed);
        Ok(response)
    }

    type WatchStream = tonic::codegen::BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the test service only answers Check",
        ))
    }
}

async fn grpc_service(name: &'static str, fail_every_other: bool) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let replier = GrpcReplier {
        name,
        fail_every_other,
        calls: AtomicU64::new(0),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(replier))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    port
}

/// What a gRPC client saw: the backend that served the call and the `x-routed` it was sent
/// with, or the call's status code.
type GrpcOutcome = Result<(String, String), tonic::Code>;

struct Mesh {
    cp: Standalone,
    http: reqwest::Client,
    dps: Vec<common::Dp>,
    /// web's outbound port per service.
    outbound: std::collections::BTreeMap<&'static str, u16>,
}

impl Mesh {
    /// Calls the HTTP API: (status, response body).
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.cp.api_port);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).unwrap());
        }
        let response = req.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap_or_default())
    }

    async fn apply(&self, policy: Value) {
        let path = format!(
            "/meshes/default/{}/{}",
            collection(policy["type"].as_str().unwrap()),
            policy["name"].as_str().unwrap()
        );
        let (status, body) = self.api(reqwest::Method::PUT, &path, Some(policy)).await;
        assert!(status.is_success(), "PUT {path}: {status} {body}");
    }

    async fn remove(&self, rtype: &str, name: &str) {
        let path = format!("/meshes/default/{}/{name}", collection(rtype));
        let (status, body) = self.api(reqwest::Method::DELETE, &path, None).await;
        assert!(status.is_success(), "DELETE {path}: {status} {body}");
    }

    /// GET / through web's outbound to `service`: (status, body, x-seen-routed).
    async fn call(&self, service: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        self.call_path(service, "/", headers).await
    }

    /// GET `path` through web's outbound to `service`: (status, body, x-seen-routed).
    async fn call_path(
        &self,
        service: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let port = self.outbound[service];
        let mut req = self.http.get(format!("http://127.0.0.1:{port}{path}"));
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

impl Mesh {
    /// The web proxy's Envoy statistics (admin `/stats`).
    async fn web_stats(&self) -> String {
        let web = self.dps.last().expect("web runs last");
        kuma_testkit::http_get(web.admin_port, "/stats").await.1
    }

    /// `grpc.health.v1.Health/Check` through web's outbound to `service`, over HTTP/2 on a
    /// fresh connection.
    async fn grpc_call(
        &self,
        service: &str,
        headers: &[(&'static str, &'static str)],
    ) -> GrpcOutcome {
        let url = format!("http://127.0.0.1:{}", self.outbound[service]);
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        for (k, v) in headers {
            request
                .metadata_mut()
                .insert(*k, MetadataValue::from_static(v));
        }
        let response = HealthClient::new(channel)
            .check(request)
            .await
            .map_err(|s| s.code())?;
        let md = response.metadata();
        let text = |k: &str| {
            md.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            response.get_ref().status,
            i32::from(ServingStatus::Serving),
            "the status crossed both proxies intact"
        );
        Ok((text("x-served-by"), text("x-seen-routed")))
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
    let mut inbounds = Vec::new();
    for (name, svc, version, address, behaviour) in endpoints {
        let app = service(version, *behaviour).await;
        let inbound = free_port().await;
        inbounds.push((*address, inbound));
        let protocol = behaviour.protocol();
        let yaml = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    serviceAddress: 127.0.0.1\n    tags:\n      kuma.io/service: {svc}\n      kuma.io/protocol: {protocol}\n      version: {version}\n"
        );
        // Connections accepted before a policy change keep the old filter chain until
        // Envoy's drain time ends: a short one lets scenarios wait them out.
        dps.push(cp.proxy(&dir, name, &yaml, &["--drain-time", "1s"]).await);
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
    dps.push(cp.proxy(&dir, "web-1", &yaml, &[]).await);
    let mesh = Mesh {
        cp,
        http,
        dps,
        outbound,
    };
    // Kuma's default retries would hide the failures some scenarios start from.
    mesh.remove("MeshRetry", "mesh-retry-all-default").await;
    // Every endpoint's own Envoy serves its inbound, and web's Envoy knows every endpoint,
    // before a scenario counts anything.
    for (address, port) in &inbounds {
        eventually(&format!("the inbound {address}:{port} answers"), || async {
            kuma_testkit::http_get_at(address, *port, "/").await.0 != 0
        })
        .await;
    }
    eventually("web's Envoy knows every endpoint", || async {
        let clusters = kuma_testkit::http_get(mesh.dps.last().unwrap().admin_port, "/clusters")
            .await
            .1;
        endpoints
            .iter()
            .all(|(_, _, _, address, _)| clusters.contains(&format!("::{address}:")))
    })
    .await;
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
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                  "headers": [{"name": "x-version", "value": "v2"}]}],
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

/// A policy whose top-level targetRef is a MeshHTTPRoute applies to that route's rules only:
/// a 500 ms request timeout on `/report` turns the 2 s answer into a 504 there, while the
/// service's other requests keep the mesh's 15 s timeout and get their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_targeted_timeout_applies_to_its_route_only() {
    let mesh = start_mesh(
        "route-timeout",
        &[(
            "slow-1",
            "slow",
            "v1",
            "127.0.0.31",
            Behaviour::Slow(Duration::from_secs(2)),
        )],
        &["slow"],
    )
    .await;
    mesh.apply(json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "slow-routes",
        "spec": {"targetRef": {"kind": "MeshService", "name": "web"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "slow"},
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/report"}}],
                "default": {"filters": [{"type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-routed", "value": "report"}]}}]}
            }]}]}
    }))
    .await;
    // The route is in force before the timeout exists: /report answers, through the route.
    eventually("the /report route is in force", || async {
        mesh.call_path("slow", "/report", &[]).await == (200, "v1".into(), "report".into())
    })
    .await;
    mesh.apply(json!({
        "type": "MeshTimeout", "mesh": "default", "name": "report-timeout",
        "spec": {"targetRef": {"kind": "MeshHTTPRoute", "name": "slow-routes"}, "to": [{
            "targetRef": {"kind": "Mesh"},
            "default": {"http": {"requestTimeout": "500ms"}}}]}
    }))
    .await;
    eventually("/report times out", || async {
        mesh.call_path("slow", "/report", &[]).await.0 == 504
    })
    .await;
    for path in ["/report", "/report/monthly"] {
        assert_eq!(mesh.call_path("slow", path, &[]).await.0, 504, "{path}");
    }
    for path in ["/", "/other"] {
        let (status, body, routed) = mesh.call_path("slow", path, &[]).await;
        assert_eq!(
            (status, body.as_str(), routed.as_str()),
            (200, "v1", ""),
            "{path}"
        );
    }
    // The inspection API says which routes the policy's conf applies to.
    let (status, body) = mesh
        .api(
            reqwest::Method::GET,
            "/meshes/default/dataplanes/web-1/_rules",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let timeout = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "MeshTimeout")
        .expect("MeshTimeout rules");
    let per_route: Vec<&Value> = timeout["toRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let positive = |key: &str| {
                r["matchers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["key"] == key && m["not"] == false)
                    .map(|m| m["value"].clone())
            };
            positive("kuma.io/service") == Some(json!("slow"))
                && positive("__rule-matches-hash__").is_some()
        })
        .collect();
    assert_eq!(per_route.len(), 1, "{timeout}");
    assert_eq!(per_route[0]["conf"]["http"]["requestTimeout"], "500ms");
    // Without its route the policy selects nothing: /report gets its answer again.
    mesh.remove("MeshHTTPRoute", "slow-routes").await;
    eventually("/report answers once the route is gone", || async {
        mesh.call_path("slow", "/report", &[]).await == (200, "v1".into(), "".into())
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
    // Connections the caller opened before the policy are served by the filter chain they
    // were accepted on, without the limit, until the backend's Envoy closes them (it drains
    // the old chain): wait until it has the limit and, with no call in flight, no connection
    // on its inbound is left, so that every call from here on is on the new chain.
    let backend_admin = mesh.dps[0].admin_port;
    eventually(
        "the backend's Envoy has the limit and no older connection",
        || async {
            let (_, dump) = kuma_testkit::http_get(backend_admin, "/config_dump").await;
            let (_, stats) = kuma_testkit::http_get(backend_admin, "/stats").await;
            let inbound_connections: u64 = stats
                .lines()
                .filter(|l| {
                    l.starts_with("listener.127.0.0.31_") && l.contains(".downstream_cx_active:")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            dump.contains("envoy.filters.http.local_ratelimit") && inbound_connections == 0
        },
    )
    .await;
    eventually("requests past the rate get 429", || async {
        let mut limited = true;
        for _ in 0..3 {
            limited &= mesh.call("backend", &[]).await.0 == 429;
        }
        limited
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_flows_routes_and_retries() {
    let mesh = start_mesh(
        "grpc",
        &[
            (
                "greeter-v1",
                "greeter",
                "v1",
                "127.0.0.41",
                Behaviour::GrpcOk,
            ),
            (
                "greeter-v2",
                "greeter",
                "v2",
                "127.0.0.42",
                Behaviour::GrpcOk,
            ),
            (
                "flakyrpc-1",
                "flakyrpc",
                "v1",
                "127.0.0.43",
                Behaviour::GrpcFailEveryOther,
            ),
        ],
        &["greeter", "flakyrpc"],
    )
    .await;

    // gRPC crosses both proxies (HTTP/2 end to end) and reaches both versions.
    eventually("gRPC reaches greeter", || async {
        mesh.grpc_call("greeter", &[]).await.is_ok()
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (served_by, _) = mesh.grpc_call("greeter", &[]).await.unwrap();
        seen.insert(served_by);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);

    // A gRPC failure reaches the client as its gRPC status; MeshRetry's grpc section retries
    // UNAVAILABLE until every call succeeds.
    let mut unavailable = 0;
    for _ in 0..20 {
        match mesh.grpc_call("flakyrpc", &[]).await {
            Ok(_) => {}
            Err(tonic::Code::Unavailable) => unavailable += 1,
            Err(other) => panic!("unexpected gRPC status {other:?}"),
        }
    }
    assert!(
        unavailable >= 8,
        "only {unavailable} of 20 calls failed before retries"
    );
    mesh.apply(json!({
        "type": "MeshRetry", "mesh": "default", "name": "grpc-retries",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "flakyrpc"},
            "default": {"grpc": {"numRetries": 3, "retryOn": ["Unavailable"]}}}]}
    }))
    .await;
    eventually("20 gRPC calls in a row succeed", || async {
        for _ in 0..20 {
            if mesh.grpc_call("flakyrpc", &[]).await.is_err() {
                return false;
            }
        }
        true
    })
    .await;

    // MeshHTTPRoute routes gRPC by its path and metadata: everything to v1, except calls
    // carrying `x-version: v2`, which go to v2 with a header added on the way.
    mesh.apply(json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "greeter-routes",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "greeter"},
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/grpc.health.v1.Health"}}],
                     "default": {"backendRefs": [
                        {"kind": "MeshServiceSubset", "name": "greeter", "tags": {"version": "v1"}}]}},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/grpc.health.v1.Health"},
                                  "headers": [{"name": "x-version", "value": "v2"}]}],
                     "default": {
                        "backendRefs": [{"kind": "MeshServiceSubset", "name": "greeter", "tags": {"version": "v2"}}],
                        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-routed", "value": "by-metadata"}]}}]}}
                ]
            }]
        }
    }))
    .await;
    eventually("the metadata route is in force", || async {
        mesh.grpc_call("greeter", &[("x-version", "v2")]).await
            == Ok(("v2".into(), "by-metadata".into()))
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            mesh.grpc_call("greeter", &[("x-version", "v2")]).await,
            Ok(("v2".into(), "by-metadata".into()))
        );
        assert_eq!(
            mesh.grpc_call("greeter", &[]).await,
            Ok(("v1".into(), String::new()))
        );
    }

    // MeshFaultInjection on greeter's inbounds: the HTTP 503 abort reaches a gRPC client as
    // UNAVAILABLE; removing it restores service.
    mesh.apply(json!({
        "type": "MeshFaultInjection", "mesh": "default", "name": "greeter-abort",
        "spec": {"targetRef": {"kind": "MeshService", "name": "greeter"}, "from": [{
            "targetRef": {"kind": "Mesh"},
            "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 100}}]}}]}
    }))
    .await;
    eventually("gRPC calls are aborted", || async {
        mesh.grpc_call("greeter", &[]).await == Err(tonic::Code::Unavailable)
    })
    .await;
    mesh.remove("MeshFaultInjection", "greeter-abort").await;
    eventually("gRPC calls succeed again", || async {
        mesh.grpc_call("greeter", &[]).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_ejects_a_failing_endpoint() {
    let mesh = start_mesh(
        "outlier",
        &[
            ("duo-ok", "duo", "ok", "127.0.0.51", Behaviour::Ok),
            (
                "duo-broken",
                "duo",
                "broken",
                "127.0.0.52",
                Behaviour::Broken,
            ),
        ],
        &["duo"],
    )
    .await;
    // Round robin over both endpoints: about half the calls fail.
    let mut failures = 0;
    for _ in 0..20 {
        if mesh.call("duo", &[]).await.0 != 200 {
            failures += 1;
        }
    }
    assert!(
        failures >= 5,
        "only {failures} of 20 failed before the circuit breaker"
    );

    // Outlier detection (no active health check): two consecutive 5xx eject the endpoint for a
    // minute, and from then on every call succeeds.
    mesh.apply(json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "duo-outliers",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "duo"},
            "default": {"outlierDetection": {
                "interval": "1s", "baseEjectionTime": "1m", "maxEjectionPercent": 50,
                "detectors": {"totalFailures": {"consecutive": 2}}}}}]}
    }))
    .await;
    eventually("the failing endpoint is ejected", || async {
        for _ in 0..20 {
            if mesh.call("duo", &[]).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;
    let stats = mesh.web_stats().await;
    let ejected: u64 = stats
        .lines()
        .filter(|l| {
            l.contains("duo") && l.contains("outlier_detection.ejections_enforced_consecutive_5xx:")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        ejected >= 1,
        "Envoy counted no consecutive-5xx ejection:\n{stats}"
    );
}

/// A TCP log collector: every line it receives, in order.
async fn collector() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
    });
    (port, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_reach_a_tcp_collector() {
    let mesh = start_mesh(
        "access-log",
        &[("logged-1", "logged", "v1", "127.0.0.61", Behaviour::Ok)],
        &["logged"],
    )
    .await;
    let (port, lines) = collector().await;
    // Both formats to one collector: a plain line from web's outbound, a JSON object from
    // the backend's inbound. Envoy writes them to kuma-dp's pipe; kuma-dp forwards them.
    mesh.apply(json!({
        "type": "MeshAccessLog", "mesh": "default", "name": "to-collector",
        "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "logged"}, "default": {"backends": [
                {"type": "Tcp", "tcp": {"address": format!("127.0.0.1:{port}"), "format": {
                    "type": "Plain",
                    "plain": "plain %KUMA_SOURCE_SERVICE% -> %KUMA_DESTINATION_SERVICE% %RESPONSE_CODE% %REQ(X-MARK)%"}}}]}}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "Tcp", "tcp": {"address": format!("127.0.0.1:{port}"), "format": {
                    "type": "Json",
                    "json": [{"key": "mesh", "value": "%KUMA_MESH%"},
                             {"key": "destination", "value": "%KUMA_DESTINATION_SERVICE%"},
                             {"key": "mark", "value": "%REQ(X-MARK)%"}]}}}]}}]}
    }))
    .await;
    // Once the logs are configured, a marked request shows up in both formats.
    let mut n = 0;
    eventually("marked requests reach the collector", || {
        n += 1;
        let mark = format!("m{n}");
        let (lines, mesh) = (&lines, &mesh);
        async move {
            let status = mesh.call("logged", &[("x-mark", mark.as_str())]).await.0;
            assert_eq!(status, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got = lines.lock().unwrap().clone();
            let plain = got.contains(&format!("plain web -> logged 200 {mark}"));
            let json = got.iter().any(|l| {
                serde_json::from_str::<Value>(l).ok()
                    == Some(json!({"mesh": "default", "destination": "logged", "mark": mark}))
            });
            plain && json
        }
    })
    .await;
    // Removing the policy stops the flow: soon a newly marked request is logged nowhere.
    mesh.remove("MeshAccessLog", "to-collector").await;
    let mut n = 0;
    eventually("requests are no longer logged", || {
        n += 1;
        let mark = format!("after{n}");
        let (lines, mesh) = (&lines, &mesh);
        async move {
            mesh.call("logged", &[("x-mark", mark.as_str())]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            !lines.lock().unwrap().iter().any(|l| l.contains(&mark))
        }
    })
    .await;
}
