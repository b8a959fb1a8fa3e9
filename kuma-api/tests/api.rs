//! The API router over a memory store, called as a local admin and as a remote client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use kuma_api::access::{Identity, UserTokenValidator};
use kuma_api::{ApiState, ServerInfo, router};
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_store::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "10.1.2.3:40000";

struct Api {
    state: Arc<ApiState>,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

/// Accepts the token `good-admin` (an admin) and `good-user` (a plain user).
struct FixedTokens;

#[async_trait::async_trait]
impl UserTokenValidator for FixedTokens {
    async fn validate(&self, token: &str) -> Result<Identity, kuma_api::BoxError> {
        match token {
            "good-admin" => Ok(Identity::admin()),
            "good-user" => Ok(Identity {
                name: "jane".into(),
                groups: vec!["mesh-system:authenticated".into()],
            }),
            _ => Err("signature does not verify".into()),
        }
    }
}

impl Api {
    async fn new(configure: impl FnOnce(&mut ApiState)) -> Api {
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
        manager.ensure_default_mesh().await.unwrap();
        let mut state = ApiState::new(manager, ServerInfo::local("test-host"));
        state.tokens = Some(Arc::new(FixedTokens));
        configure(&mut state);
        Api {
            state: Arc::new(state),
        }
    }

    async fn call(
        &self,
        from: &str,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "cp.example:5681");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(body.to_string())).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, etag, body }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(LOCAL, "GET", uri, &[], "").await
    }

    async fn put(&self, uri: &str, body: Value) -> Reply {
        self.call(LOCAL, "PUT", uri, &[], &body.to_string()).await
    }
}

fn dataplane(name: &str, service: &str, port: u32) -> Value {
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "labels": {"team": if port.is_multiple_of(2) { "even" } else { "odd" }},
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": port, "tags": {"kuma.io/service": service}}]
        }
    })
}

#[tokio::test]
async fn create_update_get_delete() {
    let api = Api::new(|_| {}).await;
    let index = api.get("/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.body["hostname"], "test-host");
    assert_eq!(index.body["product"], "Kuma");

    let mesh = json!({"type": "Mesh", "name": "demo"});
    assert_eq!(
        api.put("/meshes/demo", mesh.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(api.put("/meshes/demo", mesh).await.status, StatusCode::OK);
    let got = api.get("/meshes/demo").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["type"], "Mesh");
    assert_eq!(got.body["name"], "demo");
    assert!(got.body["creationTime"].is_string());

    let dp = dataplane("web-1", "web", 8080);
    let created = api
        .put("/meshes/default/dataplanes/web-1", dp.clone())
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let got = api.get("/meshes/default/dataplanes/web-1").await;
    assert_eq!(got.body["networking"]["inbound"][0]["port"], 8080);
    // Mesh-scoped types list across meshes at the top level too.
    assert_eq!(api.get("/dataplanes").await.body["total"], 1);

    let deleted = api
        .call(LOCAL, "DELETE", "/meshes/default/dataplanes/web-1", &[], "")
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let gone = api.get("/meshes/default/dataplanes/web-1").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["type"], "/std-errors");
    assert_eq!(gone.body["status"], 404);
    assert_eq!(
        api.get("/meshes/nope/dataplanes").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/meshes/default/nothings").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/no/such/endpoint/at/all").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn invalid_resources_name_their_fields() {
    let api = Api::new(|_| {}).await;
    let mut dp = dataplane("web-1", "web", 8080);
    dp["networking"]["inbound"][0]["tags"] = json!({});
    let r = api.put("/meshes/default/dataplanes/web-1", dp).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["title"], "Could not process a resource");
    assert_eq!(r.body["detail"], "Resource is not valid");
    let fields: Vec<&str> = r.body["invalid_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with("networking.inbound[0].tags")),
        "{fields:?}"
    );

    let r = api
        .put(
            "/meshes/default/dataplanes/other",
            dataplane("web-1", "web", 8080),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["invalid_parameters"][0]["field"], "name");

    let r = api
        .call(
            LOCAL,
            "PUT",
            "/meshes/default/dataplanes/x",
            &[],
            "{not json",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = api
        .put("/meshes/missing/dataplanes/web-1", {
            let mut d = dataplane("web-1", "web", 8080);
            d["mesh"] = json!("missing");
            d
        })
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["invalid_parameters"][0]["field"], "mesh",
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn stale_if_match_is_a_conflict() {
    let api = Api::new(|_| {}).await;
    api.put(
        "/meshes/default/dataplanes/web-1",
        dataplane("web-1", "web", 8080),
    )
    .await;
    let first = api.get("/meshes/default/dataplanes/web-1").await;
    let etag = first.etag.expect("ETag on GET");
    let ok = api
        .call(
            LOCAL,
            "PUT",
            "/meshes/default/dataplanes/web-1",
            &[("If-Match", &etag)],
            &dataplane("web-1", "web", 8081).to_string(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let stale = api
        .call(
            LOCAL,
            "PUT",
            "/meshes/default/dataplanes/web-1",
            &[("If-Match", &etag)],
            &dataplane("web-1", "web", 8082).to_string(),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{:?}", stale.body);
    assert_eq!(stale.body["title"], "Conflict");
    let now = api.get("/meshes/default/dataplanes/web-1").await;
    assert_eq!(
        now.body["networking"]["inbound"][0]["port"], 8081,
        "the stale write changed nothing"
    );
}

#[tokio::test]
async fn paging_and_filters() {
    let api = Api::new(|_| {}).await;
    for i in 0..25u32 {
        let service = if i < 5 { "backend" } else { "web" };
        let r = api
            .put(
                &format!("/meshes/default/dataplanes/dp-{i:02}"),
                dataplane(&format!("dp-{i:02}"), service, 8000 + i),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut names = Vec::new();
    let mut url = "/meshes/default/dataplanes?size=10".to_string();
    loop {
        let page = api.get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.body["total"], 25);
        for item in page.body["items"].as_array().unwrap() {
            names.push(item["name"].as_str().unwrap().to_string());
        }
        match page.body["next"].as_str() {
            Some(next) => {
                let rest = next
                    .strip_prefix("http://cp.example:5681")
                    .expect("absolute next URL");
                assert!(rest.contains("size=10"), "{rest}");
                url = rest.to_string();
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("dp-{i:02}")).collect();
    assert_eq!(names, expected, "every item once, in name order");

    let backend = api
        .get("/meshes/default/dataplanes?tag=kuma.io/service:backend")
        .await;
    assert_eq!(backend.body["total"], 5);
    let named = api.get("/meshes/default/dataplanes?name=dp-1").await;
    assert_eq!(named.body["total"], 10);
    let even = api
        .get("/meshes/default/dataplanes?filter%5Blabels.team%5D=even")
        .await;
    assert_eq!(even.body["total"], 13);
    let gateways = api.get("/meshes/default/dataplanes?gateway=true").await;
    assert_eq!(gateways.body["total"], 0);
    let sidecars = api.get("/meshes/default/dataplanes?gateway=false").await;
    assert_eq!(sidecars.body["total"], 25);

    for bad in [
        "size=0",
        "size=1001",
        "size=x",
        "offset=999",
        "gateway=maybe",
        "tag=nocolon",
    ] {
        let r = api.get(&format!("/meshes/default/dataplanes?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            r.body["invalid_parameters"][0]["field"].is_string(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn remote_callers_need_a_token_and_secrets_need_an_admin() {
    let api = Api::new(|_| {}).await;
    let secret = json!({"type": "Secret", "mesh": "default", "name": "s1", "data": "c2VjcmV0"});
    let dp = dataplane("web-1", "web", 8080).to_string();

    // Anonymous remote: reads yes, writes no, secrets never.
    let who = api.call(REMOTE, "GET", "/who-am-i", &[], "").await;
    assert_eq!(who.body["name"], "mesh-system:anonymous");
    assert_eq!(
        api.call(REMOTE, "GET", "/meshes", &[], "").await.status,
        StatusCode::OK
    );
    let write = api
        .call(REMOTE, "PUT", "/meshes/default/dataplanes/web-1", &[], &dp)
        .await;
    assert_eq!(write.status, StatusCode::UNAUTHORIZED);
    let secrets = api
        .call(REMOTE, "GET", "/meshes/default/secrets", &[], "")
        .await;
    assert_eq!(secrets.status, StatusCode::FORBIDDEN);

    // A token that does not verify is refused outright.
    let bad = api
        .call(
            REMOTE,
            "GET",
            "/meshes",
            &[("Authorization", "Bearer forged")],
            "",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap()
            .contains("invalid user token")
    );

    // A plain user writes ordinary resources but not secrets.
    let user = [("Authorization", "Bearer good-user")];
    let write = api
        .call(
            REMOTE,
            "PUT",
            "/meshes/default/dataplanes/web-1",
            &user,
            &dp,
        )
        .await;
    assert_eq!(write.status, StatusCode::CREATED);
    let put_secret = api
        .call(
            REMOTE,
            "PUT",
            "/meshes/default/secrets/s1",
            &user,
            &secret.to_string(),
        )
        .await;
    assert_eq!(put_secret.status, StatusCode::FORBIDDEN);

    // An admin token, like localhost, may do everything.
    let admin = [("Authorization", "Bearer good-admin")];
    let put_secret = api
        .call(
            REMOTE,
            "PUT",
            "/meshes/default/secrets/s1",
            &admin,
            &secret.to_string(),
        )
        .await;
    assert_eq!(put_secret.status, StatusCode::CREATED);
    let local = api.get("/meshes/default/secrets/s1").await;
    assert_eq!(local.status, StatusCode::OK);
    assert_eq!(local.body["data"], "c2VjcmV0");
}

#[tokio::test]
async fn read_only_mode_refuses_writes() {
    let api = Api::new(|s| s.read_only = true).await;
    let r = api
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.get("/meshes/default").await.status, StatusCode::OK);
    let insight = api
        .put(
            "/meshes/default/dataplane-insights/x",
            json!({"type": "DataplaneInsight", "mesh": "default", "name": "x"}),
        )
        .await;
    assert_eq!(insight.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn catalogues() {
    let api = Api::new(|_| {}).await;
    let resources = api.get("/_resources").await;
    let names: Vec<&str> = resources.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Dataplane") && names.contains(&"MeshTimeout"));
    let find = |name: &str| {
        resources.body["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let route = find("MeshHTTPRoute");
    assert_eq!(route["singularDisplayName"], "Mesh HTTP Route");
    assert_eq!(route["pluralDisplayName"], "Mesh HTTP Routes");
    assert_eq!(route["shortName"], "mhttpr");
    assert_eq!(route["policy"]["hasToTargetRef"], true);
    assert_eq!(route["policy"]["hasFromTargetRef"], false);
    assert_eq!(find("MeshRetry")["pluralDisplayName"], "Mesh Retries");
    assert_eq!(find("MeshTLS")["pluralDisplayName"], "Mesh TLSes");
    assert_eq!(
        find("MeshTrafficPermission")["policy"]["hasRulesTargetRef"],
        true
    );
    assert!(find("Dataplane").get("policy").is_none());
    let policies = api.get("/policies").await;
    assert!(
        policies.body["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "MeshRetry" && p["path"] == "meshretries")
    );
    assert_eq!(api.get("/config").await.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_flips_only_when_told() {
    use kuma_api::diagnostics::{Readiness, router as diagnostics};
    let readiness = Arc::new(Readiness::default());
    let status = |path: &'static str| {
        let app = diagnostics(readiness.clone());
        async move {
            let req = Request::builder().uri(path).body(Body::empty()).unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(status("/ready").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status("/healthy").await, StatusCode::OK);
    readiness.set(true);
    assert_eq!(status("/ready").await, StatusCode::OK);
    readiness.set(false);
    assert_eq!(status("/ready").await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn policies_are_resources_like_any_other() {
    let api = Api::new(|_| {}).await;
    let timeout = json!({
        "type": "MeshTimeout", "mesh": "default", "name": "short",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "2s"}}]
        }
    });
    let r = api
        .put("/meshes/default/meshtimeouts/short", timeout.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let got = api.get("/meshes/default/meshtimeouts/short").await;
    assert_eq!(
        got.body["spec"]["to"][0]["default"]["connectionTimeout"],
        "2s"
    );
    // Next to the two timeouts every mesh gets (sidecars and gateways).
    let all = api.get("/meshtimeouts").await.body;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "mesh-gateways-timeout-all-default",
            "mesh-timeout-all-default",
            "short"
        ]
    );

    let mut bad = timeout;
    bad["spec"]["to"][0]["default"]["connectionTimeout"] = json!("soon");
    let r = api.put("/meshes/default/meshtimeouts/short", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let field = r.body["invalid_parameters"][0]["field"].as_str().unwrap();
    assert!(
        field.starts_with("spec.to[0].default.connectionTimeout"),
        "{field}"
    );
}

#[tokio::test]
async fn overviews_join_dataplanes_with_their_insights() {
    use kuma_core::resource::{Resource, Spec};
    let api = Api::new(|_| {}).await;
    for (name, port) in [("dp-1", 8080), ("dp-2", 8081)] {
        let r = api
            .put(
                &format!("/meshes/default/dataplanes/{name}"),
                dataplane(name, "web", port),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    // The control plane writes insights; dp-1 has an open subscription.
    let insight = json!({"subscriptions": [{"id": "s1", "connectTime": "2026-01-01T00:00:00Z"}]});
    let Value::Object(spec) = insight else {
        unreachable!()
    };
    api.state
        .manager
        .create(Resource::new(
            "default",
            "dp-1",
            Spec::DataplaneInsight(spec.into()),
        ))
        .await
        .unwrap();

    let list = api.get("/meshes/default/dataplanes+insights").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["total"], 2);
    let first = &list.body["items"][0];
    assert_eq!(first["type"], "DataplaneOverview");
    assert_eq!(first["name"], "dp-1");
    assert_eq!(first["dataplane"]["networking"]["inbound"][0]["port"], 8080);
    assert_eq!(first["dataplaneInsight"]["subscriptions"][0]["id"], "s1");
    assert_eq!(list.body["items"][1]["dataplaneInsight"], json!({}));
    // The same through Kuma's other paths; the static segment does not shadow names.
    let paged = api.get("/meshes/default/dataplanes/_overview?size=1").await;
    assert_eq!(
        paged.body["items"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        paged.body
    );
    assert!(paged.body["next"].as_str().unwrap().contains("offset="));
    let one = api.get("/meshes/default/dataplanes/dp-2/_overview").await;
    assert_eq!(one.body["name"], "dp-2");
    assert_eq!(
        api.get("/meshes/default/dataplanes+insights/dp-1")
            .await
            .body["name"],
        "dp-1"
    );
    assert_eq!(
        api.get("/meshes/default/dataplanes/dp-1").await.body["type"],
        "Dataplane"
    );
    assert_eq!(
        api.get("/meshes/default/dataplanes+insights/nope")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/meshes/nope/dataplanes+insights").await.status,
        StatusCode::NOT_FOUND
    );
    // Without a config source, _config is 404 (the binaries provide one).
    assert_eq!(
        api.get("/meshes/default/dataplanes/dp-1/_config")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let global = api.get("/global-insight").await;
    assert_eq!(global.status, StatusCode::OK);
    let g = &global.body;
    assert_eq!(g["meshes"]["total"], 1);
    assert_eq!(
        g["dataplanes"]["standard"],
        json!({"total": 2, "online": 1, "offline": 1, "partiallyDegraded": 0})
    );
    // One service, one of its two instances online: partially degraded.
    assert_eq!(g["services"]["internal"]["partiallyDegraded"], 1);
    assert_eq!(g["resources"]["Dataplane"]["total"], 2);
    assert_eq!(g["resources"]["DataplaneInsight"]["total"], 1);
}

#[tokio::test]
async fn rules_show_merged_policies_and_their_origins() {
    let api = Api::new(|_| {}).await;
    for (name, service, port) in [("web-1", "web", 8080), ("db-1", "db", 5432)] {
        let dp = json!({
            "type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": service}}]}
        });
        let r = api
            .put(&format!("/meshes/default/dataplanes/{name}"), dp)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let timeout = json!({
        "type": "MeshTimeout", "mesh": "default", "name": "web-to-db",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "default": {"connectionTimeout": "2s"}}]
        }
    });
    let r = api
        .put("/meshes/default/meshtimeouts/web-to-db", timeout)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let trace = json!({
        "type": "MeshTrace", "mesh": "default", "name": "trace-all",
        "spec": {"default": {"sampling": {"overall": 10}}}
    });
    assert_eq!(
        api.put("/meshes/default/meshtraces/trace-all", trace)
            .await
            .status,
        StatusCode::CREATED
    );

    let rules = api.get("/meshes/default/dataplanes/web-1/_rules").await;
    assert_eq!(rules.status, StatusCode::OK, "{:?}", rules.body);
    assert_eq!(rules.body["resource"]["name"], "web-1");
    let timeouts = rules.body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "MeshTimeout")
        .expect("MeshTimeout rules");
    // The rule for db merges the default (connect 5s, request 15s, ...) with web-to-db.
    let to_db = &timeouts["toRules"][0];
    assert_eq!(
        to_db["matchers"],
        json!([{"key": "kuma.io/service", "value": "db", "not": false}])
    );
    assert_eq!(to_db["conf"]["connectionTimeout"], "2s");
    assert_eq!(to_db["conf"]["http"]["requestTimeout"], "15s");
    let origins: Vec<&str> = to_db["origin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["mesh-timeout-all-default", "web-to-db"]);
    // Inbound rules come from the default timeout's `from`.
    assert_eq!(
        timeouts["fromRules"][0]["rules"][0]["conf"]["connectionTimeout"],
        "10s"
    );
    assert_eq!(timeouts["inboundRules"][0]["inbound"]["port"], 8080);

    let policies = api.get("/meshes/default/dataplanes/web-1/_policies").await;
    assert_eq!(
        policies.body,
        json!({"policies": [{
            "kind": "MeshTrace",
            "conf": {"sampling": {"overall": 10}},
            "origins": [{"kri": "kri_mtr_default___trace-all_"}]
        }]})
    );

    let selected = api
        .get("/meshes/default/meshtimeouts/web-to-db/_resources/dataplanes")
        .await;
    assert_eq!(selected.body["total"], 1);
    assert_eq!(selected.body["items"][0]["name"], "web-1");
    let all = api
        .get("/meshes/default/meshtimeouts/mesh-timeout-all-default/_resources/dataplanes?size=1")
        .await;
    assert_eq!(all.body["total"], 2);
    assert!(all.body["next"].as_str().unwrap().contains("offset=1"));
    assert_eq!(
        api.get("/meshes/default/dataplanes/nobody/_rules")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/meshes/default/meshtimeouts/nope/_resources/dataplanes")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn access_lists_decide_config_dumps_secrets_and_tokens() {
    use kuma_api::config::AccessList;
    // Kuma's defaults: everyone may see a proxy's (redacted) config.
    let api = Api::new(|_| {}).await;
    api.put(
        "/meshes/default/dataplanes/web-1",
        dataplane("web-1", "web", 8080),
    )
    .await;
    let dump = api
        .call(
            REMOTE,
            "GET",
            "/meshes/default/dataplanes/web-1/_config",
            &[],
            "",
        )
        .await;
    assert_ne!(dump.status, StatusCode::FORBIDDEN);

    // Lists of one's own: config dumps for admins, secrets and tokens for user jane too.
    let api = Api::new(|s| {
        s.access.view_config_dump = AccessList {
            users: vec![],
            groups: vec!["mesh-system:admin".into()],
        };
        s.access.admin_resources.users.push("jane".into());
        s.access.generate_dp_token.users.push("jane".into());
    })
    .await;
    api.put(
        "/meshes/default/dataplanes/web-1",
        dataplane("web-1", "web", 8080),
    )
    .await;
    let path = "/meshes/default/dataplanes/web-1/_config";
    let anonymous = api.call(REMOTE, "GET", path, &[], "").await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    assert!(
        anonymous.body["detail"]
            .as_str()
            .unwrap()
            .contains("access.static.viewConfigDump")
    );
    let jane = [("Authorization", "Bearer good-user")];
    assert_eq!(
        api.call(REMOTE, "GET", path, &jane, "").await.status,
        StatusCode::FORBIDDEN
    );
    let secrets = api
        .call(REMOTE, "GET", "/meshes/default/secrets", &jane, "")
        .await;
    assert_eq!(secrets.status, StatusCode::OK);
    // Jane may ask for a token (this API has no issuer: 404, not 403).
    let token = api
        .call(
            REMOTE,
            "POST",
            "/tokens/dataplane",
            &jane,
            r#"{"name": "web-1", "mesh": "default"}"#,
        )
        .await;
    assert_eq!(token.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_are_read_after_the_access_check_and_json_is_parsed_as_json() {
    let api = Api::new(|_| {}).await;
    // An anonymous write is refused whatever its body, which is not parsed.
    let deep = "{a: ".repeat(60_000);
    let anonymous = api
        .call(REMOTE, "PUT", "/meshes/default/meshtimeouts/t", &[], &deep)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // An oversized body is refused from its Content-Length alone.
    let length = (kuma_core::resource::MAX_DOCUMENT_BYTES + 1).to_string();
    let big = api
        .call(
            LOCAL,
            "PUT",
            "/meshes/default/meshtimeouts/t",
            &[("content-length", &length)],
            "",
        )
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    // JSON is read as JSON: a JSON syntax error is reported as such, not as YAML.
    let json = [("content-type", "application/json")];
    let bad = api
        .call(
            LOCAL,
            "PUT",
            "/meshes/default/meshtimeouts/t",
            &json,
            r#"{"type": "MeshTimeout",}"#,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap()
            .contains("trailing comma"),
        "{}",
        bad.body
    );
    // Deep YAML from an admin is refused by the nesting check, naming the limit.
    let deep = api
        .call(LOCAL, "PUT", "/meshes/default/meshtimeouts/t", &[], &deep)
        .await;
    assert_eq!(deep.status, StatusCode::BAD_REQUEST);
    assert!(
        deep.body["detail"]
            .as_str()
            .unwrap()
            .contains("deeper than 128"),
        "{}",
        deep.body
    );
}
