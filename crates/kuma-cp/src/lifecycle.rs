//! Universal data-plane lifecycle: a proxy's Dataplane exists while it is connected.
//!
//! The first request of an ADS stream carries the Dataplane (node metadata
//! `dataplane.resource`, put there by the bootstrap). It is validated and applied like any
//! write. When the node's last stream ends, the Dataplane is deleted after a delay; a stream
//! that reconnects within the delay keeps it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, parse_json};
use kuma_xds::generate::ProxyMetadata;
use kuma_xds::server::Callbacks;
use tokio::runtime::Handle;

/// Node metadata key holding the Dataplane JSON.
pub const DATAPLANE_RESOURCE: &str = "dataplane.resource";
/// Node metadata key holding Envoy's admin port.
pub const ADMIN_PORT: &str = "dataplane.admin.port";
/// Node metadata key holding kuma-dp's readiness port.
pub const READINESS_PORT: &str = "dataplane.readinessReporter.port";
/// Node metadata key holding kuma-dp's work directory.
pub const WORKDIR: &str = "workdir";

/// What connected proxies reported about themselves, by node id; read by config generation.
#[derive(Default)]
pub struct ProxyRegistry {
    nodes: Mutex<HashMap<String, ProxyMetadata>>,
}

impl ProxyRegistry {
    /// What `node_id` reported (default when it never connected).
    pub fn get(&self, node_id: &str) -> ProxyMetadata {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .cloned()
            .unwrap_or_default()
    }

    fn set(&self, node_id: &str, metadata: ProxyMetadata) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.to_string(), metadata);
    }

    fn remove(&self, node_id: &str) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
    }
}

fn string_field(node: Option<&Node>, key: &str) -> Option<String> {
    let value = node?.metadata.as_ref()?.fields.get(key)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The Dataplane a node's metadata carries (`dataplane.resource`, put there by the
/// bootstrap): `None` when it carries none, an error naming the field when it is not a valid
/// Dataplane.
pub(crate) fn node_dataplane(node: Option<&Node>) -> Result<Option<Resource>, String> {
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
        Ok(r) if r.rtype() == ResourceType::Dataplane => Ok(Some(r)),
        Ok(r) => Err(format!(
            "node metadata {DATAPLANE_RESOURCE}: a {}, not a Dataplane",
            r.rtype()
        )),
        Err(e) => Err(format!("node metadata {DATAPLANE_RESOURCE}: {e}")),
    }
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

/// [`Callbacks`] creating and removing Dataplanes as proxies come and go.
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
        let dataplane = match node_dataplane(node) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(node_id, error = %e, "node metadata holds no valid Dataplane");
                return;
            }
        };
        if kuma_xds::generate::node_id(&dataplane.meta.mesh, &dataplane.meta.name) != node_id {
            tracing::warn!(
                node_id,
                "the Dataplane in node metadata does not match the node id"
            );
            return;
        }
        self.nodes()
            .keys
            .insert(node_id.to_string(), dataplane.key());
        let metadata = ProxyMetadata {
            admin_port: port_field(node, ADMIN_PORT),
            readiness_port: port_field(node, READINESS_PORT),
            workdir: string_field(node, WORKDIR),
        };
        self.registry.set(node_id, metadata);
        let manager = self.manager.clone();
        let node_id = node_id.to_string();
        self.runtime.spawn(async move {
            if let Err(e) = manager.apply(dataplane).await {
                tracing::warn!(node_id, error = %e, "cannot register the Dataplane");
            }
        });
    }
}

impl Callbacks for Lifecycle {
    fn on_stream_open(&self, _stream_id: u64, node_id: &str) {
        let mut nodes = self.nodes();
        let entry = nodes.open.entry(node_id.to_string()).or_default();
        entry.0 += 1;
        entry.1 += 1;
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
                    Err(e) => tracing::debug!(node_id, error = %e, "Dataplane already gone"),
                }
            }
        });
    }
}
