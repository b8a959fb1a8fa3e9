//! MADS, Kuma's Monitoring Assignment Discovery Service, over REST: Prometheus's
//! `kuma_sd_configs` (and vmagent's) poll `POST /v3/discovery:monitoringassignments` with a
//! JSON `DiscoveryRequest` and get one `MonitoringAssignment` per proxy whose mesh enables a
//! Prometheus backend.
//!
//! - [`assignments`] works out the assignments from the store's Meshes and Dataplanes.
//! - [`Mads`] holds the assignments in force, with a version that changes when they do.
//! - [`router`] serves them. A request whose `version_info` is the current version is held
//!   until the assignments change or its `fetch-timeout` runs out, then answered `304 Not
//!   Modified`. At most [`MAX_HELD`] requests are held at once; beyond that a request that
//!   would wait gets `503` with `Retry-After`, so a flood of polls cannot exhaust the
//!   process's connections.
//!
//! The JSON is what both clients read: snake_case fields, `@type` on every resource and the
//! exact `type_url` at the top.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::Resource;
use serde::Serialize;
use tokio::sync::watch;

/// The type of MADS resources.
pub const TYPE_URL: &str = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment";

/// Where MADS is served.
pub const PATH: &str = "/v3/discovery:monitoringassignments";

/// The longest a request is held, whatever its `fetch-timeout` says.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// What Prometheus scrapes for one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitoringAssignment {
    /// Always [`TYPE_URL`] (each resource of a JSON `DiscoveryResponse` names its type).
    #[serde(rename = "@type")]
    pub type_url: &'static str,
    /// The proxy's mesh.
    pub mesh: String,
    /// The proxy's first service, in name order (`unknown` when it has none).
    pub service: String,
    /// Labels common to every target (Kuma sets none here).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The proxy's metrics endpoint.
    pub targets: Vec<Target>,
}

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The Dataplane's name.
    pub name: String,
    /// `http`, or `https` when the metrics listener serves a provided certificate.
    pub scheme: String,
    /// `<address>:<port>`, the advertised address when the Dataplane has one.
    pub address: String,
    /// The path metrics are served on.
    pub metrics_path: String,
    /// The Dataplane's tags as labels (see [`dataplane_labels`]).
    pub labels: BTreeMap<String, String>,
}

/// The assignments of every Dataplane in `dataplanes` whose mesh (in `meshes`) enables a
/// Prometheus backend, ordered by mesh and name. A Dataplane whose metrics settings do not
/// decode is left out (and logged), not the others.
pub fn assignments(meshes: &[Resource], dataplanes: &[Resource]) -> Vec<MonitoringAssignment> {
    let specs: BTreeMap<&str, &MeshSpec> = meshes
        .iter()
        .filter_map(|m| Some((m.meta.name.as_str(), m.spec_as::<MeshSpec>()?)))
        .collect();
    let mut out: Vec<(&str, &str, MonitoringAssignment)> = Vec::new();
    for r in dataplanes {
        let (Some(dp), Some(mesh)) = (
            r.spec_as::<DataplaneSpec>(),
            specs.get(r.meta.mesh.as_str()),
        ) else {
            continue;
        };
        let endpoint = match mesh.prometheus_endpoint(dp.metrics.as_ref()) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                tracing::info!(dataplane = %r.meta.name, mesh = %r.meta.mesh, error = %kuma_core::errors::Chain(&e),
                    "no monitoring assignment");
                continue;
            }
        };
        let tags = dp.tag_set();
        let service = tags
            .get(kuma_core::model::common::SERVICE_TAG)
            .and_then(|v| v.first())
            .map_or("unknown", |s| s);
        let ip = dp
            .networking
            .as_ref()
            .and_then(|n| n.advertised_address.as_deref().or(n.address.as_deref()))
            .unwrap_or_default();
        let address = if ip.contains(':') {
            format!("[{ip}]:{}", endpoint.port())
        } else {
            format!("{ip}:{}", endpoint.port())
        };
        let assignment = MonitoringAssignment {
            type_url: TYPE_URL,
            mesh: r.meta.mesh.clone(),
            service: service.to_string(),
            labels: BTreeMap::new(),
            targets: vec![Target {
                name: r.meta.name.clone(),
                scheme: endpoint.scheme().to_string(),
                address,
                metrics_path: endpoint.path().to_string(),
                labels: dataplane_labels(dp),
            }],
        };
        out.push((&r.meta.mesh, &r.meta.name, assignment));
    }
    out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    out.into_iter().map(|(_, _, a)| a).collect()
}

/// A Dataplane's tags as Prometheus labels, as Kuma makes them: each tag under its sanitised
/// name (anything but `[a-zA-Z0-9_]` becomes `_`) with its first value in order, and its plural
/// (`<tag>s`) with every value as `,v1,v2,`.
pub fn dataplane_labels(dp: &DataplaneSpec) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    // Keys in order, so that a user's own `<tag>s` tag wins over a generated plural.
    for (key, values) in dp.tag_set() {
        let first = values.first().copied().unwrap_or_default();
        labels.insert(sanitize_label_name(key), first.to_string());
        let all: Vec<&str> = values.into_iter().collect();
        labels.insert(
            sanitize_label_name(&format!("{key}s")),
            format!(",{},", all.join(",")),
        );
    }
    labels
}

/// `name` with everything but ASCII letters, digits and `_` replaced by `_`.
pub fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Requests held at once (by default; [`Mads::with_max_held`]).
pub const MAX_HELD: usize = 4096;

/// The assignments in force and their version.
#[derive(Debug)]
struct Published {
    version: String,
    /// The `resources` array, serialised once.
    resources: String,
}

/// The assignments MADS serves. Cloning shares them.
#[derive(Clone)]
pub struct Mads {
    current: Arc<watch::Sender<Arc<Published>>>,
    nonce: Arc<std::sync::atomic::AtomicU64>,
    /// Turns true when held requests should be let go.
    shutdown: Option<watch::Receiver<bool>>,
    /// A permit per held request.
    held: Arc<tokio::sync::Semaphore>,
    /// Told +1 when a request is held and -1 when it is let go.
    held_observer: Option<Arc<dyn Fn(i64) + Send + Sync>>,
}

/// One held request: its permit, and the observer to tell when it is let go.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    mads: Mads,
}

impl Held {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, mads: &Mads) -> Held {
        let held = Held {
            _permit: permit,
            mads: mads.clone(),
        };
        held.mads.report_held(1);
        held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.mads.report_held(-1);
    }
}

impl Default for Mads {
    fn default() -> Self {
        Mads::new()
    }
}

impl Mads {
    /// No assignments yet.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Published::of(&[])));
        Mads {
            current: Arc::new(tx),
            nonce: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            shutdown: None,
            held: Arc::new(tokio::sync::Semaphore::new(MAX_HELD)),
            held_observer: None,
        }
    }

    /// Holds at most `max` requests at once.
    pub fn with_max_held(mut self, max: usize) -> Self {
        self.held = Arc::new(tokio::sync::Semaphore::new(max));
        self
    }

    /// Tells `observer` +1 whenever a request is held and -1 whenever one is let go (for a
    /// gauge of the held requests).
    pub fn with_held_observer(mut self, observer: impl Fn(i64) + Send + Sync + 'static) -> Self {
        self.held_observer = Some(Arc::new(observer));
        self
    }

    fn report_held(&self, delta: i64) {
        if let Some(observer) = &self.held_observer {
            observer(delta);
        }
    }

    /// Answers held requests `304 Not Modified` as soon as `stop` turns true, so that a
    /// server shutting down gracefully does not wait for their timeouts.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(stop);
        self
    }

    /// Serves `assignments` from now on. Held requests are answered when they differ from
    /// what was served before.
    pub fn publish(&self, assignments: &[MonitoringAssignment]) {
        let next = Published::of(assignments);
        self.current.send_if_modified(|p| {
            if p.version == next.version {
                return false;
            }
            *p = Arc::new(next);
            true
        });
    }

    /// The version of the assignments in force.
    pub fn version(&self) -> String {
        self.current.borrow().version.clone()
    }

    /// A `DiscoveryResponse` for `p`.
    fn response(&self, p: &Published) -> Response {
        let nonce = self
            .nonce
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = format!(
            r#"{{"version_info":{},"resources":{},"type_url":"{TYPE_URL}","nonce":"{nonce}"}}"#,
            serde_json::Value::String(p.version.clone()),
            p.resources,
        );
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl Published {
    fn of(assignments: &[MonitoringAssignment]) -> Published {
        let resources = serde_json::to_string(assignments).unwrap_or_else(|_| "[]".into());
        let version = format!(
            "{:016x}",
            xds_server::cache::content_hash(resources.as_bytes())
        );
        Published { version, resources }
    }
}

/// The MADS REST endpoint; requests without `fetch-timeout` wait up to `default_timeout`.
pub fn router(mads: Mads, default_timeout: Duration) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::post(discovery))
        .with_state((mads, default_timeout))
}

/// What a request asks: the version it has, and how long it may wait for a newer one.
#[derive(Debug, PartialEq)]
pub struct Poll {
    /// The version the client has (`version_info`).
    pub version: String,
    /// How long it may wait for a newer one; `None`: answer at once.
    pub wait: Option<Duration>,
}

async fn discovery(
    State((mads, default_timeout)): State<(Mads, Duration)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let poll = match parse_poll(query.as_deref(), &body, default_timeout) {
        Ok(p) => p,
        Err((title, detail)) => return bad_request(title, &detail),
    };
    let mut rx = mads.current.subscribe();
    let current = rx.borrow_and_update().clone();
    if current.version != poll.version {
        return mads.response(&current);
    }
    let Some(wait) = poll.wait else {
        return StatusCode::NOT_MODIFIED.into_response();
    };
    let Ok(permit) = mads.held.clone().try_acquire_owned() else {
        let mut refused = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many held requests",
            "the server holds as many long polls as it may; ask again later",
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return refused;
    };
    let _held = Held::new(permit, &mads);
    let mut stop = mads.shutdown.clone();
    tokio::select! {
        changed = tokio::time::timeout(wait, rx.changed()) => match changed {
            Ok(Ok(())) => {
                let next = rx.borrow().clone();
                mads.response(&next)
            }
            _ => StatusCode::NOT_MODIFIED.into_response(),
        },
        () = stopping(&mut stop) => StatusCode::NOT_MODIFIED.into_response(),
    }
}

/// Resolves once `stop` turns true; never without a stop signal (or once its sender is gone).
async fn stopping(stop: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = stop
        && rx.wait_for(|s| *s).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Reads the query's `fetch-timeout` and the body's `DiscoveryRequest`. Field names are
/// accepted in snake_case (as both clients send them) and in protobuf JSON's camelCase;
/// unknown fields are ignored. The error is a title and a detail.
pub fn parse_poll(
    query: Option<&str>,
    body: &[u8],
    default_timeout: Duration,
) -> Result<Poll, (&'static str, String)> {
    let fetch_timeout = query
        .map(|q| form_urlencoded::parse(q.as_bytes()))
        .and_then(|mut pairs| pairs.find(|(k, _)| k == "fetch-timeout"))
        .map(|(_, v)| v.into_owned());
    let wait = match fetch_timeout {
        None => Some(default_timeout),
        Some(text) => {
            parse_fetch_timeout(&text).map_err(|e| ("Could not parse fetch-timeout", e))?
        }
    }
    .filter(|d| !d.is_zero())
    .map(|d| d.min(MAX_FETCH_TIMEOUT));

    let bad = |detail: String| ("Could not parse request body", detail);
    let request: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("expected a JSON DiscoveryRequest: {e}")))?;
    let serde_json::Value::Object(fields) = request else {
        return Err(bad("expected a JSON object (a DiscoveryRequest)".into()));
    };
    let field = |snake: &str, camel: &str| fields.get(snake).or_else(|| fields.get(camel));
    let string = |snake: &'static str, camel: &str| match field(snake, camel) {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("{snake}: must be a string"))),
    };
    let version = string("version_info", "versionInfo")?;
    let type_url = string("type_url", "typeUrl")?;
    if !type_url.is_empty() && type_url != TYPE_URL {
        return Err(bad(format!(
            "type_url: only {TYPE_URL} is served here, not {type_url}"
        )));
    }
    string("response_nonce", "responseNonce")?;
    match field("resource_names", "resourceNames") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(names)) if names.iter().all(|n| n.is_string()) => {}
        Some(_) => return Err(bad("resource_names: must be a list of strings".into())),
    }
    match field("node", "node") {
        None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
        Some(_) => return Err(bad("node: must be an object".into())),
    }
    Ok(Poll { version, wait })
}

/// Parses a fetch timeout in Prometheus's duration format (`30s`, `2m`, `1h30m`, `1d`, `1w`,
/// `1y`, `500ms`) or Go's (`1m30.5s`, `250us`, `-1s`). `None` (answer at once) for zero or
/// less.
pub fn parse_fetch_timeout(text: &str) -> Result<Option<Duration>, String> {
    let invalid = || {
        format!("invalid duration {text:?}: expected a number and a unit, as in 30s, 2m or 1h30m")
    };
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(None);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return Err(invalid()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if negative || total <= 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(total)
        .map(Some)
        .map_err(|_| invalid())
}

fn bad_request(title: &str, detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, title, detail)
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({"title": title, "detail": detail, "details": detail});
    (status, axum::Json(body)).into_response()
}

/// Keeps `mads` in step with the store's Meshes and Dataplanes until the store's change stream
/// ends: rebuilt at once, then after each burst of changes to them (every instance serves the
/// assignments of its store).
pub async fn follow(manager: kuma_core::manager::ResourceManager, mads: Mads) {
    use kuma_core::resource::ResourceType;
    use kuma_core::store::ListQuery;
    let mut changes = kuma_core::watch::StoreWatch::new(manager.store().as_ref(), |e| {
        matches!(e.key.rtype, ResourceType::Mesh | ResourceType::Dataplane).then_some(())
    });
    loop {
        let (meshes, dataplanes) = (
            ListQuery::all(ResourceType::Mesh),
            ListQuery::all(ResourceType::Dataplane),
        );
        match tokio::try_join!(manager.list(&meshes), manager.list(&dataplanes)) {
            Ok((meshes, dataplanes)) => {
                let list = assignments(&meshes.items, &dataplanes.items);
                tracing::debug!(assignments = list.len(), "monitoring assignments rebuilt");
                mads.publish(&list);
            }
            // The assignments in force stay until the store answers again.
            Err(e) => {
                tracing::warn!(error = %kuma_core::errors::Chain(&e), "cannot list resources for MADS")
            }
        }
        if changes.next().await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_requests_are_limited() {
        use tower::ServiceExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mads = Mads::new().with_max_held(1);
            let version = mads.version();
            let app = router(mads.clone(), Duration::from_secs(30));
            let poll = |timeout: &str, version: &str| {
                axum::http::Request::post(format!("{PATH}?fetch-timeout={timeout}"))
                    .body(axum::body::Body::from(format!(
                        r#"{{"version_info": "{version}"}}"#
                    )))
                    .unwrap()
            };
            // The first poll is held; the second finds no room and is told to come back.
            let first = tokio::spawn(app.clone().oneshot(poll("30s", &version)));
            tokio::task::yield_now().await;
            let second = app.clone().oneshot(poll("30s", &version)).await.unwrap();
            assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(second.headers()[header::RETRY_AFTER], "1");
            // New assignments release the held one, and its slot with it.
            mads.publish(&[MonitoringAssignment {
                mesh: "m".into(),
                service: "s".into(),
                targets: vec![],
                labels: BTreeMap::new(),
                type_url: TYPE_URL,
            }]);
            assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
            // Held again (a 503 if the slot had not come back), until its timeout: 304.
            let third = app.oneshot(poll("50ms", &mads.version())).await.unwrap();
            assert_eq!(third.status(), StatusCode::NOT_MODIFIED);
        });
    }

    #[test]
    fn fetch_timeouts_in_both_formats() {
        let secs = |t: &str| parse_fetch_timeout(t).unwrap().map(|d| d.as_secs_f64());
        assert_eq!(secs("30s"), Some(30.0));
        assert_eq!(secs("2m"), Some(120.0));
        assert_eq!(secs("2m0s"), Some(120.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("1d"), Some(86_400.0));
        assert_eq!(secs("500ms"), Some(0.5));
        assert_eq!(secs("1.5s"), Some(1.5));
        assert_eq!(secs("250us"), Some(0.000_25));
        assert_eq!(secs("0"), None);
        assert_eq!(secs("0s"), None);
        assert_eq!(secs("-1s"), None);
        for bad in ["", "abc", "10", "10x", "s", "1..5s", "-", "1s2", "9e9999s"] {
            let e = parse_fetch_timeout(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_are_sanitised_with_plurals() {
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": 1, "tags": {"kuma.io/service": "web", "version": "v2"}},
                {"port": 2, "tags": {"kuma.io/service": "admin", "version": "v1", "team-x": "a"}}
            ]}
        }))
        .unwrap();
        let labels = dataplane_labels(&dp);
        assert_eq!(labels["kuma_io_service"], "admin");
        assert_eq!(labels["kuma_io_services"], ",admin,web,");
        assert_eq!(labels["version"], "v1");
        assert_eq!(labels["versions"], ",v1,v2,");
        assert_eq!(labels["team_x"], "a");
        assert_eq!(labels["team_xs"], ",a,");
        assert_eq!(labels.len(), 6);
    }
}
