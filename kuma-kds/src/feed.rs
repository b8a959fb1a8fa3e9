//! What one side of KDS has to send: the store's resources of the types that travel from this
//! side, kept in memory from the store's change stream, each encoded once however many peers
//! receive it.
//!
//! Every change gets a revision; a stream remembers the revision it has seen per type and, when
//! woken, looks only at the resources changed since (and at the removed ones, kept as
//! tombstones for a while). Nothing here polls: the feed waits on the store's change stream and
//! streams wait on the feed's revision.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kuma_core::model::common::ZONE_TAG;
use kuma_core::resource::{Labels, Resource, ResourceKey, ResourceType};
use kuma_core::rules::{DISPLAY_NAME_LABEL, ORIGIN_LABEL};
use kuma_core::store::{ListQuery, ResourceStore, StoreError};
use kuma_core::watch::StoreWatch;
use tokio::sync::watch;

use crate::directions;
use crate::message::{self, EncodeError};
use crate::names::hashed_name;

/// Labels that never leave a zone (Kuma drops the deletion grace period's start).
const ZONE_LOCAL_LABELS: &[&str] = &["kuma.io/deletion-grace-period-started-at"];
/// The namespace label, the second origin label of the hash suffix.
const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";
/// How many removals a type remembers; a stream further behind diffs the whole type.
const TOMBSTONES: usize = 4096;

/// Which side this feed sends from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// The global control plane, sending to zones.
    Global,
    /// A zone control plane named so, sending to global.
    Zone(String),
}

/// One resource as a peer receives it: its name on the wire (`<name>.<mesh>`), its content
/// version, and the packed `KumaResource`.
#[derive(Debug, PartialEq)]
pub struct Encoded {
    /// `<name>.<mesh>` (mesh empty for global-scoped kinds).
    pub wire_name: String,
    /// Content hash of `any`.
    pub version: String,
    /// The packed resource.
    pub any: message::Any,
}

/// A resource of the feed with its encodings, made on first use: one with Kuma's hash suffix
/// and one without (for peers that do not announce `hash-suffix`).
#[derive(Debug)]
pub struct Entry {
    /// The resource as the store has it.
    pub resource: Resource,
    /// The feed revision of its last change.
    pub revision: u64,
    encoded: [OnceLock<Result<Arc<Encoded>, EncodeError>>; 2],
}

impl Entry {
    fn new(resource: Resource, revision: u64) -> Self {
        Entry {
            resource,
            revision,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }
}

/// A type's resources and recent removals.
#[derive(Debug, Default)]
struct TypeFeed {
    entries: HashMap<ResourceKey, Arc<Entry>>,
    /// (revision, key) of removals, oldest first.
    tombstones: VecDeque<(u64, ResourceKey)>,
    /// Removals at or before this revision were forgotten.
    forgotten_until: u64,
    /// Revision of the type's last change.
    revision: u64,
}

#[derive(Debug, Default)]
struct State {
    types: HashMap<ResourceType, TypeFeed>,
    /// Zones whose Zone resource says `enabled: false` (global only).
    disabled_zones: HashSet<String>,
    revision: u64,
    loaded: bool,
}

/// What changed in a type since a revision.
#[derive(Debug)]
pub enum Changes {
    /// Everything: the stream is too far behind (or new); diff the whole type.
    All(Vec<Arc<Entry>>),
    /// The entries changed and the keys removed since.
    Since {
        /// Changed or added.
        changed: Vec<Arc<Entry>>,
        /// Removed.
        removed: Vec<ResourceKey>,
    },
}

/// The resources one side sends, shared by all its streams (see the [module](self)).
#[derive(Debug)]
pub struct Feed {
    side: Side,
    types: Vec<ResourceType>,
    state: Mutex<State>,
    revision: watch::Sender<u64>,
    encodings: std::sync::atomic::AtomicU64,
}

impl Feed {
    /// A feed of the types `side` sends; empty until [`Feed::run`] has loaded the store.
    pub fn new(side: Side) -> Arc<Self> {
        let types: Vec<ResourceType> = match side {
            Side::Global => directions::global_to_zone_types().collect(),
            Side::Zone(_) => directions::zone_to_global_types().collect(),
        };
        Arc::new(Feed {
            side,
            types,
            state: Mutex::new(State::default()),
            revision: watch::Sender::new(0),
            encodings: Default::default(),
        })
    }

    /// The side this feed sends from.
    pub fn side(&self) -> &Side {
        &self.side
    }

    /// The types this side sends, in registry order.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// How many resources were encoded so far (each once per content and naming).
    pub fn encodings(&self) -> u64 {
        self.encodings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wakes on every change of the feed (and once it has loaded).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the store has been read.
    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    /// The revision of `rtype`'s last change.
    pub fn type_revision(&self, rtype: ResourceType) -> u64 {
        self.lock().types.get(&rtype).map_or(0, |t| t.revision)
    }

    /// What changed in `rtype` after revision `since` (everything when `since` is `None` or
    /// the removals since were forgotten).
    pub fn changes(&self, rtype: ResourceType, since: Option<u64>) -> Changes {
        let state = self.lock();
        let Some(feed) = state.types.get(&rtype) else {
            return Changes::All(Vec::new());
        };
        match since {
            Some(since) if since >= feed.forgotten_until => Changes::Since {
                changed: feed
                    .entries
                    .values()
                    .filter(|e| e.revision > since)
                    .cloned()
                    .collect(),
                removed: feed
                    .tombstones
                    .iter()
                    .rev()
                    .take_while(|(rev, _)| *rev > since)
                    .map(|(_, key)| key.clone())
                    .collect(),
            },
            _ => Changes::All(feed.entries.values().cloned().collect()),
        }
    }

    /// Whether zone `zone` takes resources from other zones (its Zone resource, on global,
    /// does not say `enabled: false`).
    pub fn zone_enabled(&self, zone: &str) -> bool {
        !self.lock().disabled_zones.contains(zone)
    }

    /// Whether this side sends `entry` to peer `zone` (the zone's name on global; ignored on
    /// a zone).
    pub fn sends(&self, entry: &Entry, zone: &str) -> bool {
        match &self.side {
            Side::Global => {
                directions::global_sends(&entry.resource, zone, |z| self.zone_enabled(z))
            }
            Side::Zone(_) => directions::zone_sends(&entry.resource),
        }
    }

    /// `entry` as the peer receives it, `hashed` with Kuma's suffix or not.
    pub fn encoded(&self, entry: &Entry, hashed: bool) -> Result<Arc<Encoded>, EncodeError> {
        entry.encoded[usize::from(hashed)]
            .get_or_init(|| {
                self.encodings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let resource = self.outgoing_resource(&entry.resource)?;
                let (name, labels) = self.outgoing_meta(&resource, hashed);
                let any = message::encode_as(&resource, &name, &labels)?;
                let version = content_version(&any.value);
                Ok(Arc::new(Encoded {
                    wire_name: format!("{name}.{}", entry.resource.meta.mesh),
                    version,
                    any,
                }))
            })
            .clone()
    }

    /// `resource` as it leaves this side: on global, a zone-token signing key leaves as its
    /// public half, `zone-token-signing-public-key-<serial>` (zones verify zone tokens and
    /// never hold the private key), as Kuma's global maps it.
    fn outgoing_resource<'r>(
        &self,
        resource: &'r Resource,
    ) -> Result<std::borrow::Cow<'r, Resource>, EncodeError> {
        use kuma_core::resource::Spec;
        let (Side::Global, Spec::GlobalSecret(secret)) = (&self.side, &resource.spec) else {
            return Ok(std::borrow::Cow::Borrowed(resource));
        };
        let Some(public_name) = kuma_ca::zone_token::public_secret_name(&resource.meta.name) else {
            return Ok(std::borrow::Cow::Borrowed(resource));
        };
        let invalid = |reason: String| EncodeError::Spec {
            rtype: ResourceType::GlobalSecret,
            name: resource.meta.name.clone(),
            reason,
        };
        let private = secret
            .bytes()
            .ok_or_else(|| invalid("data is not base64".into()))?;
        let public =
            kuma_ca::signing_key::public_key_pem(&private).map_err(|e| invalid(e.to_string()))?;
        let mut mapped = resource.clone();
        mapped.meta.name = public_name;
        mapped.spec = Spec::GlobalSecret(kuma_core::model::system::SecretSpec::from_bytes(
            public.as_bytes(),
        ));
        Ok(std::borrow::Cow::Owned(mapped))
    }

    /// The name and labels `resource` goes out with (Kuma's mappers for this side).
    fn outgoing_meta(&self, resource: &Resource, hashed: bool) -> (String, Labels) {
        let mut labels = resource.meta.labels.clone();
        match &self.side {
            Side::Global => {
                labels.insert(ORIGIN_LABEL.into(), "global".into());
            }
            Side::Zone(zone) => {
                labels.insert(ORIGIN_LABEL.into(), "zone".into());
                labels.insert(ZONE_TAG.into(), zone.clone());
                for l in ZONE_LOCAL_LABELS {
                    labels.remove(*l);
                }
            }
        }
        let rtype = resource.spec.rtype();
        let hash = match self.side {
            Side::Global => hashed && !rtype.keeps_name_across_kds(),
            Side::Zone(_) => true,
        };
        if !hash {
            return (resource.meta.name.clone(), labels);
        }
        let display = labels
            .get(DISPLAY_NAME_LABEL)
            .cloned()
            .unwrap_or_else(|| resource.meta.name.clone());
        let origin: Vec<&str> = [ZONE_TAG, NAMESPACE_LABEL]
            .iter()
            .filter_map(|l| labels.get(*l).map(String::as_str))
            .collect();
        let name = hashed_name(&resource.meta.mesh, &display, &origin);
        labels.insert(DISPLAY_NAME_LABEL.into(), display);
        (name, labels)
    }

    /// Reads the store, then follows its changes until it closes. Run it once per feed.
    pub async fn run(self: Arc<Self>, store: Arc<dyn ResourceStore>) -> Result<(), StoreError> {
        let followed: HashSet<ResourceType> = self.followed_types().collect();
        let mut watch = StoreWatch::new(store.as_ref(), move |e| {
            followed.contains(&e.key.rtype).then(|| e.key.clone())
        });
        self.reload(store.as_ref()).await?;
        while let Some(batch) = watch.next().await {
            if batch.resync {
                self.reload(store.as_ref()).await?;
                continue;
            }
            let mut keys: Vec<ResourceKey> = batch.items;
            keys.sort();
            keys.dedup();
            let mut updates = Vec::with_capacity(keys.len());
            for key in keys {
                match store.get(&key).await {
                    Ok(r) => updates.push((key, Some(r))),
                    Err(StoreError::NotFound(_)) => updates.push((key, None)),
                    Err(e) => return Err(e),
                }
            }
            self.apply(updates);
        }
        Ok(())
    }

    /// The types read from the store: those sent, and Zone on global (whether a zone is
    /// enabled).
    fn followed_types(&self) -> impl Iterator<Item = ResourceType> + '_ {
        let zone = (self.side == Side::Global).then_some(ResourceType::Zone);
        self.types.iter().copied().chain(zone)
    }

    async fn reload(&self, store: &dyn ResourceStore) -> Result<(), StoreError> {
        let mut all = Vec::new();
        for rtype in self.followed_types() {
            let page = store.list(&ListQuery::all(rtype)).await?;
            all.push((rtype, page.items));
        }
        let mut updates = Vec::new();
        {
            let state = self.lock();
            for (rtype, items) in all {
                let present: HashSet<ResourceKey> = items.iter().map(Resource::key).collect();
                if let Some(feed) = state.types.get(&rtype) {
                    for key in feed.entries.keys().filter(|k| !present.contains(*k)) {
                        updates.push((key.clone(), None));
                    }
                }
                updates.extend(items.into_iter().map(|r| (r.key(), Some(r))));
            }
        }
        self.apply(updates);
        self.lock().loaded = true;
        self.revision.send_modify(|_| {});
        Ok(())
    }

    /// Applies store reads: a resource, or `None` for a removed key.
    fn apply(&self, updates: Vec<(ResourceKey, Option<Resource>)>) {
        let mut state = self.lock();
        let mut changed = false;
        for (key, resource) in updates {
            if key.rtype == ResourceType::Zone {
                let disabled = resource.as_ref().is_some_and(|r| {
                    matches!(&r.spec, kuma_core::resource::Spec::Zone(z) if z.enabled == Some(false))
                });
                if disabled {
                    state.disabled_zones.insert(key.name.clone());
                } else {
                    state.disabled_zones.remove(&key.name);
                }
                // Cross-zone resources may now go (or not) to other zones: touch them.
                changed |= self.touch_cross_zone(&mut state);
                continue;
            }
            let revision = state.revision + 1;
            let feed = state.types.entry(key.rtype).or_default();
            match resource {
                Some(r) => {
                    if feed
                        .entries
                        .get(&key)
                        .is_some_and(|e| e.resource.meta.version == r.meta.version)
                    {
                        continue;
                    }
                    feed.entries.insert(key, Arc::new(Entry::new(r, revision)));
                }
                None => {
                    if feed.entries.remove(&key).is_none() {
                        continue;
                    }
                    feed.tombstones.push_back((revision, key));
                    while feed.tombstones.len() > TOMBSTONES {
                        if let Some((rev, _)) = feed.tombstones.pop_front() {
                            feed.forgotten_until = rev;
                        }
                    }
                }
            }
            feed.revision = revision;
            state.revision = revision;
            changed = true;
        }
        if changed {
            let revision = state.revision;
            drop(state);
            self.revision.send_replace(revision);
        }
    }

    /// Gives the resources that came from zones a new revision, so streams look at them again.
    fn touch_cross_zone(&self, state: &mut State) -> bool {
        let revision = state.revision + 1;
        let mut touched = false;
        for feed in state.types.values_mut() {
            let mut any = false;
            for entry in feed.entries.values_mut() {
                if entry
                    .resource
                    .meta
                    .labels
                    .get(ORIGIN_LABEL)
                    .map(String::as_str)
                    == Some("zone")
                {
                    *entry = Arc::new(Entry::new(entry.resource.clone(), revision));
                    any = true;
                }
            }
            if any {
                feed.revision = revision;
                touched = true;
            }
        }
        if touched {
            state.revision = revision;
        }
        touched
    }
}

/// A content version: FNV-1a 64 of the bytes, in hex.
fn content_version(bytes: &[u8]) -> String {
    let hash = crate::names::fnv1a64(crate::names::FNV_OFFSET, bytes);
    format!("{hash:016x}")
}
