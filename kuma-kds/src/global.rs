//! Global's KDS server: `KDSSyncService` (each zone's two sync streams) and
//! `GlobalKDSService.HealthCheck`, and the zones' status (Zone and ZoneInsight resources).
//!
//! A zone names itself with the `client-id` metadata. Its Zone resource is created when it
//! first connects. While it has a stream open it is online; its ZoneInsight records each
//! connection (connect and disconnect times, per-type responses sent, acknowledged and
//! rejected, the zone control plane's version and config) and the time of its last health
//! check, written at most once per flush interval and only when something changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use kuma_core::model::zone::ZoneSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec, UntypedSpec};
use kuma_core::store::{ResourceStore, StoreError};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codec::CompressionEncoding::Gzip;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use crate::directions;
use crate::feed::Feed;
use crate::frames::{self, Messages};
use crate::grpc::global_kds_service_server::{GlobalKDSService, GlobalKDSServiceServer};
use crate::grpc::kds_sync_service_server::{KDSSyncService, KDSSyncServiceServer};
use crate::grpc::{ZoneHealthCheckRequest, ZoneHealthCheckResponse};
use crate::receiver::{self, NodeInfo, Receiving, StoreSync};
use crate::sender::{self, Peer};
use crate::stats::StreamStats;

/// How many past connections a ZoneInsight keeps.
const KEPT_SUBSCRIPTIONS: usize = 5;

/// Global's KDS settings (`multizone.global.kds.*`).
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// This instance's id (in ZoneInsight subscriptions).
    pub instance_id: String,
    /// The largest message sent or received (`maxMsgSize`).
    pub max_msg_size: usize,
    /// How often ZoneInsights are written (`zoneInsightFlushInterval`).
    pub insight_flush_interval: Duration,
    /// How often zones ping (`zoneHealthCheck.pollInterval`), when the health check is on.
    pub health_poll_interval: Option<Duration>,
    /// How long a zone may stay silent before it is offline (`zoneHealthCheck.timeout`).
    pub health_timeout: Option<Duration>,
}

/// One connection of a zone, as its ZoneInsight shows it.
#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    connect_time: String,
    disconnect_time: Option<String>,
    streams: usize,
    /// Counters of the global-to-zone stream.
    stats: Option<Arc<StreamStats>>,
    metadata: Option<Value>,
}

#[derive(Debug, Default)]
struct ZoneState {
    subscriptions: Vec<Subscription>,
    health_check: Option<String>,
    last_seen: Option<tokio::time::Instant>,
    dirty: bool,
    /// The open streams by kind, each with its id and the signal that ends it (a silent zone
    /// is dropped; a newer stream of the same kind replaces an older one).
    open: BTreeMap<&'static str, (u64, tokio::sync::watch::Sender<bool>)>,
}

/// The KDS server of a global control plane (see the [module](self)).
#[derive(Clone)]
pub struct GlobalKds {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ResourceStore>,
    feed: Arc<Feed>,
    settings: GlobalSettings,
    zones: Mutex<BTreeMap<String, ZoneState>>,
    wake: Arc<Notify>,
    next_id: std::sync::atomic::AtomicU64,
}

impl GlobalKds {
    /// A server sending `feed` (a [`crate::feed::Side::Global`] feed of `store`) and writing what
    /// zones send into `store`.
    pub fn new(store: Arc<dyn ResourceStore>, feed: Arc<Feed>, settings: GlobalSettings) -> Self {
        GlobalKds {
            inner: Arc::new(Inner {
                store,
                feed,
                settings,
                zones: Mutex::new(BTreeMap::new()),
                wake: Arc::new(Notify::new()),
                next_id: Default::default(),
            }),
        }
    }

    /// The two gRPC services, for a server to add.
    pub fn services(&self) -> (SyncServer, GlobalKDSServiceServer<GlobalKds>) {
        let limit = self.inner.settings.max_msg_size;
        // Kuma's zones compress what they send with gzip; answers are compressed for zones
        // that accept it.
        (
            SyncServer {
                kds: self.clone(),
                tonic: KDSSyncServiceServer::new(self.clone())
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit)
                    .accept_compressed(Gzip)
                    .send_compressed(Gzip),
            },
            GlobalKDSServiceServer::new(self.clone())
                .accept_compressed(Gzip)
                .send_compressed(Gzip),
        )
    }

    /// Writes the zones' insights every flush interval while they change, and drops zones
    /// that stopped pinging (when the health check is on). Run it once.
    pub async fn run_insights(self) {
        let interval = self.inner.settings.insight_flush_interval;
        loop {
            // Sleep until something changes (no timer while idle), then batch for the interval.
            let wait = self.inner.wake.notified();
            let silent_check = self.inner.settings.health_timeout;
            match silent_check {
                Some(timeout) if self.any_online() => {
                    let _ = tokio::time::timeout(timeout, wait).await;
                }
                _ => wait.await,
            }
            tokio::time::sleep(interval).await;
            self.drop_silent_zones();
            // Counters move while streams are open: look at every connected zone (the flush
            // writes only what differs from the stored insight).
            for zone in self.zones().values_mut() {
                if zone.subscriptions.last().is_some_and(|s| s.streams > 0) {
                    zone.dirty = true;
                }
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "KDS: writing zone insights failed");
            }
        }
    }

    fn zones(&self) -> MutexGuard<'_, BTreeMap<String, ZoneState>> {
        self.inner.zones.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn any_online(&self) -> bool {
        self.zones()
            .values()
            .any(|z| z.subscriptions.last().is_some_and(|s| s.streams > 0))
    }

    fn drop_silent_zones(&self) {
        let Some(timeout) = self.inner.settings.health_timeout else {
            return;
        };
        let now = tokio::time::Instant::now();
        for (name, zone) in self.zones().iter_mut() {
            if zone
                .last_seen
                .is_some_and(|t| now.duration_since(t) > timeout)
                && !zone.open.is_empty()
            {
                tracing::warn!(zone = %name, "KDS: zone silent for over {timeout:?}; dropping its streams");
                for (_, cancel) in std::mem::take(&mut zone.open).into_values() {
                    let _ = cancel.send(true);
                }
            }
        }
    }

    /// Records a stream of `kind` of `zone` opening; returns its id and the signal that ends
    /// it. An older stream of the same kind from the zone is ended: one zone, one stream set
    /// (a zone's instances must not both sync).
    fn open(
        &self,
        zone: &str,
        kind: &'static str,
        stats: Option<Arc<StreamStats>>,
    ) -> (u64, tokio::sync::watch::Receiver<bool>) {
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut zones = self.zones();
        let state = zones.entry(zone.to_string()).or_default();
        let active = state.subscriptions.last().is_some_and(|s| s.streams > 0);
        if !active {
            state.subscriptions.push(Subscription {
                id: format!("{}-{id}", self.inner.settings.instance_id),
                connect_time: now(),
                disconnect_time: None,
                streams: 0,
                stats: None,
                metadata: None,
            });
            if state.subscriptions.len() > KEPT_SUBSCRIPTIONS {
                state.subscriptions.remove(0);
            }
        }
        let cancel = tokio::sync::watch::Sender::new(false);
        let ended = cancel.subscribe();
        if let Some((_, older)) = state.open.insert(kind, (id, cancel)) {
            tracing::info!(
                zone,
                kind,
                "KDS: a newer stream of the zone replaces an older one"
            );
            let _ = older.send(true);
        }
        let sub = state.subscriptions.last_mut().expect("pushed above");
        sub.streams += 1;
        if stats.is_some() {
            sub.stats = stats;
        }
        state.last_seen = Some(tokio::time::Instant::now());
        state.dirty = true;
        drop(zones);
        self.inner.wake.notify_one();
        (id, ended)
    }

    /// Records the end of stream `id` of `kind` of `zone`.
    fn close(&self, zone: &str, kind: &'static str, id: u64) {
        let mut zones = self.zones();
        if let Some(state) = zones.get_mut(zone) {
            if state.open.get(kind).is_some_and(|(open, _)| *open == id) {
                state.open.remove(kind);
            }
            if let Some(sub) = state.subscriptions.last_mut() {
                sub.streams = sub.streams.saturating_sub(1);
                if sub.streams == 0 {
                    sub.disconnect_time = Some(now());
                }
            }
            state.dirty = true;
        }
        drop(zones);
        self.inner.wake.notify_one();
    }

    fn record_metadata(&self, zone: &str, metadata: Value) {
        if let Some(sub) = self
            .zones()
            .get_mut(zone)
            .and_then(|z| z.subscriptions.last_mut())
        {
            sub.metadata = Some(metadata);
        }
    }

    /// Writes the ZoneInsight of every zone that changed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let dirty: Vec<(String, Value)> = {
            let mut zones = self.zones();
            zones
                .iter_mut()
                .filter_map(|(name, z)| {
                    std::mem::take(&mut z.dirty).then(|| (name.clone(), insight_json(z)))
                })
                .collect()
        };
        for (zone, spec) in dirty {
            let spec =
                Spec::ZoneInsight(serde_json::from_value::<UntypedSpec>(spec).unwrap_or_default());
            let key = ResourceKey::new(ResourceType::ZoneInsight, "", &zone);
            let owner = ResourceKey::new(ResourceType::Zone, "", &zone);
            match self.inner.store.get(&key).await {
                Ok(mut existing) => {
                    if existing.spec == spec {
                        continue;
                    }
                    existing.spec = spec;
                    self.inner.store.update(existing).await?;
                }
                Err(StoreError::NotFound(_)) => {
                    let r = Resource::new("", &zone, spec);
                    match self.inner.store.create(r, Some(owner)).await {
                        Ok(_) | Err(StoreError::OwnerNotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn ensure_zone(&self, zone: &str) -> Result<(), Status> {
        let zone_resource = Resource::new(
            "",
            zone,
            Spec::Zone(ZoneSpec {
                enabled: Some(true),
            }),
        );
        match self.inner.store.create(zone_resource, None).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(Status::unavailable(format!(
                "cannot record zone {zone:?}: {e}"
            ))),
        }
    }
}

/// The zone a request comes from (`client-id` metadata), checked as a resource name.
fn client_id(metadata: &MetadataMap) -> Result<String, Status> {
    let id = metadata
        .get("client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let valid = !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(Status::invalid_argument(format!(
            "metadata client-id: must name the zone (lowercase letters, digits, '-' and '.'), got {id:?}"
        )));
    }
    Ok(id)
}

/// Whether the request's metadata announces `feature`.
fn has_feature(metadata: &MetadataMap, feature: &str) -> bool {
    metadata
        .get_all("features")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|f| f.trim() == feature))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn insight_json(zone: &ZoneState) -> Value {
    let subscriptions: Vec<Value> = zone
        .subscriptions
        .iter()
        .map(|s| {
            let mut total = (0u64, 0u64, 0u64);
            let mut stat = serde_json::Map::new();
            for (rtype, t) in s.stats.as_ref().map(|s| s.snapshot()).unwrap_or_default() {
                total.0 += t.sent;
                total.1 += t.acked;
                total.2 += t.rejected;
                stat.insert(
                    rtype,
                    json!({"responsesSent": t.sent, "responsesAcknowledged": t.acked, "responsesRejected": t.rejected}),
                );
            }
            let last_update = s
                .stats
                .as_ref()
                .and_then(|s| s.updated())
                .map_or_else(
                    || s.connect_time.clone(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            let mut sub = json!({
                "id": s.id,
                "globalInstanceId": s.id.rsplit_once('-').map_or("", |(i, _)| i),
                "connectTime": s.connect_time,
                "status": {
                    "lastUpdateTime": last_update,
                    "total": {"responsesSent": total.0, "responsesAcknowledged": total.1, "responsesRejected": total.2},
                    "stat": stat,
                },
            });
            if let Some(t) = &s.disconnect_time {
                sub["disconnectTime"] = json!(t);
            }
            if let Some(meta) = &s.metadata {
                if let Some(version) = meta.get("version") {
                    sub["version"] = version.clone();
                }
                if let Some(config) = meta.get("config") {
                    sub["config"] = config.clone();
                }
                if let Some(id) = meta.get("control-plane-id") {
                    sub["zoneInstanceId"] = id.clone();
                }
            }
            sub
        })
        .collect();
    let mut insight = json!({ "subscriptions": subscriptions });
    if let Some(t) = &zone.health_check {
        insight["healthCheck"] = json!({ "time": t });
    }
    insight
}

/// What a sync stream sends to the zone: the messages one end of the stream queues.
type Outgoing<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn outgoing<T: Send + 'static>(rx: mpsc::Receiver<T>) -> Outgoing<T> {
    Box::pin(ReceiverStream::new(rx).map(Ok))
}

/// The items of `stream` until it ends or `cancel` turns true, each shown to `seen` first.
fn until_cancelled<T: Send + 'static>(
    mut stream: impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    mut cancel: tokio::sync::watch::Receiver<bool>,
    mut seen: impl FnMut(&T) + Send + 'static,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = async { cancel.wait_for(|c| *c).await.map(|_| ()) } => {
                    let _ = tx.send(Err(Status::unavailable("stream ended by global: the zone went silent or opened a newer stream"))).await;
                    return;
                }
            };
            let Some(item) = item else { return };
            if let Ok(item) = &item {
                seen(item);
            }
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl KDSSyncService for GlobalKds {
    type GlobalToZoneSyncStream = Outgoing<DeltaDiscoveryResponse>;
    type ZoneToGlobalSyncStream = Outgoing<DeltaDiscoveryRequest>;

    async fn global_to_zone_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::GlobalToZoneSyncStream>, Status> {
        let (metadata, _, requests) = request.into_parts();
        self.global_to_zone(&metadata, requests)
            .await
            .map(Response::new)
    }

    async fn zone_to_global_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Result<Response<Self::ZoneToGlobalSyncStream>, Status> {
        let (metadata, _, responses) = request.into_parts();
        self.zone_to_global(&metadata, responses)
            .await
            .map(Response::new)
    }
}

impl GlobalKds {
    /// A zone's GlobalToZoneSync stream: its `requests` (subscriptions and acknowledgements)
    /// drive what the returned stream sends it from the feed.
    async fn global_to_zone(
        &self,
        metadata: &MetadataMap,
        requests: impl Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Send + Unpin + 'static,
    ) -> Result<Outgoing<DeltaDiscoveryResponse>, Status> {
        let zone = client_id(metadata)?;
        self.ensure_zone(&zone).await?;
        let peer = Peer {
            zone: zone.clone(),
            hash_suffix: has_feature(metadata, "hash-suffix"),
            max_msg_size: self.inner.settings.max_msg_size,
        };
        let stats = Arc::new(StreamStats::notifying(self.inner.wake.clone()));
        let (id, cancel) = self.open(&zone, "global-to-zone", Some(stats.clone()));
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
        let this = self.clone();
        // The zone's first request tells its version and config: keep them for the insight.
        let recorder = self.clone();
        let zone_for_meta = zone.clone();
        let mut recorded = false;
        let requests = until_cancelled(requests, cancel, move |r: &DeltaDiscoveryRequest| {
            if recorded {
                return;
            }
            if let Some(meta) = r.node.as_ref().and_then(|n| n.metadata.as_ref()) {
                recorded = true;
                recorder.record_metadata(&zone_for_meta, struct_json(meta));
                recorder.touch(&zone_for_meta);
            }
        });
        tokio::spawn(async move {
            let result = sender::serve(this.inner.feed.clone(), peer, requests, tx, stats).await;
            if let Err(e) = result {
                tracing::info!(zone = %zone, error = %e, "KDS: global-to-zone stream ended");
            }
            this.close(&zone, "global-to-zone", id);
        });
        Ok(outgoing(rx))
    }

    /// A zone's ZoneToGlobalSync stream: its `responses` go into the store; the returned stream
    /// carries global's requests (and acknowledgements).
    async fn zone_to_global(
        &self,
        metadata: &MetadataMap,
        responses: impl Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + Unpin + 'static,
    ) -> Result<Outgoing<DeltaDiscoveryRequest>, Status> {
        let zone = client_id(metadata)?;
        self.ensure_zone(&zone).await?;
        let (id, cancel) = self.open(&zone, "zone-to-global", None);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let this = self.clone();
        let responses = until_cancelled(responses, cancel, |_| {});
        let sync = StoreSync::new(
            self.inner.store.clone(),
            Receiving::Global { zone: zone.clone() },
        );
        let node = NodeInfo {
            id: self.inner.settings.instance_id.clone(),
            metadata: None,
        };
        let types: Vec<ResourceType> = directions::zone_to_global_types().collect();
        tokio::spawn(async move {
            let stats = Arc::new(StreamStats::default());
            let result = receiver::receive(types, node, tx, responses, sync, stats).await;
            if let Err(e) = result {
                tracing::info!(zone = %zone, error = %e, "KDS: zone-to-global stream ended");
            }
            this.close(&zone, "zone-to-global", id);
        });
        Ok(outgoing(rx))
    }
}

/// One sync stream over HTTP/2 (see [`SyncServer`]): the request's messages read by
/// [`frames`], `open` given them and the request's metadata, and what it answers
/// written by `frames` too.
async fn sync_over_http<In, Out, F, Fut>(
    limit: usize,
    request: http::Request<Body>,
    open: F,
) -> http::Response<Body>
where
    In: prost::Message + Default + Send + 'static,
    Out: prost::Message + Send + 'static,
    F: FnOnce(MetadataMap, Messages<In>) -> Fut,
    Fut: std::future::Future<Output = Result<Outgoing<Out>, Status>>,
{
    let (parts, body) = request.into_parts();
    let gzip = match parts.headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => false,
        Some(b"gzip") => true,
        Some(other) => {
            return Status::unimplemented(format!(
                "grpc-encoding {:?}: only gzip is supported",
                String::from_utf8_lossy(other)
            ))
            .into_http();
        }
    };
    let answer_gzip = parts
        .headers
        .get_all("grpc-accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim() == "gzip"));
    let metadata = MetadataMap::from_headers(parts.headers);
    let outgoing = match open(metadata, Messages::new(body, gzip, limit)).await {
        Ok(outgoing) => outgoing,
        Err(status) => return status.into_http(),
    };
    let mut response = http::Response::new(frames::response_body(outgoing, answer_gzip, limit));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    if answer_gzip {
        headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    }
    response
}

/// `KDSSyncService` as global serves it: its two sync streams read and written one message at
/// a time, each in a buffer of its own that is freed once the message is decoded or sent (tonic
/// keeps, per stream, buffers the size of the largest message: about a megabyte per connected
/// zone of 1,000 Dataplanes). Other paths go to tonic's generated server.
#[derive(Clone)]
pub struct SyncServer {
    kds: GlobalKds,
    tonic: KDSSyncServiceServer<GlobalKds>,
}

/// The sync streams' HTTP/2 paths.
const GLOBAL_TO_ZONE_PATH: &str = "/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync";
const ZONE_TO_GLOBAL_PATH: &str = "/kuma.mesh.v1alpha1.KDSSyncService/ZoneToGlobalSync";

impl NamedService for SyncServer {
    const NAME: &'static str = <KDSSyncServiceServer<GlobalKds> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for SyncServer {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.tonic, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let kds = self.kds.clone();
        let limit = kds.inner.settings.max_msg_size;
        match request.uri().path() {
            GLOBAL_TO_ZONE_PATH => Box::pin(async move {
                Ok(
                    sync_over_http(limit, request, |metadata, requests| async move {
                        kds.global_to_zone(&metadata, requests).await
                    })
                    .await,
                )
            }),
            ZONE_TO_GLOBAL_PATH => Box::pin(async move {
                Ok(
                    sync_over_http(limit, request, |metadata, responses| async move {
                        kds.zone_to_global(&metadata, responses).await
                    })
                    .await,
                )
            }),
            _ => Box::pin(self.tonic.call(request)),
        }
    }
}

impl GlobalKds {
    fn touch(&self, zone: &str) {
        if let Some(z) = self.zones().get_mut(zone) {
            z.last_seen = Some(tokio::time::Instant::now());
            z.dirty = true;
        }
        self.inner.wake.notify_one();
    }
}

#[tonic::async_trait]
impl GlobalKDSService for GlobalKds {
    async fn health_check(
        &self,
        request: Request<ZoneHealthCheckRequest>,
    ) -> Result<Response<ZoneHealthCheckResponse>, Status> {
        let zone = client_id(request.metadata())?;
        if let Some(z) = self.zones().get_mut(&zone) {
            z.health_check = Some(now());
        }
        self.touch(&zone);
        let interval = self.inner.settings.health_poll_interval.map(|d| {
            envoy_types::pb::google::protobuf::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }
        });
        Ok(Response::new(ZoneHealthCheckResponse { interval }))
    }
}

/// A protobuf `Struct` as JSON.
pub(crate) fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
            Some(Kind::NullValue(_)) | None => Value::Null,
        }
    }
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}
