//! Snapshots of xDS resources per node, with content-derived versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use crate::types::{CLUSTER, ENDPOINT};

/// The resources of one type in a snapshot, by name, and their version.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeResources {
    version: String,
    resources: BTreeMap<String, Any>,
    resource_versions: BTreeMap<String, String>,
}

impl TypeResources {
    /// The version: a hash of every resource's name and bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources by name.
    pub fn resources(&self) -> &BTreeMap<String, Any> {
        &self.resources
    }

    /// The version of one resource (a hash of its bytes), as incremental xDS reports it.
    pub fn resource_version(&self, name: &str) -> Option<&str> {
        self.resource_versions.get(name).map(String::as_str)
    }
}

/// Everything one node should have: resources grouped by type URL.
///
/// Versions are derived from content (FNV-1a over names and encoded bytes): building the same
/// snapshot twice yields the same versions, so re-setting it pushes nothing. The endpoints
/// version also covers the clusters, because Envoy re-warms clusters after a cluster update and
/// waits for endpoints again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    types: BTreeMap<String, TypeResources>,
}

const EMPTY_VERSION_SEED: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn version_of(resources: &BTreeMap<String, Any>, extra: &str) -> String {
    let mut h = EMPTY_VERSION_SEED;
    for (name, any) in resources {
        h = fnv1a(h, name.as_bytes());
        h = fnv1a(h, &[0]);
        h = fnv1a(h, any.type_url.as_bytes());
        h = fnv1a(h, &(any.value.len() as u64).to_le_bytes());
        h = fnv1a(h, &any.value);
    }
    h = fnv1a(h, extra.as_bytes());
    format!("{h:016x}")
}

impl Snapshot {
    /// A snapshot of `(name, resource)` pairs; each resource's type URL groups it. A later
    /// resource with the same type and name replaces an earlier one.
    pub fn new(resources: impl IntoIterator<Item = (String, Any)>) -> Self {
        let mut grouped: BTreeMap<String, BTreeMap<String, Any>> = BTreeMap::new();
        for (name, any) in resources {
            grouped
                .entry(any.type_url.clone())
                .or_default()
                .insert(name, any);
        }
        let cluster_version = grouped
            .get(CLUSTER)
            .map(|c| version_of(c, ""))
            .unwrap_or_default();
        let types = grouped
            .into_iter()
            .map(|(type_url, resources)| {
                let extra = if type_url == ENDPOINT {
                    cluster_version.as_str()
                } else {
                    ""
                };
                let version = version_of(&resources, extra);
                let resource_versions = resources
                    .iter()
                    .map(|(name, any)| {
                        let h = fnv1a(fnv1a(EMPTY_VERSION_SEED, &any.value), extra.as_bytes());
                        (name.clone(), format!("{h:016x}"))
                    })
                    .collect();
                (
                    type_url,
                    TypeResources {
                        version,
                        resources,
                        resource_versions,
                    },
                )
            })
            .collect();
        Snapshot { types }
    }

    /// The resources of `type_url` (`None`: the snapshot has none of that type).
    pub fn get(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
    }

    /// The version of `type_url`; a type without resources has the version of the empty set.
    pub fn version(&self, type_url: &str) -> String {
        match self.types.get(type_url) {
            Some(t) => t.version.clone(),
            None => version_of(&BTreeMap::new(), ""),
        }
    }

    /// Type URLs present in the snapshot.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// Snapshots by node id; streams of a node see every new snapshot set for it.
#[derive(Default)]
pub struct SnapshotCache {
    nodes: RwLock<HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&self, node_id: &str) -> watch::Sender<Option<Arc<Snapshot>>> {
        if let Some(tx) = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
        {
            return tx.clone();
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Sets the snapshot of `node_id`. Returns false (and wakes no stream) when it equals the
    /// current one.
    pub fn set(&self, node_id: &str, snapshot: Snapshot) -> bool {
        let snapshot = Arc::new(snapshot);
        self.sender(node_id).send_if_modified(|current| {
            if current.as_deref() == Some(snapshot.as_ref()) {
                return false;
            }
            *current = Some(snapshot.clone());
            true
        })
    }

    /// The current snapshot of `node_id`.
    pub fn get(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(node_id).and_then(|tx| tx.borrow().clone())
    }

    /// Forgets `node_id`: connected streams keep their last snapshot until they close.
    pub fn remove(&self, node_id: &str) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
    }

    /// Node ids with a snapshot.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// A receiver that sees the node's current and future snapshots.
    pub(crate) fn subscribe(&self, node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.sender(node_id).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LISTENER;

    fn any(type_url: &str, bytes: &[u8]) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: bytes.to_vec(),
        }
    }

    #[test]
    fn versions_follow_content() {
        let a = Snapshot::new([
            ("c1".to_string(), any(CLUSTER, b"x")),
            ("l1".to_string(), any(LISTENER, b"y")),
        ]);
        let b = Snapshot::new([
            ("l1".to_string(), any(LISTENER, b"y")),
            ("c1".to_string(), any(CLUSTER, b"x")),
        ]);
        assert_eq!(a, b, "order of input does not matter");
        let c = Snapshot::new([
            ("c1".to_string(), any(CLUSTER, b"z")),
            ("l1".to_string(), any(LISTENER, b"y")),
        ]);
        assert_ne!(a.version(CLUSTER), c.version(CLUSTER));
        assert_eq!(
            a.version(LISTENER),
            c.version(LISTENER),
            "an unchanged type keeps its version"
        );
    }

    #[test]
    fn endpoints_version_moves_with_clusters() {
        let e = ("e1".to_string(), any(ENDPOINT, b"e"));
        let a = Snapshot::new([("c1".to_string(), any(CLUSTER, b"x")), e.clone()]);
        let b = Snapshot::new([("c1".to_string(), any(CLUSTER, b"changed")), e]);
        assert_ne!(a.version(ENDPOINT), b.version(ENDPOINT));
    }

    #[test]
    fn setting_an_equal_snapshot_is_a_no_op() {
        let cache = SnapshotCache::new();
        let snap = || Snapshot::new([("c1".to_string(), any(CLUSTER, b"x"))]);
        let mut rx = cache.subscribe("node");
        assert!(cache.set("node", snap()));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!cache.set("node", snap()), "unchanged content");
        assert!(
            !rx.has_changed().unwrap(),
            "no wake-up for an unchanged snapshot"
        );
    }
}
