//! DataplaneInsight: what each proxy's xDS streams did, recorded from the ADS callbacks.
//!
//! Every stream is a *subscription*: its id, this instance's id, connect and disconnect time,
//! and per type (`cds`, `eds`, `lds`, `rds`, and `total`) responses sent, ACKed and rejected,
//! as in Kuma. The last ACK and NACK of each type (version, time, and the proxy's error text)
//! go to the insight's free-form `metadata.xds`, where Kuma's own clients ignore them.
//!
//! Events only touch memory; a flush loop writes the proxies that changed, at most once per
//! interval each, so a busy proxy costs one store write per interval whatever its traffic.
//! The insight is owned by its Dataplane and goes with it. Insights are never an input of
//! config generation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::StoreError;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};
use xds_server::server::Callbacks;
use xds_server::wire::{DeltaResponse, SotwResponse};

/// Kuma's short name of an xDS type (`cds`, `eds`, `lds`, `rds`), or the type URL's last part.
pub fn short_type(type_url: &str) -> String {
    match type_url.rsplit('.').next().unwrap_or(type_url) {
        "Cluster" => "cds".into(),
        "ClusterLoadAssignment" => "eds".into(),
        "Listener" => "lds".into(),
        "RouteConfiguration" => "rds".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    sent: u64,
    acked: u64,
    rejected: u64,
}

impl Stats {
    fn to_json(self) -> Value {
        json!({
            "responsesSent": self.sent,
            "responsesAcknowledged": self.acked,
            "responsesRejected": self.rejected,
        })
    }
}

#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    connect_time: String,
    disconnect_time: Option<String>,
    last_update: Option<String>,
    stats: BTreeMap<String, Stats>,
    envoy_version: Option<(String, String)>,
    generation: u64,
}

impl Subscription {
    fn to_json(&self, instance_id: &str) -> Value {
        let mut status = Map::new();
        if let Some(t) = &self.last_update {
            status.insert("lastUpdateTime".into(), json!(t));
        }
        let mut total = Stats::default();
        for (kind, s) in &self.stats {
            total.sent += s.sent;
            total.acked += s.acked;
            total.rejected += s.rejected;
            status.insert(kind.clone(), s.to_json());
        }
        status.insert("total".into(), total.to_json());
        let mut sub = json!({
            "id": self.id,
            "controlPlaneInstanceId": instance_id,
            "connectTime": self.connect_time,
            "status": status,
            "generation": self.generation,
        });
        if let Some(t) = &self.disconnect_time {
            sub["disconnectTime"] = json!(t);
        }
        if let Some((version, build)) = &self.envoy_version {
            sub["version"] = json!({"envoy": {"version": version, "build": build}});
        }
        sub
    }
}

/// The last ACK and NACK of one type.
#[derive(Debug, Default, Clone)]
struct TypeStatus {
    acked: Option<(String, String)>,
    nacked: Option<(String, String, String)>,
}

#[derive(Debug, Default)]
struct Proxy {
    key: Option<ResourceKey>,
    open: BTreeMap<u64, Subscription>,
    closed: Vec<Subscription>,
    xds: BTreeMap<String, TypeStatus>,
    dirty: bool,
}

/// What one flush writes for one proxy.
struct Pending {
    node_id: String,
    key: Option<ResourceKey>,
    subs: Vec<Subscription>,
    xds: BTreeMap<String, TypeStatus>,
}

struct Inner {
    manager: ResourceManager,
    instance_id: String,
    subscription_limit: usize,
    proxies: Mutex<HashMap<String, Proxy>>,
    wake: Notify,
}

/// Records DataplaneInsights from ADS callbacks; [`InsightRecorder::run`] writes them.
#[derive(Clone)]
pub struct InsightRecorder {
    inner: Arc<Inner>,
}

impl InsightRecorder {
    /// A recorder writing through `manager` as control-plane instance `instance_id`, keeping
    /// the latest `subscription_limit` subscriptions per proxy (0: all).
    pub fn new(manager: ResourceManager, instance_id: &str, subscription_limit: usize) -> Self {
        InsightRecorder {
            inner: Arc::new(Inner {
                manager,
                instance_id: instance_id.to_string(),
                subscription_limit,
                proxies: Mutex::default(),
                wake: Notify::new(),
            }),
        }
    }

    fn proxies(&self) -> std::sync::MutexGuard<'_, HashMap<String, Proxy>> {
        self.inner.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_stream(&self, node_id: &str, stream_id: u64, f: impl FnOnce(&mut Subscription)) {
        let mut proxies = self.proxies();
        let proxy = proxies.entry(node_id.to_string()).or_default();
        if let Some(sub) = proxy.open.get_mut(&stream_id) {
            f(sub);
            proxy.dirty = true;
        }
        drop(proxies);
        self.inner.wake.notify_one();
    }

    fn with_type(&self, node_id: &str, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        let mut proxies = self.proxies();
        let proxy = proxies.entry(node_id.to_string()).or_default();
        f(proxy.xds.entry(short_type(type_url)).or_default());
        proxy.dirty = true;
    }

    /// Writes every changed insight every `interval` until `shutdown`, then once more.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stop = tokio::select! {
                () = self.inner.wake.notified() => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stop {
                self.flush().await;
                return;
            }
            self.flush().await;
            tokio::time::sleep(interval).await;
        }
    }

    /// Writes every insight that changed since the last flush.
    pub async fn flush(&self) {
        let dirty: Vec<Pending> = {
            let mut proxies = self.proxies();
            let mut out = Vec::new();
            proxies.retain(|node_id, p| {
                if p.dirty {
                    p.dirty = false;
                    let subs = p.closed.drain(..).chain(p.open.values().cloned()).collect();
                    out.push(Pending {
                        node_id: node_id.clone(),
                        key: p.key.clone(),
                        subs,
                        xds: p.xds.clone(),
                    });
                }
                // A proxy with no open stream has nothing more to say once written.
                !p.open.is_empty()
            });
            out
        };
        for Pending {
            node_id,
            key,
            subs,
            xds,
        } in dirty
        {
            let key = match key {
                Some(k) => Some(k),
                None => self.resolve(&node_id).await,
            };
            let Some(key) = key else {
                // Its Dataplane is being registered: keep what happened for the next flush
                // (an open stream keeps the entry; a closed one has nothing left to show).
                tracing::debug!(node_id, "no Dataplane for this node yet; insight deferred");
                if let Some(p) = self.proxies().get_mut(&node_id) {
                    p.dirty = true;
                    let closed = subs.into_iter().filter(|s| s.disconnect_time.is_some());
                    p.closed.extend(closed);
                    self.inner.wake.notify_one();
                }
                continue;
            };
            if let Some(p) = self.proxies().get_mut(&node_id) {
                p.key = Some(key.clone());
            }
            if let Err(e) = self.write(&key, subs, &xds).await {
                tracing::debug!(node_id, error = %kuma_core::errors::Chain(&e), insight = %key.rtype, "cannot write the proxy's insight");
            }
        }
    }

    /// The insight of the proxy a node id names: a Dataplane's (`<mesh>.<name>`; mesh names
    /// may hold dots, so each split is tried), or a zone ingress's or egress's (`.<name>`).
    async fn resolve(&self, node_id: &str) -> Option<ResourceKey> {
        if let Some(name) = node_id.strip_prefix('.') {
            for (proxy, insight) in [
                (ResourceType::ZoneIngress, ResourceType::ZoneIngressInsight),
                (ResourceType::ZoneEgress, ResourceType::ZoneEgressInsight),
            ] {
                let key = ResourceKey::global(proxy, name);
                if self.inner.manager.get(&key).await.is_ok() {
                    return Some(ResourceKey::global(insight, name));
                }
            }
            return None;
        }
        for (i, _) in node_id.match_indices('.') {
            let key = ResourceKey::new(ResourceType::Dataplane, &node_id[..i], &node_id[i + 1..]);
            if self.inner.manager.get(&key).await.is_ok() {
                return Some(ResourceKey::new(
                    ResourceType::DataplaneInsight,
                    &key.mesh,
                    &key.name,
                ));
            }
        }
        None
    }

    async fn write(
        &self,
        key: &ResourceKey,
        subs: Vec<Subscription>,
        xds: &BTreeMap<String, TypeStatus>,
    ) -> Result<(), ManagerError> {
        let instance = &self.inner.instance_id;
        for _ in 0..3 {
            let current = match self.inner.manager.get(key).await {
                Ok(r) => Some(r),
                Err(ManagerError::Store(StoreError::NotFound(_))) => None,
                Err(e) => return Err(e),
            };
            let mut spec = current
                .as_ref()
                .and_then(|r| match &r.spec {
                    Spec::DataplaneInsight(s)
                    | Spec::ZoneIngressInsight(s)
                    | Spec::ZoneEgressInsight(s) => Some(s.to_object()),
                    _ => None,
                })
                .unwrap_or_default();
            let mut list: Vec<Value> = spec
                .get("subscriptions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for sub in &subs {
                let json = sub.to_json(instance);
                match list.iter_mut().find(|s| s["id"] == json["id"]) {
                    Some(existing) => *existing = json,
                    None => list.push(json),
                }
            }
            let limit = self.inner.subscription_limit;
            if limit > 0 && list.len() > limit {
                list.drain(..list.len() - limit);
            }
            spec.insert("subscriptions".into(), Value::Array(list));
            let mut metadata = spec
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            metadata.insert("xds".into(), xds_json(xds));
            spec.insert("metadata".into(), Value::Object(metadata));
            let spec = match key.rtype {
                ResourceType::ZoneIngressInsight => Spec::ZoneIngressInsight(spec.into()),
                ResourceType::ZoneEgressInsight => Spec::ZoneEgressInsight(spec.into()),
                _ => Spec::DataplaneInsight(spec.into()),
            };
            let mut resource = Resource::new(&key.mesh, &key.name, spec);
            let result = match current {
                Some(c) => {
                    resource.meta = c.meta;
                    self.inner.manager.update(resource).await.map(|_| ())
                }
                None => self.inner.manager.create(resource).await.map(|_| ()),
            };
            match result {
                // Another instance wrote meanwhile: merge with its version.
                Err(ManagerError::Store(
                    StoreError::Conflict { .. } | StoreError::AlreadyExists(_),
                )) => continue,
                other => return other,
            }
        }
        Ok(())
    }
}

fn xds_json(xds: &BTreeMap<String, TypeStatus>) -> Value {
    let mut out = Map::new();
    for (kind, status) in xds {
        let mut entry = Map::new();
        if let Some((version, time)) = &status.acked {
            entry.insert("lastAckedVersion".into(), json!(version));
            entry.insert("lastAckTime".into(), json!(time));
        }
        if let Some((version, time, error)) = &status.nacked {
            entry.insert("lastNackedVersion".into(), json!(version));
            entry.insert("lastNackTime".into(), json!(time));
            entry.insert("lastNackError".into(), json!(error));
        }
        out.insert(kind.clone(), Value::Object(entry));
    }
    Value::Object(out)
}

impl Callbacks for InsightRecorder {
    fn on_stream_open(&self, stream_id: u64, node_id: &str) {
        let sub = Subscription {
            id: format!("{}-{stream_id}", self.inner.instance_id),
            connect_time: now(),
            disconnect_time: None,
            last_update: None,
            stats: BTreeMap::new(),
            envoy_version: None,
            generation: 0,
        };
        let mut proxies = self.proxies();
        let proxy = proxies.entry(node_id.to_string()).or_default();
        proxy.open.insert(stream_id, sub);
        proxy.dirty = true;
        drop(proxies);
        self.inner.wake.notify_one();
    }

    fn on_stream_closed(&self, stream_id: u64, node_id: &str) {
        let mut proxies = self.proxies();
        if let Some(proxy) = proxies.get_mut(node_id)
            && let Some(mut sub) = proxy.open.remove(&stream_id)
        {
            sub.disconnect_time = Some(now());
            proxy.closed.push(sub);
            proxy.dirty = true;
        }
        drop(proxies);
        self.inner.wake.notify_one();
    }

    fn on_request(&self, stream_id: u64, node_id: &str, request: &DiscoveryRequest) {
        self.node_seen(stream_id, node_id, request.node.as_ref());
    }

    fn on_delta_request(&self, stream_id: u64, node_id: &str, request: &DeltaDiscoveryRequest) {
        self.node_seen(stream_id, node_id, request.node.as_ref());
    }

    fn on_response(&self, stream_id: u64, node_id: &str, response: &SotwResponse) {
        self.sent(stream_id, node_id, &response.type_url);
    }

    fn on_delta_response(&self, stream_id: u64, node_id: &str, response: &DeltaResponse) {
        self.sent(stream_id, node_id, &response.type_url);
    }

    fn on_ack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str) {
        self.with_stream(node_id, stream_id, |s| {
            s.stats.entry(short_type(type_url)).or_default().acked += 1;
        });
        self.with_type(node_id, type_url, |t| {
            t.acked = Some((version.to_string(), now()));
        });
    }

    fn on_nack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str, error: &str) {
        self.with_stream(node_id, stream_id, |s| {
            s.stats.entry(short_type(type_url)).or_default().rejected += 1;
        });
        self.with_type(node_id, type_url, |t| {
            t.nacked = Some((version.to_string(), now(), error.to_string()));
        });
    }
}

impl InsightRecorder {
    /// Records the Envoy version a request's node reports (the first request carries it).
    fn node_seen(
        &self,
        stream_id: u64,
        node_id: &str,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) {
        let Some(version) = node.and_then(node_version) else {
            return;
        };
        self.with_stream(node_id, stream_id, |s| {
            s.envoy_version.get_or_insert(version);
        });
    }

    fn sent(&self, stream_id: u64, node_id: &str, type_url: &str) {
        self.with_stream(node_id, stream_id, |s| {
            s.stats.entry(short_type(type_url)).or_default().sent += 1;
            s.last_update = Some(now());
            s.generation += 1;
        });
    }
}

fn node_version(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Option<(String, String)> {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => {
            let v = b.version.as_ref()?;
            let version = format!("{}.{}.{}", v.major_number, v.minor_number, v.patch);
            Some((
                version.clone(),
                format!("{}/{version}", node.user_agent_name),
            ))
        }
        Some(UserAgentVersionType::UserAgentVersion(v)) => {
            Some((v.clone(), node.user_agent_name.clone()))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kuma_core::manager::ManagerOptions;
    use kuma_store::MemoryStore;
    use xds_server::types::{CLUSTER, LISTENER};

    use super::*;

    fn response(type_url: &str) -> SotwResponse {
        SotwResponse {
            type_url: type_url.into(),
            version_info: "v1".into(),
            ..Default::default()
        }
    }

    async fn insight(manager: &ResourceManager) -> Value {
        let r = manager
            .get(&ResourceKey::new(
                ResourceType::DataplaneInsight,
                "default",
                "web-1",
            ))
            .await
            .unwrap();
        match r.spec {
            Spec::DataplaneInsight(s) => Value::Object(s.to_object()),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn records_streams_acks_and_nacks_and_waits_for_the_dataplane() {
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
        manager.ensure_default_mesh().await.unwrap();
        let recorder = InsightRecorder::new(manager.clone(), "cp-1", 2);

        // Events before the Dataplane exists are kept, not lost.
        recorder.on_stream_open(7, "default.web-1");
        recorder.on_response(7, "default.web-1", &response(CLUSTER));
        recorder.on_ack(7, "default.web-1", CLUSTER, "v1");
        recorder.flush().await;
        let dp = kuma_core::resource::parse_yaml(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n",
        )
        .unwrap();
        manager.create(dp).await.unwrap();
        recorder.on_response(7, "default.web-1", &response(LISTENER));
        recorder.on_nack(7, "default.web-1", LISTENER, "v2", "bad listener");
        recorder.flush().await;

        let i = insight(&manager).await;
        let sub = &i["subscriptions"][0];
        assert_eq!(sub["controlPlaneInstanceId"], "cp-1");
        assert!(sub["connectTime"].is_string() && sub.get("disconnectTime").is_none());
        assert_eq!(
            sub["status"]["cds"],
            json!({"responsesSent": 1, "responsesAcknowledged": 1, "responsesRejected": 0})
        );
        assert_eq!(sub["status"]["lds"]["responsesRejected"], 1);
        assert_eq!(sub["status"]["total"]["responsesSent"], 2);
        assert_eq!(i["metadata"]["xds"]["cds"]["lastAckedVersion"], "v1");
        assert_eq!(i["metadata"]["xds"]["lds"]["lastNackedVersion"], "v2");
        assert_eq!(i["metadata"]["xds"]["lds"]["lastNackError"], "bad listener");

        // Closing ends the subscription; only the latest two are kept.
        recorder.on_stream_closed(7, "default.web-1");
        for stream in [8, 9] {
            recorder.on_stream_open(stream, "default.web-1");
            recorder.flush().await;
        }
        let i = insight(&manager).await;
        let subs = i["subscriptions"].as_array().unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0]["id"], "cp-1-8");
        assert_eq!(subs[1]["id"], "cp-1-9");

        // The insight goes with its Dataplane.
        manager
            .delete(
                &ResourceKey::new(ResourceType::Dataplane, "default", "web-1"),
                false,
            )
            .await
            .unwrap();
        assert!(
            manager
                .get(&ResourceKey::new(
                    ResourceType::DataplaneInsight,
                    "default",
                    "web-1"
                ))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn zone_proxies_get_insights_of_their_own_kind() {
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
        let recorder = InsightRecorder::new(manager.clone(), "cp-1", 2);
        let egress = kuma_core::resource::parse_yaml(
            "type: ZoneEgress\nname: egress-1\nnetworking:\n  address: 10.0.0.2\n  port: 10002\n",
        )
        .unwrap();
        manager.create(egress).await.unwrap();
        recorder.on_stream_open(3, ".egress-1");
        recorder.on_response(3, ".egress-1", &response(CLUSTER));
        recorder.flush().await;
        let key = ResourceKey::global(ResourceType::ZoneEgressInsight, "egress-1");
        let r = manager.get(&key).await.unwrap();
        let Spec::ZoneEgressInsight(spec) = &r.spec else {
            panic!("{:?}", r.spec);
        };
        assert_eq!(
            spec.to_object()["subscriptions"][0]["status"]["cds"]["responsesSent"],
            1
        );
        // The insight goes with its ZoneEgress.
        manager
            .delete(
                &ResourceKey::global(ResourceType::ZoneEgress, "egress-1"),
                false,
            )
            .await
            .unwrap();
        assert!(manager.get(&key).await.is_err());
    }
}
