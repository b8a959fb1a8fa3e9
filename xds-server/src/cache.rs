//! Snapshots of xDS resources per node, with content-derived versions.
//!
//! Resources are held encoded ([`EncodedResource`]): a resource is serialised once, and every
//! snapshot and every stream that carries it shares those bytes. Build a resource that is the
//! same for many proxies once and clone it into each snapshot; [`SnapshotCache`] also shares
//! what was encoded twice: a resource equal to one a snapshot in the cache holds already is
//! kept as that one allocation.
//!
//! Resources that many snapshots have in common go into one [`SharedResources`], and each
//! snapshot made with [`Snapshot::layered`] holds them by reference: a snapshot then costs its
//! own resources, not the thousands it shares. Versions depend on the resources alone (each
//! contributes a hash, and a version sums them), so a layered snapshot and a flat one of the
//! same resources have the same versions and compare equal.

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

/// Resources of one type that many snapshots hold by reference (see [`SharedResources`]).
#[derive(Debug)]
pub struct Layer {
    resources: BTreeMap<String, EncodedResource>,
    /// The sum of its resources' contributions to a version (see `entry_hash`).
    hash: u64,
}

impl Layer {
    fn new(resources: BTreeMap<String, EncodedResource>) -> Self {
        let hash = version_hash(&resources);
        Layer { resources, hash }
    }

    /// Same names, same resources.
    fn same(&self, other: &Layer) -> bool {
        self.hash == other.hash && self.resources == other.resources
    }
}

/// Resources that many snapshots share, grouped by type: built and encoded once (the
/// outbounds of every proxy that sees its mesh the same way, say), then held by reference by
/// every snapshot made with [`Snapshot::layered`], so a snapshot costs only its own resources.
#[derive(Debug, Clone, Default)]
pub struct SharedResources {
    types: BTreeMap<String, Arc<Layer>>,
}

impl SharedResources {
    /// Groups `resources` by type; a later resource of the same type and name replaces an
    /// earlier one.
    pub fn new<R: Into<EncodedResource>>(resources: impl IntoIterator<Item = (String, R)>) -> Self {
        SharedResources {
            types: grouped(resources)
                .into_iter()
                .map(|(t, r)| (t, Arc::new(Layer::new(r))))
                .collect(),
        }
    }

    /// Every resource, by type then name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &EncodedResource)> {
        self.types
            .values()
            .flat_map(|l| l.resources.iter().map(|(n, r)| (n.as_str(), r)))
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.types.values().map(|l| l.resources.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resources of one type in a snapshot, by name, and their version: the snapshot's own,
/// and a layer it shares with other snapshots (its own replace shared ones of the same name).
#[derive(Debug, Clone)]
pub struct TypeResources {
    version: String,
    own: BTreeMap<String, EncodedResource>,
    shared: Option<Arc<Layer>>,
    /// How many distinct names there are.
    len: usize,
    /// What every resource version of this type also covers (the clusters' version, for
    /// endpoints).
    extra: String,
}

impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.len == other.len
            && self.extra == other.extra
            && self.iter().eq(other.iter())
    }
}

impl TypeResources {
    fn new(
        own: BTreeMap<String, EncodedResource>,
        shared: Option<Arc<Layer>>,
        extra: &str,
    ) -> Self {
        let mut sum = version_hash(&own);
        let mut len = own.len();
        if let Some(layer) = &shared {
            sum = sum.wrapping_add(layer.hash);
            len += layer.resources.len();
            // Shared resources replaced by own ones do not count.
            for (name, replaced) in own
                .keys()
                .filter_map(|n| Some((n, layer.resources.get(n)?)))
            {
                sum = sum.wrapping_sub(entry_hash(name, replaced));
                len -= 1;
            }
        }
        let mut h = fnv1a(EMPTY_VERSION_SEED, &sum.to_le_bytes());
        h = fnv1a(h, &(len as u64).to_le_bytes());
        h = fnv1a(h, extra.as_bytes());
        TypeResources {
            version: format!("{h:016x}"),
            own,
            shared,
            len,
            extra: extra.to_string(),
        }
    }

    /// The version: a hash of every resource's name and bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&EncodedResource> {
        self.own
            .get(name)
            .or_else(|| self.shared.as_ref()?.resources.get(name))
    }

    /// The resource named `name`, with the name as this holds it.
    pub fn get_key_value(&self, name: &str) -> Option<(&str, &EncodedResource)> {
        self.own
            .get_key_value(name)
            .or_else(|| self.shared.as_ref()?.resources.get_key_value(name))
            .map(|(n, r)| (n.as_str(), r))
    }

    /// Whether there is a resource named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every resource, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &EncodedResource)> {
        let mut own = self.own.iter().peekable();
        let mut shared = self
            .shared
            .as_ref()
            .map(|l| l.resources.iter())
            .into_iter()
            .flatten()
            .peekable();
        std::iter::from_fn(move || {
            let next = match (own.peek(), shared.peek()) {
                (Some(o), Some(s)) => match o.0.cmp(s.0) {
                    std::cmp::Ordering::Less => own.next(),
                    std::cmp::Ordering::Greater => shared.next(),
                    std::cmp::Ordering::Equal => {
                        shared.next();
                        own.next()
                    }
                },
                (Some(_), None) => own.next(),
                (None, Some(_)) => shared.next(),
                (None, None) => None,
            };
            next.map(|(n, r)| (n.as_str(), r))
        })
    }

    /// The names whose resource differs between `base` and `self` (changed, added or gone),
    /// found without looking at every resource when they share their layer, and by comparing
    /// their layers' resources by reference otherwise. `None` when every resource's version
    /// changed (another `extra`) or one has a layer and the other none.
    pub(crate) fn changed_since<'a>(&'a self, base: &'a TypeResources) -> Option<Vec<&'a str>> {
        if self.extra != base.extra {
            return None;
        }
        // One vector, sorted at the end: a push costs no tree of names.
        let mut changed: Vec<&str> = self
            .own
            .keys()
            .chain(base.own.keys())
            .map(String::as_str)
            .collect();
        match (&self.shared, &base.shared) {
            (None, None) => {}
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
            (Some(a), Some(b)) => {
                let (mut new, mut old) =
                    (a.resources.iter().peekable(), b.resources.iter().peekable());
                loop {
                    match (new.peek(), old.peek()) {
                        (Some(n), Some(o)) => match n.0.cmp(o.0) {
                            std::cmp::Ordering::Less => {
                                changed.push(n.0);
                                new.next();
                            }
                            std::cmp::Ordering::Greater => {
                                changed.push(o.0);
                                old.next();
                            }
                            std::cmp::Ordering::Equal => {
                                if n.1 != o.1 {
                                    changed.push(n.0);
                                }
                                new.next();
                                old.next();
                            }
                        },
                        (Some(n), None) => {
                            changed.push(n.0);
                            new.next();
                        }
                        (None, Some(o)) => {
                            changed.push(o.0);
                            old.next();
                        }
                        (None, None) => break,
                    }
                }
            }
            _ => return None,
        }
        changed.sort_unstable();
        changed.dedup();
        Some(changed)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n)
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The version of one resource (a hash of its bytes), as incremental xDS reports it.
    pub fn resource_version(&self, name: &str) -> Option<String> {
        self.resource_version_hash(name)
            .map(format_resource_version)
    }

    /// [`TypeResources::resource_version`] before it is written out.
    pub fn resource_version_hash(&self, name: &str) -> Option<u64> {
        self.get(name).map(|r| self.version_hash_of(r))
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
    /// Interned layers by their hash.
    layers: HashMap<u64, Vec<Weak<Layer>>>,
    /// Layers already interned, by address: (the layer, its interned equal).
    seen_layers: HashMap<usize, (Weak<Layer>, Weak<Layer>)>,
    layers_pruned_at: usize,
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

    /// The interned layer equal to `layer`: one held already, or a copy of `layer` with its
    /// resources interned. A layer shared by many snapshots is interned once.
    fn intern_layer(&mut self, layer: &Arc<Layer>) -> Arc<Layer> {
        let address = Arc::as_ptr(layer) as usize;
        if let Some((source, interned)) = self.seen_layers.get(&address)
            && source.upgrade().is_some_and(|s| Arc::ptr_eq(&s, layer))
            && let Some(interned) = interned.upgrade()
        {
            return interned;
        }
        let alive = self
            .layers
            .get(&layer.hash)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .find(|l| l.same(layer));
        let interned = match alive {
            Some(l) => l,
            None => {
                let resources = layer
                    .resources
                    .iter()
                    .map(|(n, r)| (n.clone(), self.intern(r)))
                    .collect();
                let l = Arc::new(Layer {
                    resources,
                    hash: layer.hash,
                });
                self.layers
                    .entry(l.hash)
                    .or_default()
                    .push(Arc::downgrade(&l));
                l
            }
        };
        self.seen_layers
            .insert(address, (Arc::downgrade(layer), Arc::downgrade(&interned)));
        if self.seen_layers.len() > 2 * self.layers_pruned_at.max(64) {
            self.seen_layers
                .retain(|_, (s, i)| s.strong_count() > 0 && i.strong_count() > 0);
            self.layers.retain(|_, l| {
                l.retain(|w| w.strong_count() > 0);
                !l.is_empty()
            });
            self.layers_pruned_at = self.seen_layers.len();
        }
        interned
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

/// The part of a version one resource contributes: a well-mixed hash of its name and bytes.
/// A version adds these up (wrapping), so it depends on the resources alone, not on how a
/// snapshot holds them (own or shared).
fn entry_hash(name: &str, resource: &EncodedResource) -> u64 {
    let mut h = fnv1a(EMPTY_VERSION_SEED, name.as_bytes());
    h = fnv1a(h, &[0]);
    h = fnv1a(h, &resource.hash().to_le_bytes());
    // splitmix64's finaliser: every input bit moves every output bit, so sums do not cancel.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn version_hash(resources: &BTreeMap<String, EncodedResource>) -> u64 {
    resources
        .iter()
        .fold(0u64, |sum, (n, r)| sum.wrapping_add(entry_hash(n, r)))
}

/// `resources` grouped by type URL, each group by name (a later resource of the same type and
/// name replaces an earlier one).
fn grouped<R: Into<EncodedResource>>(
    resources: impl IntoIterator<Item = (String, R)>,
) -> BTreeMap<String, BTreeMap<String, EncodedResource>> {
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
    // Sorted in bulk rather than inserted one by one: the input is usually a few sorted runs
    // (a generator's maps), which a stable sort merges in linear time, and a map is built from
    // sorted entries without comparisons.
    by_type
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
        .collect()
}

impl Snapshot {
    /// A snapshot of `(name, resource)` pairs; each resource's type URL groups it. A later
    /// resource with the same type and name replaces an earlier one.
    pub fn new<R: Into<EncodedResource>>(resources: impl IntoIterator<Item = (String, R)>) -> Self {
        Self::layered(resources, &SharedResources::default())
    }

    /// A snapshot of its own `resources` and of `shared` ones, held by reference (its own
    /// replace shared ones of the same type and name).
    pub fn layered<R: Into<EncodedResource>>(
        resources: impl IntoIterator<Item = (String, R)>,
        shared: &SharedResources,
    ) -> Self {
        Self::from_own(grouped(resources), shared)
    }

    /// This snapshot's own resources (those not from a shared layer) over `shared` instead of
    /// the layers it holds: what [`Snapshot::layered`] makes of the same own resources.
    pub fn relayered(&self, shared: &SharedResources) -> Self {
        let own = self
            .types
            .iter()
            .filter(|(_, t)| !t.own.is_empty())
            .map(|(type_url, t)| (type_url.clone(), t.own.clone()))
            .collect();
        Self::from_own(own, shared)
    }

    /// A snapshot of `own` resources (by type, then name) over `shared` ones.
    fn from_own(
        mut own: BTreeMap<String, BTreeMap<String, EncodedResource>>,
        shared: &SharedResources,
    ) -> Self {
        for t in shared.types.keys() {
            own.entry(t.clone()).or_default();
        }
        let layer = |t: &str| shared.types.get(t).cloned();
        let clusters = own
            .remove(CLUSTER)
            .map(|c| TypeResources::new(c, layer(CLUSTER), ""));
        let cluster_version = clusters
            .as_ref()
            .map(|c| c.version.clone())
            .unwrap_or_default();
        let mut types: BTreeMap<String, TypeResources> = own
            .into_iter()
            .map(|(type_url, resources)| {
                let extra = if type_url == ENDPOINT {
                    cluster_version.as_str()
                } else {
                    ""
                };
                let t = TypeResources::new(resources, layer(&type_url), extra);
                (type_url, t)
            })
            .collect();
        if let Some(c) = clusters {
            types.insert(CLUSTER.to_string(), c);
        }
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
            None => TypeResources::new(BTreeMap::new(), None, "").version,
        }
    }

    /// Type URLs present in the snapshot.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Every resource replaced by the equal one `interner` holds, if any; every shared layer
    /// by the equal one it holds.
    fn intern(&mut self, interner: &mut Interner) {
        for t in self.types.values_mut() {
            for resource in t.own.values_mut() {
                *resource = interner.intern(resource);
            }
            if let Some(layer) = &mut t.shared {
                *layer = interner.intern_layer(layer);
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
    fn a_layered_snapshot_holds_shared_resources_by_reference() {
        let shared = SharedResources::new([
            ("c1".to_string(), any(CLUSTER, b"a")),
            ("c2".to_string(), any(CLUSTER, b"b")),
            ("l1".to_string(), any(LISTENER, b"c")),
        ]);
        let own = || {
            [
                ("c0".to_string(), any(CLUSTER, b"d")),
                ("c2".to_string(), any(CLUSTER, b"e")),
            ]
        };
        let layered = Snapshot::layered(own(), &shared);
        let clusters = layered.get(CLUSTER).unwrap();
        let names: Vec<&str> = clusters.names().collect();
        assert_eq!(names, ["c0", "c1", "c2"]);
        assert_eq!(clusters.len(), 3);
        // Its own replace shared ones of the same name.
        assert_eq!(clusters.get("c2").unwrap().to_any().value, b"e");
        assert_eq!(layered.get(LISTENER).unwrap().len(), 1);
        // Two snapshots over one layer share its resources; equal content is equal.
        let again = Snapshot::layered(own(), &shared);
        assert_eq!(layered, again);
        assert!(
            layered
                .get(LISTENER)
                .unwrap()
                .get("l1")
                .unwrap()
                .shares_bytes_with(again.get(LISTENER).unwrap().get("l1").unwrap())
        );
        // A different shared resource is a different version.
        let other = SharedResources::new([
            ("c1".to_string(), any(CLUSTER, b"z")),
            ("c2".to_string(), any(CLUSTER, b"b")),
            ("l1".to_string(), any(LISTENER, b"c")),
        ]);
        let changed = Snapshot::layered(own(), &other);
        assert_ne!(changed.version(CLUSTER), layered.version(CLUSTER));
        assert_eq!(changed.version(LISTENER), layered.version(LISTENER));
        assert_ne!(changed, layered);
        // The cache interns a layer once: equal layers of two snapshots become one.
        let cache = SnapshotCache::new();
        cache.set("a", Snapshot::layered(own(), &shared));
        cache.set(
            "b",
            Snapshot::layered(
                own(),
                &SharedResources::new(shared.iter().map(|(n, r)| (n.to_string(), r.clone()))),
            ),
        );
        let layer_of = |node: &str| {
            cache
                .get(node)
                .unwrap()
                .get(CLUSTER)
                .unwrap()
                .shared
                .clone()
                .unwrap()
        };
        assert!(Arc::ptr_eq(&layer_of("a"), &layer_of("b")));
    }

    #[test]
    fn relayering_keeps_own_resources_over_new_shared_ones() {
        let own = [
            ("c-own".to_string(), any(CLUSTER, b"own")),
            ("c-both".to_string(), any(CLUSTER, b"own wins")),
            ("l-own".to_string(), any(LISTENER, b"listener")),
        ];
        let before = SharedResources::new([
            ("c-both".to_string(), any(CLUSTER, b"shared")),
            ("e1".to_string(), any(ENDPOINT, b"old endpoints")),
        ]);
        let after = SharedResources::new([
            ("c-both".to_string(), any(CLUSTER, b"shared")),
            ("c-new".to_string(), any(CLUSTER, b"new")),
            ("e1".to_string(), any(ENDPOINT, b"new endpoints")),
        ]);
        let previous = Snapshot::layered(own.clone(), &before);
        let relayered = previous.relayered(&after);
        assert_eq!(relayered, Snapshot::layered(own, &after));
        let clusters = relayered.get(CLUSTER).unwrap();
        let names: Vec<&str> = clusters.names().collect();
        assert_eq!(names, ["c-both", "c-new", "c-own"]);
        assert_eq!(clusters.get("c-both").unwrap().to_any().value, b"own wins");
        assert_ne!(previous.version(ENDPOINT), relayered.version(ENDPOINT));
        assert_ne!(previous.version(CLUSTER), relayered.version(CLUSTER));
        assert_eq!(previous.version(LISTENER), relayered.version(LISTENER));
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
        let clusters = s.get(CLUSTER).unwrap();
        let names: Vec<&str> = clusters.names().collect();
        assert_eq!(names, ["c0", "c1", "c2"]);
        assert_eq!(clusters.get("c2").unwrap().to_any().value, b"e");
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
        let in_a = &a.get(CLUSTER).unwrap().get("c").unwrap();
        let in_b = &b.get(CLUSTER).unwrap().get("c").unwrap();
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
            cache
                .get(node)
                .unwrap()
                .get(CLUSTER)
                .unwrap()
                .get(name)
                .unwrap()
                .clone()
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
