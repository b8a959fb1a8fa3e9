//! Universal data-plane lifecycle: a proxy's Dataplane exists while it is connected.
//!
//! The first request of an ADS stream carries the Dataplane (node metadata
//! `dataplane.resource`, put there by the bootstrap) and what the proxy reports about itself
//! (admin and readiness ports, work directory). Before the stream is served, the Dataplane is
//! validated and applied like any write, and the stream waits until the proxy's snapshot is
//! generated from what it reported: a proxy back after a restart of the control plane is
//! answered from its own config, not from one generated before it said who it is. When the
//! node's last stream ends, the Dataplane is deleted after a delay; a stream that reconnects
//! within the delay keeps it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::generate::ProxyMetadata;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, parse_json};
use tokio::runtime::Handle;
use xds_server::server::{Callbacks, StreamPreparer};

/// Node metadata key holding the Dataplane JSON.
pub const DATAPLANE_RESOURCE: &str = "dataplane.resource";
/// Node metadata key holding Envoy's admin port.
pub const ADMIN_PORT: &str = "dataplane.admin.port";
/// Node metadata key holding kuma-dp's readiness port.
pub const READINESS_PORT: &str = "dataplane.readinessReporter.port";
/// Node metadata key holding kuma-dp's work directory.
pub const WORKDIR: &str = "workdir";

/// The proxies that are connected and what they reported about themselves, by node id; read
/// by config generation, which only generates for connected proxies.
///
/// Each change of a node's metadata gets a revision; the reconciler hears of the change
/// ([`ProxyRegistry::changes`]), regenerates the node and records the revision it generated
/// from ([`ProxyRegistry::generated`]), which [`Lifecycle`] waits for before a new stream is
/// served.
///
/// A node is connected from its first report (or, for a proxy whose node metadata carries no
/// Dataplane, its first stream) until the lifecycle deregisters it (or its last such stream
/// ends); the reconciler hears of both ([`ProxyChange`]).
pub struct ProxyRegistry {
    nodes: Mutex<HashMap<String, Registered>>,
    /// Bumped whenever a node's snapshot was generated.
    generations: tokio::sync::watch::Sender<u64>,
    /// Where changes are announced, once the reconciler listens.
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ProxyChange>>>,
}

/// What the reconciler hears from the [`ProxyRegistry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChange {
    /// The proxy of the Dataplane `name` in `mesh` reported new metadata: its config is due.
    Reported {
        /// The proxy's type: Dataplane, ZoneIngress or ZoneEgress.
        rtype: ResourceType,
        /// The Dataplane's mesh (empty for a zone proxy).
        mesh: String,
        /// The Dataplane's (or zone proxy's) name.
        name: String,
    },
    /// A node whose metadata names no Dataplane opened its first stream: its config is due.
    Connected(String),
    /// The node is no longer connected: its config is no longer needed.
    Disconnected(String),
}

#[derive(Default)]
struct Registered {
    metadata: ProxyMetadata,
    /// The revision of `metadata` (unique in the process; 0: the node reported nothing).
    revision: u64,
    /// The latest revision a snapshot was generated from.
    generated: u64,
    /// Open streams that reported nothing (their node is connected while there are some).
    bare_streams: usize,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            nodes: Mutex::default(),
            generations: tokio::sync::watch::channel(0).0,
            changes: Mutex::default(),
        }
    }
}

impl ProxyRegistry {
    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `node_id` reported (default when it never connected).
    pub fn get(&self, node_id: &str) -> ProxyMetadata {
        self.get_revision(node_id).0
    }

    /// What `node_id` reported and the revision of that report (0: never connected).
    pub fn get_revision(&self, node_id: &str) -> (ProxyMetadata, u64) {
        self.nodes()
            .get(node_id)
            .map(|r| (r.metadata.clone(), r.revision))
            .unwrap_or_default()
    }

    /// Records `metadata` for the Dataplane `key` (node `node_id`): its new revision when it
    /// differs from what was recorded, announced to the reconciler.
    fn set(&self, key: &ResourceKey, node_id: &str, metadata: ProxyMetadata) -> Option<u64> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let revision = {
            let mut nodes = self.nodes();
            let entry = nodes.entry(node_id.to_string()).or_default();
            if entry.revision != 0 && entry.metadata == metadata {
                return None;
            }
            entry.metadata = metadata;
            entry.revision = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            entry.revision
        };
        self.announce(ProxyChange::Reported {
            rtype: key.rtype,
            mesh: key.mesh.clone(),
            name: key.name.clone(),
        });
        Some(revision)
    }

    fn announce(&self, change: ProxyChange) {
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = changes.as_ref() {
            let _ = tx.send(change);
        }
    }

    /// Forgets `node_id`: it is no longer connected.
    fn remove(&self, node_id: &str) {
        if self.nodes().remove(node_id).is_some() {
            self.announce(ProxyChange::Disconnected(node_id.to_string()));
        }
    }

    /// Whether `node_id` is connected: it reported itself, or has a stream open.
    pub fn connected(&self, node_id: &str) -> bool {
        self.nodes().contains_key(node_id)
    }

    /// A stream of `node_id` opened. A node that reported nothing (its metadata names no
    /// Dataplane) is connected while it has such streams; its first is announced.
    pub fn stream_opened(&self, node_id: &str) {
        let first = {
            let mut nodes = self.nodes();
            let entry = nodes.entry(node_id.to_string()).or_default();
            if entry.revision != 0 {
                return;
            }
            entry.bare_streams += 1;
            entry.bare_streams == 1
        };
        if first {
            self.announce(ProxyChange::Connected(node_id.to_string()));
        }
    }

    /// A stream of `node_id` closed. A node that reported nothing is disconnected with its
    /// last stream (a node that reported is deregistered by the [`Lifecycle`], after a delay).
    pub fn stream_closed(&self, node_id: &str) {
        let gone = {
            let mut nodes = self.nodes();
            let Some(entry) = nodes.get_mut(node_id) else {
                return;
            };
            if entry.revision != 0 {
                return;
            }
            entry.bare_streams = entry.bare_streams.saturating_sub(1);
            entry.bare_streams == 0
        };
        if gone {
            self.remove(node_id);
        }
    }

    /// What happens to proxies from now on (one listener: a second call replaces the first).
    pub fn changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<ProxyChange> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Records that `node_id`'s snapshot was generated from the metadata of `revision`.
    pub fn generated(&self, node_id: &str, revision: u64) {
        if revision == 0 {
            return;
        }
        if let Some(r) = self.nodes().get_mut(node_id) {
            r.generated = r.generated.max(revision);
        }
        self.generations.send_modify(|g| *g += 1);
    }

    /// Waits until `node_id`'s snapshot was generated from `revision` or later; false when
    /// `limit` passed first.
    async fn wait_generated(&self, node_id: &str, revision: u64, limit: Duration) -> bool {
        let mut generations = self.generations.subscribe();
        tokio::time::timeout(limit, async {
            loop {
                let done = self
                    .nodes()
                    .get(node_id)
                    .is_none_or(|r| r.generated >= revision || r.revision > revision);
                if done {
                    return;
                }
                if generations.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

fn string_field(node: Option<&Node>, key: &str) -> Option<String> {
    let value = node?.metadata.as_ref()?.fields.get(key)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The proxy resource a node's metadata carries (`dataplane.resource`, put there by the
/// bootstrap): a Dataplane, or a zone proxy's ZoneIngress or ZoneEgress (node id `.<name>`).
/// `None` when it carries none, an error naming the field when it is none of those.
pub fn node_dataplane(node: Option<&Node>) -> Result<Option<Resource>, String> {
    let Some(value) = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(DATAPLANE_RESOURCE))
    else {
        return Ok(None);
    };
    let Some(Kind::StringValue(json)) = &value.kind else {
        return Ok(None);
    };
    match parse_json(json) {
        Ok(r) if is_proxy_type(r.rtype()) => Ok(Some(r)),
        Ok(r) => Err(format!(
            "node metadata {DATAPLANE_RESOURCE}: a {}, not a Dataplane, ZoneIngress or ZoneEgress",
            r.rtype()
        )),
        Err(e) => Err(format!("node metadata {DATAPLANE_RESOURCE}: {e}")),
    }
}

/// Whether resources of `rtype` stand for a proxy: Dataplane, ZoneIngress, ZoneEgress.
pub fn is_proxy_type(rtype: ResourceType) -> bool {
    matches!(
        rtype,
        ResourceType::Dataplane | ResourceType::ZoneIngress | ResourceType::ZoneEgress
    )
}

fn port_field(node: Option<&Node>, key: &str) -> Option<u32> {
    let value = node?.metadata.as_ref()?.fields.get(key)?;
    match &value.kind {
        Some(Kind::StringValue(s)) => s.parse().ok(),
        Some(Kind::NumberValue(n)) if *n >= 1.0 && *n <= 65535.0 => Some(*n as u32),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p))
}

#[derive(Default)]
struct Nodes {
    /// Open streams per node id, and a counter that changes whenever one opens.
    open: HashMap<String, (usize, u64)>,
    /// Streams whose Dataplane was already registered.
    registered: HashSet<u64>,
    /// Node id -> Dataplane key it registered.
    keys: HashMap<String, ResourceKey>,
}

/// [`Callbacks`] creating and removing Dataplanes as proxies come and go, and the
/// [`StreamPreparer`] that registers a proxy before its stream is served. Clones share state.
#[derive(Clone)]
pub struct Lifecycle {
    manager: ResourceManager,
    delay: Duration,
    runtime: Handle,
    nodes: Arc<Mutex<Nodes>>,
    registry: Arc<ProxyRegistry>,
    /// True once the control plane is stopping: the streams it ends are not proxies leaving.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Lifecycle {
    /// Deletes a disconnected proxy's Dataplane `delay` after its last stream ends; records
    /// what proxies report about themselves in `registry`.
    pub fn new(
        manager: ResourceManager,
        delay: Duration,
        runtime: Handle,
        registry: Arc<ProxyRegistry>,
    ) -> Self {
        Lifecycle {
            manager,
            delay,
            runtime,
            nodes: Arc::new(Mutex::new(Nodes::default())),
            registry,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Keeps every Dataplane once `stopping` reads true: a control plane that shuts down ends
    /// its proxies' streams, but the proxies are not leaving (they reconnect to an instance
    /// that runs).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, stream_id: u64, node_id: &str, node: Option<&Node>) {
        if !self.nodes().registered.insert(stream_id) {
            return;
        }
        let dataplane = match node_own_dataplane(node, node_id) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(node_id, error = %e, "node metadata holds no valid Dataplane");
                return;
            }
        };
        self.nodes()
            .keys
            .insert(node_id.to_string(), dataplane.key());
        // A prepared stream registered its proxy already (same metadata: nothing to do);
        // a server without the preparer registers here.
        if self
            .registry
            .set(&dataplane.key(), node_id, node_metadata(node))
            .is_none()
        {
            return;
        }
        let manager = self.manager.clone();
        let node_id = node_id.to_string();
        self.runtime.spawn(async move {
            if let Err(e) = manager.apply(dataplane).await {
                tracing::warn!(node_id, error = %kuma_core::errors::Chain(&e), "cannot register the Dataplane");
            }
        });
    }
}

/// The Dataplane a node's metadata carries, when it is the node's own (its mesh and name make
/// `node_id`); an error naming the reason otherwise.
fn node_own_dataplane(node: Option<&Node>, node_id: &str) -> Result<Option<Resource>, String> {
    let Some(dataplane) = node_dataplane(node)? else {
        return Ok(None);
    };
    if crate::generate::node_id(&dataplane.meta.mesh, &dataplane.meta.name) != node_id {
        return Err("the Dataplane in node metadata does not match the node id".into());
    }
    Ok(Some(dataplane))
}

/// What a node's metadata says about its proxy.
fn node_metadata(node: Option<&Node>) -> ProxyMetadata {
    ProxyMetadata {
        admin_port: port_field(node, ADMIN_PORT),
        readiness_port: port_field(node, READINESS_PORT),
        workdir: string_field(node, WORKDIR),
    }
}

/// How long a new stream waits for its proxy's first snapshot before it is served anyway.
const PREPARE_LIMIT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl StreamPreparer for Lifecycle {
    /// Registers the proxy (its Dataplane and what it reports about itself) and waits until
    /// its snapshot is generated from that, so that the first answers of the stream come from
    /// the proxy's own config: a proxy back after a restart of the control plane is sent
    /// nothing it does not have already.
    async fn prepare(&self, node: &Node) {
        let node_id = node.id.as_str();
        let Ok(Some(dataplane)) = node_own_dataplane(Some(node), node_id) else {
            return; // reported by `register` on the first request
        };
        let revision = self
            .registry
            .set(&dataplane.key(), node_id, node_metadata(Some(node)));
        if let Err(e) = self.manager.apply(dataplane).await {
            tracing::warn!(node_id, error = %kuma_core::errors::Chain(&e), "cannot register the Dataplane");
            return;
        }
        if let Some(revision) = revision
            && !self
                .registry
                .wait_generated(node_id, revision, PREPARE_LIMIT)
                .await
        {
            tracing::warn!(
                node_id,
                "no snapshot generated for the proxy in time; serving it what there is"
            );
        }
    }
}

impl Callbacks for Lifecycle {
    fn on_stream_open(&self, _stream_id: u64, node_id: &str) {
        {
            let mut nodes = self.nodes();
            let entry = nodes.open.entry(node_id.to_string()).or_default();
            entry.0 += 1;
            entry.1 += 1;
        }
        self.registry.stream_opened(node_id);
    }

    fn on_request(&self, stream_id: u64, node_id: &str, request: &DiscoveryRequest) {
        self.register(stream_id, node_id, request.node.as_ref());
    }

    fn on_delta_request(&self, stream_id: u64, node_id: &str, request: &DeltaDiscoveryRequest) {
        self.register(stream_id, node_id, request.node.as_ref());
    }

    fn on_stream_closed(&self, stream_id: u64, node_id: &str) {
        if *self.stopping.borrow() {
            return;
        }
        self.registry.stream_closed(node_id);
        let generation = {
            let mut nodes = self.nodes();
            nodes.registered.remove(&stream_id);
            let Some(entry) = nodes.open.get_mut(node_id) else {
                return;
            };
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 > 0 {
                return;
            }
            entry.1
        };
        let Some(key) = self.nodes().keys.get(node_id).cloned() else {
            return;
        };
        let manager = self.manager.clone();
        let delay = self.delay;
        let node_id = node_id.to_string();
        let this_generation = generation;
        let nodes = self.nodes.clone();
        let registry = self.registry.clone();
        let stopping = self.stopping.clone();
        // Re-checked after the delay: a reconnect bumps the generation.
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if *stopping.borrow() {
                return;
            }
            let gone = {
                let n = nodes.lock().unwrap_or_else(|p| p.into_inner());
                n.open
                    .get(&node_id)
                    .is_none_or(|(open, generation)| *open == 0 && *generation == this_generation)
            };
            if gone {
                registry.remove(&node_id);
                match manager.delete(&key, false).await {
                    Ok(()) => tracing::info!(
                        node_id,
                        "deregistered the Dataplane of a disconnected proxy"
                    ),
                    Err(e) => tracing::debug!(node_id, error = %kuma_core::errors::Chain(&e), "Dataplane already gone"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_report_waits_for_a_snapshot_generated_from_it() {
        let registry = Arc::new(ProxyRegistry::default());
        let mut changes = registry.changes();
        let key = ResourceKey::new(ResourceType::Dataplane, "default", "web-1");
        let reported = ProxyMetadata {
            admin_port: Some(9901),
            ..Default::default()
        };
        let revision = registry
            .set(&key, "default.web-1", reported.clone())
            .expect("a first report is a change");
        assert_eq!(
            changes.try_recv().unwrap(),
            ProxyChange::Reported {
                rtype: ResourceType::Dataplane,
                mesh: "default".to_string(),
                name: "web-1".to_string()
            }
        );
        assert_eq!(registry.set(&key, "default.web-1", reported.clone()), None);
        assert!(changes.try_recv().is_err(), "the same report is no change");
        // Nothing generated yet: the wait runs out.
        assert!(
            !registry
                .wait_generated("default.web-1", revision, Duration::from_millis(50))
                .await
        );
        // A snapshot generated from an older report does not end the wait; one from this
        // report does.
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .wait_generated("default.web-1", revision, Duration::from_secs(5))
                    .await
            })
        };
        registry.generated("default.web-1", revision - 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        registry.generated("default.web-1", revision);
        assert!(waiter.await.unwrap());
        assert_eq!(registry.get_revision("default.web-1"), (reported, revision));
    }

    #[test]
    fn a_node_is_connected_from_its_report_or_its_bare_streams_until_it_leaves() {
        let registry = ProxyRegistry::default();
        let mut changes = registry.changes();
        let key = ResourceKey::new(ResourceType::Dataplane, "default", "web-1");
        assert!(!registry.connected("default.web-1"));
        registry.set(&key, "default.web-1", ProxyMetadata::default());
        assert!(registry.connected("default.web-1"));
        // Its streams open and close; it stays until the lifecycle deregisters it.
        registry.stream_opened("default.web-1");
        registry.stream_closed("default.web-1");
        assert!(registry.connected("default.web-1"));
        registry.remove("default.web-1");
        assert!(!registry.connected("default.web-1"));

        // A node that reports nothing is connected while it has streams.
        registry.stream_opened("default.bare");
        registry.stream_opened("default.bare");
        registry.stream_closed("default.bare");
        assert!(registry.connected("default.bare"));
        registry.stream_closed("default.bare");
        assert!(!registry.connected("default.bare"));
        let heard: Vec<ProxyChange> = std::iter::from_fn(|| changes.try_recv().ok()).collect();
        assert_eq!(
            heard,
            [
                ProxyChange::Reported {
                    rtype: ResourceType::Dataplane,
                    mesh: "default".into(),
                    name: "web-1".into()
                },
                ProxyChange::Disconnected("default.web-1".into()),
                ProxyChange::Connected("default.bare".into()),
                ProxyChange::Disconnected("default.bare".into()),
            ]
        );
    }
}
