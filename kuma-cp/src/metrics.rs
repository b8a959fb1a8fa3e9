//! The control plane's Prometheus metrics, served on the diagnostics port at `/metrics`.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `xds_streams_active` | gauge | |
//! | `xds_requests_received_total` | counter | `type_url` |
//! | `xds_responses_sent_total` | counter | `type_url` |
//! | `xds_nacks_received_total` | counter | `type_url` |
//! | `xds_generation_seconds` | histogram | |
//! | `xds_delivery_seconds` | histogram | `type_url` |
//! | `store_operations_total` | counter | `operation`, `resource_type`, `result` |
//! | `store_conflicts_total` | counter | `resource_type` |
//! | `api_server_requests_total` | counter | `method`, `status` |
//! | `mads_requests_held` | gauge | |
//!
//! Generation time is one proxy's snapshot build. Delivery time runs from the store change that
//! made a new snapshot until the proxy ACKs that snapshot's version of a type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version};
use kuma_core::store::{ListQuery, Page, ResourceStore, StoreError, StoreEvent};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: an xDS type URL.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The type URL.
    pub type_url: String,
}

/// Labels of a store operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `create`, `update`, `delete`, `get` or `list`.
    pub operation: String,
    /// The resource type.
    pub resource_type: String,
    /// `ok` or the error kind (`not_found`, `already_exists`, `conflict`, ...).
    pub result: String,
}

/// Label: a resource type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceTypeLabel {
    /// The resource type.
    pub resource_type: String,
}

/// Labels of an API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Open ADS streams.
    pub streams_active: Gauge,
    /// 1 while this instance is the zone's leader (runs the once-per-zone jobs), else 0.
    pub leader: Gauge,
    /// Discovery requests, by type.
    pub requests: Family<TypeLabel, Counter>,
    /// Discovery responses, by type.
    pub responses: Family<TypeLabel, Counter>,
    /// NACKs, by type.
    pub nacks: Family<TypeLabel, Counter>,
    /// Time to build one proxy's snapshot.
    pub generation: Histogram,
    /// Time from a store change to the proxy's ACK.
    pub delivery: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// Store operations.
    pub store_operations: Family<StoreLabels, Counter>,
    /// Optimistic-concurrency conflicts.
    pub store_conflicts: Family<ResourceTypeLabel, Counter>,
    /// API requests by status.
    pub api_requests: Family<ApiLabels, Counter>,
    /// MADS long polls held until the assignments change.
    pub mads_held: Gauge,
    pending: Mutex<HashMap<String, Pending>>,
}

/// Snapshot versions a proxy has not ACKed yet, and when the change that made them happened.
struct Pending {
    since: Instant,
    versions: HashMap<String, String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            streams_active: Gauge::default(),
            leader: Gauge::default(),
            requests: Family::default(),
            responses: Family::default(),
            nacks: Family::default(),
            generation: latency_histogram(),
            delivery: Family::new_with_constructor(latency_histogram),
            store_operations: Family::default(),
            store_conflicts: Family::default(),
            api_requests: Family::default(),
            mads_held: Gauge::default(),
            pending: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "xds_streams_active",
            "ADS streams currently open",
            m.streams_active.clone(),
        );
        registry.register(
            "mads_requests_held",
            "MADS long polls held until the assignments change",
            m.mads_held.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance leads (runs the jobs that run once per zone)",
            m.leader.clone(),
        );
        registry.register(
            "xds_requests_received",
            "Discovery requests received",
            m.requests.clone(),
        );
        registry.register(
            "xds_responses_sent",
            "Discovery responses sent",
            m.responses.clone(),
        );
        registry.register(
            "xds_nacks_received",
            "Responses rejected by proxies",
            m.nacks.clone(),
        );
        registry.register(
            "xds_generation_seconds",
            "Time to generate one proxy's configuration",
            m.generation.clone(),
        );
        registry.register(
            "xds_delivery_seconds",
            "Time from a store change to the proxy's ACK of the configuration it caused",
            m.delivery.clone(),
        );
        registry.register(
            "store_operations",
            "Resource store operations",
            m.store_operations.clone(),
        );
        registry.register(
            "store_conflicts",
            "Writes refused because the resource changed meanwhile",
            m.store_conflicts.clone(),
        );
        registry.register(
            "api_server_requests",
            "HTTP API requests by response status",
            m.api_requests.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in Prometheus's classic text format (`text/plain; version=0.0.4`), for
    /// scrapers that do not ask for OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }

    /// A new snapshot for `node_id`, caused by a change at `since`, now waits for ACKs of
    /// `versions` (type URL -> version). A change not yet delivered keeps its earlier time.
    pub fn snapshot_set(
        &self,
        node_id: &str,
        since: Instant,
        versions: impl IntoIterator<Item = (String, String)>,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(node_id.to_string()).or_insert(Pending {
            since,
            versions: HashMap::new(),
        });
        if entry.versions.is_empty() {
            entry.since = since;
        }
        entry.versions.extend(versions);
    }

    /// `node_id` ACKed `version` of `type_url`: observes the delivery time if it was pending.
    pub fn acked(&self, node_id: &str, type_url: &str, version: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = pending.get_mut(node_id) else {
            return;
        };
        if entry.versions.get(type_url).map(String::as_str) != Some(version) {
            return;
        }
        entry.versions.remove(type_url);
        self.delivery
            .get_or_create(&TypeLabel {
                type_url: type_url.to_string(),
            })
            .observe(entry.since.elapsed().as_secs_f64());
        if entry.versions.is_empty() {
            pending.remove(node_id);
        }
    }

    /// `node_id` went away: nothing of it is pending any more.
    pub fn forget(&self, node_id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
    }
}

/// Rewrites OpenMetrics text as Prometheus 0.0.4 text: a counter family `x` becomes `x_total`
/// (the name its samples carry), and the `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl kuma_xds::sync::SyncObserver for Metrics {
    fn generated(&self, _node_id: &str, took: std::time::Duration) {
        self.generation.observe(took.as_secs_f64());
    }

    fn snapshot_set(&self, node_id: &str, since: Instant, versions: Vec<(String, String)>) {
        Metrics::snapshot_set(self, node_id, since, versions);
    }
}

/// Counts xDS traffic and delivery times from the ADS server's callbacks.
#[derive(Clone)]
pub struct XdsMetrics(pub Arc<Metrics>);

fn type_label(type_url: &str) -> TypeLabel {
    TypeLabel {
        type_url: type_url.to_string(),
    }
}

impl xds_server::server::Callbacks for XdsMetrics {
    fn on_stream_open(&self, _stream_id: u64, _node_id: &str) {
        self.0.streams_active.inc();
    }
    fn on_stream_closed(&self, _stream_id: u64, node_id: &str) {
        self.0.streams_active.dec();
        self.0.forget(node_id);
    }
    fn on_request(
        &self,
        _stream_id: u64,
        _node_id: &str,
        request: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest,
    ) {
        self.0
            .requests
            .get_or_create(&type_label(&request.type_url))
            .inc();
    }
    fn on_delta_request(
        &self,
        _stream_id: u64,
        _node_id: &str,
        request: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
    ) {
        self.0
            .requests
            .get_or_create(&type_label(&request.type_url))
            .inc();
    }
    fn on_response(&self, _stream_id: u64, _node_id: &str, r: &xds_server::wire::SotwResponse) {
        self.0
            .responses
            .get_or_create(&type_label(&r.type_url))
            .inc();
    }
    fn on_delta_response(
        &self,
        _stream_id: u64,
        _node_id: &str,
        r: &xds_server::wire::DeltaResponse,
    ) {
        self.0
            .responses
            .get_or_create(&type_label(&r.type_url))
            .inc();
    }
    fn on_ack(&self, _stream_id: u64, node_id: &str, type_url: &str, version: &str) {
        self.0.acked(node_id, type_url, version);
    }
    fn on_nack(&self, _stream_id: u64, _node_id: &str, type_url: &str, _v: &str, _e: &str) {
        self.0.nacks.get_or_create(&type_label(type_url)).inc();
    }
}

/// A [`ResourceStore`] that counts every operation of the
/// store it wraps.
pub struct MeteredStore {
    inner: Arc<dyn ResourceStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Counts `inner`'s operations into `metrics`.
    pub fn new(inner: Arc<dyn ResourceStore>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn count<T>(&self, operation: &str, rtype: ResourceType, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::NotFound(_)) => "not_found",
            Err(StoreError::AlreadyExists(_)) => "already_exists",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(StoreError::OwnerNotFound(_)) => "owner_not_found",
            Err(StoreError::InvalidOffset(_)) => "invalid_offset",
            Err(StoreError::Backend(_)) => "backend_error",
        };
        let resource_type = rtype.to_string();
        if outcome == "conflict" {
            self.metrics
                .store_conflicts
                .get_or_create(&ResourceTypeLabel {
                    resource_type: resource_type.clone(),
                })
                .inc();
        }
        self.metrics
            .store_operations
            .get_or_create(&StoreLabels {
                operation: operation.into(),
                resource_type,
                result: outcome.into(),
            })
            .inc();
    }
}

#[async_trait::async_trait]
impl ResourceStore for MeteredStore {
    async fn create(
        &self,
        resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        let rtype = resource.rtype();
        let r = self.inner.create(resource, owner).await;
        self.count("create", rtype, &r);
        r
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        let rtype = resource.rtype();
        let r = self.inner.update(resource).await;
        self.count("update", rtype, &r);
        r
    }

    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        let r = self.inner.delete(key, version).await;
        self.count("delete", key.rtype, &r);
        r
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        let r = self.inner.get(key).await;
        self.count("get", key.rtype, &r);
        r
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let r = self.inner.list(query).await;
        self.count("list", query.rtype, &r);
        r
    }

    fn watch(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.inner.watch()
    }
}

/// Axum middleware counting API requests by method and status.
pub async fn count_api_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let response = next.run(req).await;
    metrics
        .api_requests
        .get_or_create(&ApiLabels {
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (as Prometheus does), the classic
/// Prometheus text format otherwise.
pub fn serve(metrics: &Metrics, headers: &axum::http::HeaderMap) -> Response {
    use axum::response::IntoResponse as _;
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode_openmetrics(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode_prometheus(),
        )
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_as_their_samples() {
        let m = Metrics::default();
        m.requests
            .get_or_create(&TypeLabel {
                type_url: "t".into(),
            })
            .inc();
        m.generation.observe(0.01);
        let open = m.encode_openmetrics();
        assert!(
            open.contains("# TYPE xds_requests_received counter"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"));
        let classic = m.encode_prometheus();
        assert!(
            classic.contains("# TYPE xds_requests_received_total counter"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP xds_requests_received_total "),
            "{classic}"
        );
        assert!(
            classic.contains("xds_requests_received_total{type_url=\"t\"} 1"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE xds_generation_seconds histogram"),
            "{classic}"
        );
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
    }

    #[test]
    fn delivery_is_observed_once_per_acked_version() {
        let m = Metrics::default();
        let since = Instant::now();
        m.snapshot_set("n", since, [("c".to_string(), "v1".to_string())]);
        m.acked("n", "c", "v0"); // an older version: not the change
        m.acked("n", "c", "v1");
        m.acked("n", "c", "v1"); // delivered already
        let text = m.encode_prometheus();
        assert!(
            text.contains("xds_delivery_seconds_count{type_url=\"c\"} 1"),
            "{text}"
        );
    }
}
