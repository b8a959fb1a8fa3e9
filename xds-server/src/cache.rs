//! Snapshots of xDS resources per node, with content-derived versions.
//!
//! Resources are held encoded ([`EncodedResource`]): a resource is serialised once, and every
//! snapshot and every stream that carries it shares those bytes. Build a resource that is the
//! same for many proxies once and clone it into each snapshot; [`SnapshotCache`] also shares
//! what was encoded twice: a resource equal to one a snapshot in the cache holds already is
//! kept as that one allocation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, Weak};

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::watch;

use crate::types::{CLUSTER, ENDPOINT};

/// One xDS resource serialised once as a `google.protobuf.Any`. Clones share the bytes (one
/// reference count), so a resource identical across proxies costs its size once, however many
/// snapshots and streams hold it.
#[derive(Clone)]
pub struct EncodedResource(Arc<Encoded>);

struct Encoded {
    type_url: String,
    /// The encoded `google.protobuf.Any` (type URL and value).
    any: Vec<u8>,
    /// FNV-1a of `any`: cheap inequality and the basis of versions.
    hash: u64,
}

impl EncodedResource {
    /// Encodes `any`, its maps' entries in key order ([`canonical`](crate::canonical)): equal
    /// content gives equal bytes, and so equal versions, in every process.
    pub fn new(any: &Any) -> Self {
        Self::from_parts(any.type_url.clone(), any.value.clone())
    }

    /// Encodes an Envoy message under its own type URL (see [`EncodedResource::new`]).
    pub fn from_message<M: Message + Name>(message: &M) -> Self {
        Self::from_parts(M::type_url(), message.encode_to_vec())
    }

    fn from_parts(type_url: String, value: Vec<u8>) -> Self {
        let value = crate::canonical::canonical(&type_url, value);
        let any = Any { type_url, value };
        let bytes = any.encode_to_vec();
        EncodedResource(Arc::new(Encoded {
            type_url: any.type_url,
            hash: fnv1a(EMPTY_VERSION_SEED, &bytes),
            any: bytes,
        }))
    }

    /// The resource's type URL.
    pub fn type_url(&self) -> &str {
        &self.0.type_url
    }

    /// The encoded `google.protobuf.Any`, as it goes on the wire.
    pub fn encoded_any(&self) -> &[u8] {
        &self.0.any
    }

    /// The resource decoded back into an `Any`.
    pub fn to_any(&self) -> Any {
        // The bytes were produced by encoding an `Any`, so decoding cannot fail; an empty Any
        // is returned should it ever.
        Any::decode(self.0.any.as_slice()).unwrap_or_default()
    }

    /// Whether `self` and `other` share one allocation (not merely equal content).
    pub fn shares_bytes_with(&self, other: &EncodedResource) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn hash(&self) -> u64 {
        self.0.hash
    }
}

impl PartialEq for EncodedResource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.any == other.0.any)
    }
}

impl Eq for EncodedResource {}

impl fmt::Debug for EncodedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedResource")
            .field("type_url", &self.0.type_url)
            .field("bytes", &self.0.any.len())
            .field("hash", &format_args!("{:016x}", self.0.hash))
            .finish()
    }
}

impl From<Any> for EncodedResource {
    fn from(any: Any) -> Self {
        EncodedResource::new(&any)
    }
}

impl From<&Any> for EncodedResource {
    fn from(any: &Any) -> Self {
        EncodedResource::new(any)
    }
}

/// The resources of one type in a snapshot, by name, and their version.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeResources {
    version: String,
    resources: BTreeMap<String, EncodedResource>,
    /// What every resource version of this type also covers (the clusters' version, for
    /// endpoints).
    extra: String,
}

impl TypeResources {
    /// The version: a hash of every resource's name and bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources by name.
    pub fn resources(&self) -> &BTreeMap<String, EncodedResource> {
        &self.resources
    }

    /// The version of one resource (a hash of its bytes), as incremental xDS reports it.
    pub fn resource_version(&self, name: &str) -> Option<String> {
        self.resource_version_hash(name)
            .map(format_resource_version)
    }

    /// [`TypeResources::resource_version`] before it is written out.
    pub fn resource_version_hash(&self, name: &str) -> Option<u64> {
        self.resources.get(name).map(|r| self.version_hash_of(r))
    }

    /// The version hash `resource` has in this type.
    pub fn version_hash_of(&self, resource: &EncodedResource) -> u64 {
        fnv1a(resource.hash(), self.extra.as_bytes())
    }
}

/// A resource version as incremental xDS carries it: 16 hex digits.
pub fn format_resource_version(hash: u64) -> String {
    format!("{hash:016x}")
}

/// Equal resources as one allocation: [`Interner::intern`] hands back the resource with the
/// same content it saw before, if any is still alive. It holds them weakly, so a resource no
/// snapshot holds any more is freed; dead entries are pruned as the table grows.
#[derive(Default)]
struct Interner {
    by_hash: HashMap<u64, Vec<Weak<Encoded>>>,
    /// Entries at the last prune: the next one comes when the table has doubled.
    pruned_at: usize,
    entries: usize,
}

impl Interner {
    fn intern(&mut self, resource: &EncodedResource) -> EncodedResource {
        let candidates = self.by_hash.entry(resource.hash()).or_default();
        for weak in candidates.iter() {
            if let Some(alive) = weak.upgrade()
                && (Arc::ptr_eq(&alive, &resource.0) || alive.any == resource.0.any)
                && alive.type_url == resource.0.type_url
            {
                return EncodedResource(alive);
            }
        }
        candidates.push(Arc::downgrade(&resource.0));
        self.entries += 1;
        if self.entries > 2 * self.pruned_at.max(1024) {
            self.prune();
        }
        resource.clone()
    }

    fn prune(&mut self) {
        self.by_hash.retain(|_, weak| {
            weak.retain(|w| w.strong_count() > 0);
            !weak.is_empty()
        });
        self.entries = self.by_hash.values().map(Vec::len).sum();
        self.pruned_at = self.entries;
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

/// A 64-bit hash of `bytes` (FNV-1a), stable across processes: for tags such as `Etag`.
pub fn content_hash(bytes: &[u8]) -> u64 {
    fnv1a(EMPTY_VERSION_SEED, bytes)
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn version_of(resources: &BTreeMap<String, EncodedResource>, extra: &str) -> String {
    let mut h = EMPTY_VERSION_SEED;
    for (name, resource) in resources {
        h = fnv1a(h, name.as_bytes());
        h = fnv1a(h, &[0]);
        h = fnv1a(h, &resource.hash().to_le_bytes());
    }
    h = fnv1a(h, extra.as_bytes());
    format!("{h:016x}")
}

impl Snapshot {
    /// A snapshot of `(name, resource)` pairs; each resource's type URL groups it. A later
    /// resource with the same type and name replaces an earlier one.
    pub fn new<R: Into<EncodedResource>>(resources: impl IntoIterator<Item = (String, R)>) -> Self {
        let mut by_type: BTreeMap<String, Vec<(String, EncodedResource)>> = BTreeMap::new();
        for (name, resource) in resources {
            let resource = resource.into();
            match by_type.get_mut(resource.type_url()) {
                Some(list) => list.push((name, resource)),
                None => {
                    by_type.insert(resource.type_url().to_string(), vec![(name, resource)]);
                }
            }
        }
        // Sorted in bulk rather than inserted one by one: the input is usually a few sorted
        // runs (a generator's maps), which a stable sort merges in linear time, and a map is
        // built from sorted entries without comparisons.
        let grouped: BTreeMap<String, BTreeMap<String, EncodedResource>> = by_type
            .into_iter()
            .map(|(type_url, mut list)| {
                list.sort_by(|a, b| a.0.cmp(&b.0));
                // Of equal names the later one stays.
                list.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        std::mem::swap(later, kept);
                    }
                    same
                });
                (type_url, list.into_iter().collect())
            })
            .collect();
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
                (
                    type_url,
                    TypeResources {
                        version,
                        resources,
                        extra: extra.to_string(),
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

    /// Every resource replaced by the equal one `interner` holds, if any.
    fn intern(&mut self, interner: &mut Interner) {
        for t in self.types.values_mut() {
            for resource in t.resources.values_mut() {
                *resource = interner.intern(resource);
            }
        }
    }
}

/// Where an [`AdsServer`](crate::AdsServer) reads what to send: each node's current snapshot
/// and every later one.
///
/// [`SnapshotCache`] is the bundled implementation. Implement this to serve snapshots kept
/// elsewhere, for instance made on demand when a node first connects, or shared between
/// servers; the server only ever subscribes.
///
/// ```
/// use std::sync::Arc;
///
/// use tokio::sync::watch;
/// use xds_server::{Cache, Snapshot};
///
/// /// Every node gets the same snapshot.
/// struct OneForAll(watch::Sender<Option<Arc<Snapshot>>>);
///
/// impl Cache for OneForAll {
///     fn subscribe(&self, _node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
///         self.0.subscribe()
///     }
/// }
///
/// let cache = OneForAll(watch::channel(Some(Arc::new(Snapshot::default()))).0);
/// assert!(cache.subscribe("any-node").borrow().is_some());
/// ```
pub trait Cache: Send + Sync + 'static {
    /// A receiver holding `node_id`'s current snapshot (`None`: none yet) that changes whenever
    /// a new one is set. A receiver whose sender is dropped makes the stream subscribe again.
    fn subscribe(&self, node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>>;
}

/// Snapshots by node id; streams of a node see every new snapshot set for it.
///
/// Equal resources in different snapshots are kept once: a snapshot set is checked against the
/// resources the cache holds, and each one equal to a held one is replaced by it (one hash
/// lookup per resource). Memory then grows with the distinct resources, not with nodes times
/// resources.
#[derive(Default)]
pub struct SnapshotCache {
    nodes: RwLock<HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
    interner: Mutex<Interner>,
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
    pub fn set(&self, node_id: &str, mut snapshot: Snapshot) -> bool {
        snapshot.intern(&mut self.interner.lock().unwrap_or_else(|p| p.into_inner()));
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
}

impl Cache for SnapshotCache {
    fn subscribe(&self, node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
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
    fn a_later_resource_of_the_same_name_replaces_an_earlier_one() {
        let s = Snapshot::new([
            ("c2".to_string(), any(CLUSTER, b"a")),
            ("c1".to_string(), any(CLUSTER, b"b")),
            ("c2".to_string(), any(CLUSTER, b"c")),
            ("c0".to_string(), any(CLUSTER, b"d")),
            ("c2".to_string(), any(CLUSTER, b"e")),
        ]);
        let clusters = s.get(CLUSTER).unwrap().resources();
        let names: Vec<&str> = clusters.keys().map(String::as_str).collect();
        assert_eq!(names, ["c0", "c1", "c2"]);
        assert_eq!(clusters["c2"].to_any().value, b"e");
    }

    #[test]
    fn endpoints_version_moves_with_clusters() {
        let e = ("e1".to_string(), any(ENDPOINT, b"e"));
        let a = Snapshot::new([("c1".to_string(), any(CLUSTER, b"x")), e.clone()]);
        let b = Snapshot::new([("c1".to_string(), any(CLUSTER, b"changed")), e]);
        assert_ne!(a.version(ENDPOINT), b.version(ENDPOINT));
    }

    #[test]
    fn resources_round_trip_and_share_bytes() {
        let original = any(CLUSTER, b"payload");
        let shared = EncodedResource::from(&original);
        assert_eq!(shared.to_any(), original);
        assert_eq!(shared.type_url(), CLUSTER);
        let a = Snapshot::new([("c".to_string(), shared.clone())]);
        let b = Snapshot::new([("c".to_string(), shared.clone())]);
        let in_a = &a.get(CLUSTER).unwrap().resources()["c"];
        let in_b = &b.get(CLUSTER).unwrap().resources()["c"];
        assert!(
            in_a.shares_bytes_with(in_b),
            "one allocation for both snapshots"
        );
        let copy = EncodedResource::from(&original);
        assert!(!copy.shares_bytes_with(&shared));
        assert_eq!(copy, shared, "equal content compares equal");
        assert_ne!(EncodedResource::from(any(CLUSTER, b"other")), shared);
    }

    #[test]
    fn equal_resources_of_different_nodes_are_kept_once() {
        let cache = SnapshotCache::new();
        // Encoded separately, as two proxies' generations would.
        let snap = |own: &[u8]| {
            Snapshot::new([
                ("shared".to_string(), any(CLUSTER, b"the same for everyone")),
                ("own".to_string(), any(CLUSTER, own)),
            ])
        };
        assert!(cache.set("a", snap(b"a")));
        assert!(cache.set("b", snap(b"b")));
        let resource = |node: &str, name: &str| {
            cache.get(node).unwrap().get(CLUSTER).unwrap().resources()[name].clone()
        };
        assert!(resource("a", "shared").shares_bytes_with(&resource("b", "shared")));
        assert!(!resource("a", "own").shares_bytes_with(&resource("b", "own")));
        // Once no snapshot holds it, it is freed, and the table forgets it when pruned.
        let weak = Arc::downgrade(&resource("a", "own").0);
        cache.remove("a");
        assert!(weak.upgrade().is_none(), "the interner holds it weakly");
        let mut interner = cache.interner.lock().unwrap();
        interner.prune();
        assert_eq!(interner.entries, 2, "b's two resources");
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
