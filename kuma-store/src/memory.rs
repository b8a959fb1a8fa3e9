//! An in-memory [`ResourceStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, hash_map};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::broadcast;

use crate::common::check_version;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version};
use kuma_core::store::{EventKind, ListQuery, Page, ResourceStore, StoreError, StoreEvent};

/// Events buffered per subscriber before a slow one is told it lagged.
pub const DEFAULT_EVENT_CAPACITY: usize = 16 * 1024;

/// A name in the index, shared by the list index and the owner index.
type Name = Arc<str>;

struct Entry {
    held: Held,
    /// Shared by everything one owner owns.
    owner: Option<Arc<ResourceKey>>,
}

/// How a resource is kept: as it is, or (for the types a store keeps compact) as its JSON,
/// decoded on every read.
enum Held {
    /// Boxed: the map's entries stay small, whichever way their resources are kept.
    Full(Box<Resource>),
    /// The version is the revision of the last write (see [`MemoryStore`]).
    Compact { revision: u64, json: Box<str> },
}

impl Held {
    fn new(resource: &Resource, revision: u64, compact: bool) -> Held {
        if compact {
            Held::Compact {
                revision,
                json: resource.to_json().into_boxed_str(),
            }
        } else {
            Held::Full(Box::new(resource.clone()))
        }
    }

    fn version(&self) -> Version {
        match self {
            Held::Full(r) => r.meta.version.clone(),
            Held::Compact { revision, .. } => Version(revision.to_string()),
        }
    }

    fn resource(&self) -> Result<Resource, StoreError> {
        match self {
            Held::Full(r) => Ok(Resource::clone(r)),
            Held::Compact { revision, json } => {
                // The text is what `to_json` wrote: it parses back to the same resource.
                let mut r = kuma_core::resource::parse_json(json).map_err(|e| {
                    StoreError::Backend(kuma_core::store::BackendError::caused_by(
                        "decoding a compact resource",
                        e,
                    ))
                })?;
                r.meta.version = Version(revision.to_string());
                Ok(r)
            }
        }
    }

    /// False when the resource cannot carry every label of `needles` (see [`label_needles`]);
    /// true when it may (a compact resource is decoded and matched in full afterwards).
    fn may_carry(&self, needles: &[String]) -> bool {
        match self {
            Held::Full(_) => true,
            Held::Compact { json, .. } => needles.iter().all(|n| json.contains(n.as_str())),
        }
    }
}

/// Each label of `query` as its compact JSON text (`"key":"value"`): a compact resource whose
/// text lacks one cannot match, so most are skipped without being decoded.
fn label_needles(query: &ListQuery) -> Vec<String> {
    let quoted = |s: &String| serde_json::Value::from(s.as_str()).to_string();
    query
        .labels
        .iter()
        .map(|(k, v)| format!("{}:{}", quoted(k), quoted(v)))
        .collect()
}

/// An owned resource, by the index's shared names.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    rtype: ResourceType,
    mesh: Name,
    name: Name,
}

impl Member {
    fn key(&self) -> ResourceKey {
        ResourceKey::new(self.rtype, &self.mesh, &self.name)
    }
}

/// What one owner owns. Most owners own one resource (a Dataplane its insight), so one is held
/// without a set.
enum Members {
    One(Member),
    Many(BTreeSet<Member>),
}

impl Members {
    fn insert(&mut self, m: Member) {
        match self {
            Members::One(one) if *one == m => {}
            Members::One(one) => {
                let first = one.clone();
                *self = Members::Many(BTreeSet::from([first, m]));
            }
            Members::Many(set) => {
                set.insert(m);
            }
        }
    }

    /// Removes `member`; true when nothing is left.
    fn remove(&mut self, member: &Member) -> bool {
        match self {
            Members::One(one) => one == member,
            Members::Many(set) => {
                set.remove(member);
                set.is_empty()
            }
        }
    }

    fn keys(&self) -> Vec<ResourceKey> {
        match self {
            Members::One(one) => vec![one.key()],
            Members::Many(set) => set.iter().map(Member::key).collect(),
        }
    }
}

/// A type's resources: per mesh, per name (the list order). Each mesh's name is kept once.
type ByMesh = BTreeMap<Name, BTreeMap<Name, Entry>>;

#[derive(Default)]
struct State {
    /// Last revision handed out; versions are revisions, so they never repeat.
    revision: u64,
    by_type: HashMap<ResourceType, ByMesh>,
    /// Owner -> owned. The owner's key is shared by its members' entries.
    owned: HashMap<Arc<ResourceKey>, Members>,
    /// Types kept as JSON (see [`MemoryStore::with_compact_types`]).
    compact: HashSet<ResourceType>,
}

impl State {
    fn entry(&self, key: &ResourceKey) -> Option<&Entry> {
        self.by_type
            .get(&key.rtype)?
            .get(key.mesh.as_str())?
            .get(key.name.as_str())
    }

    fn entry_mut(&mut self, key: &ResourceKey) -> Option<&mut Entry> {
        self.by_type
            .get_mut(&key.rtype)?
            .get_mut(key.mesh.as_str())?
            .get_mut(key.name.as_str())
    }

    /// Inserts a new entry; returns the member it is as an owned resource.
    fn insert(&mut self, key: &ResourceKey, entry: Entry) -> Member {
        let meshes = self.by_type.entry(key.rtype).or_default();
        let mesh: Name = match meshes.get_key_value(key.mesh.as_str()) {
            Some((shared, _)) => shared.clone(),
            None => Name::from(key.mesh.as_str()),
        };
        let name = Name::from(key.name.as_str());
        meshes
            .entry(mesh.clone())
            .or_default()
            .insert(name.clone(), entry);
        Member {
            rtype: key.rtype,
            mesh,
            name,
        }
    }

    /// Removes an entry; returns it with the member it was as an owned resource.
    fn remove(&mut self, key: &ResourceKey) -> Option<(Member, Entry)> {
        let meshes = self.by_type.get_mut(&key.rtype)?;
        let names = meshes.get_mut(key.mesh.as_str())?;
        let (name, entry) = names.remove_entry(key.name.as_str())?;
        let mesh = if names.is_empty() {
            meshes.remove_entry(key.mesh.as_str())?.0
        } else {
            meshes.get_key_value(key.mesh.as_str())?.0.clone()
        };
        Some((
            Member {
                rtype: key.rtype,
                mesh,
                name,
            },
            entry,
        ))
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }
}

/// A store in process memory. Reads take a shared lock, writes an exclusive one; events are sent
/// while the write lock is held, so their order is the order of the writes.
pub struct MemoryStore {
    state: RwLock<State>,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_event_capacity(DEFAULT_EVENT_CAPACITY)
    }

    /// Keeps resources of `types` as their JSON text, decoded on every read: a fraction of
    /// the memory of the decoded resource (about a sixth for a Dataplane) for reads that cost
    /// a decode. For large populations that are read rarely, such as the Dataplanes a global
    /// control plane holds for its zones.
    pub fn with_compact_types(self, types: impl IntoIterator<Item = ResourceType>) -> Self {
        self.write().compact.extend(types);
        self
    }

    /// An empty store whose watchers may fall `capacity` events behind before they lag.
    pub fn with_event_capacity(capacity: usize) -> Self {
        let (events, _) = broadcast::channel(capacity.max(1));
        MemoryStore {
            state: RwLock::new(State::default()),
            events,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (every mutation is
        // prepared first and applied without fallible steps), so a poisoned lock is still sound.
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, kind: EventKind, key: ResourceKey, version: Version, revision: u64) {
        // No subscribers is not an error.
        let _ = self.events.send(StoreEvent {
            kind,
            key,
            version,
            revision,
        });
    }
}

#[async_trait]
impl ResourceStore for MemoryStore {
    async fn create(
        &self,
        mut resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        let key = resource.key();
        let mut st = self.write();
        if st.entry(&key).is_some() {
            return Err(StoreError::AlreadyExists(key));
        }
        if let Some(o) = &owner
            && st.entry(o).is_none()
        {
            return Err(StoreError::OwnerNotFound(o.clone()));
        }
        let revision = st.next_revision();
        let now = Utc::now();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = Some(now);
        resource.meta.modification_time = Some(now);
        let held = Held::new(&resource, revision, st.compact.contains(&key.rtype));
        let shared_owner = owner.as_ref().map(|o| match st.owned.get_key_value(o) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(o.clone()),
        });
        let member = st.insert(
            &key,
            Entry {
                held,
                owner: shared_owner.clone(),
            },
        );
        if let Some(o) = shared_owner {
            match st.owned.entry(o) {
                hash_map::Entry::Occupied(mut members) => members.get_mut().insert(member),
                hash_map::Entry::Vacant(none) => {
                    none.insert(Members::One(member));
                }
            }
        }
        self.emit(
            EventKind::Create,
            key,
            resource.meta.version.clone(),
            revision,
        );
        Ok(resource)
    }

    async fn update(&self, mut resource: Resource) -> Result<Resource, StoreError> {
        let key = resource.key();
        let mut st = self.write();
        let current = st
            .entry(&key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        check_version(&key, &current.held.version(), &resource.meta.version)?;
        let creation_time = match &current.held {
            Held::Full(r) => r.meta.creation_time,
            Held::Compact { .. } => current.held.resource()?.meta.creation_time,
        };
        let revision = st.next_revision();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = creation_time;
        resource.meta.modification_time = Some(Utc::now());
        let held = Held::new(&resource, revision, st.compact.contains(&key.rtype));
        st.entry_mut(&key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?
            .held = held;
        self.emit(
            EventKind::Update,
            key,
            resource.meta.version.clone(),
            revision,
        );
        Ok(resource)
    }

    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        let mut st = self.write();
        let current = st
            .entry(key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        if let Some(v) = version {
            check_version(key, &current.held.version(), v)?;
        }
        // Collect the owned closure first (depth-first, owner before owned), then remove.
        let mut doomed = Vec::new();
        let mut stack = vec![key.clone()];
        let mut seen = BTreeSet::new();
        while let Some(k) = stack.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(owned) = st.owned.get(&k) {
                stack.extend(owned.keys());
            }
            doomed.push(k);
        }
        for k in doomed {
            let removed = st.remove(&k);
            st.owned.remove(&k);
            let Some((member, entry)) = removed else {
                continue;
            };
            if let Some(o) = &entry.owner
                && let Some(siblings) = st.owned.get_mut(&**o)
                && siblings.remove(&member)
            {
                st.owned.remove(&**o);
            }
            let revision = st.next_revision();
            self.emit(EventKind::Delete, k, entry.held.version(), revision);
        }
        Ok(())
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        self.read()
            .entry(key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?
            .held
            .resource()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let st = self.read();
        let Some(meshes) = st.by_type.get(&query.rtype) else {
            return Page::collect(std::iter::empty(), query);
        };
        let in_scope: Box<dyn Iterator<Item = (&Name, &Entry)>> = match &query.mesh {
            Some(m) => Box::new(meshes.get(m.as_str()).into_iter().flatten()),
            None => Box::new(meshes.values().flatten()),
        };
        // What the index answers without looking at the resource.
        let in_scope = in_scope.filter(|(name, _)| {
            query
                .name_contains
                .as_ref()
                .is_none_or(|n| name.contains(n.as_str()))
        });
        if st.compact.contains(&query.rtype) {
            let needles = label_needles(query);
            let decoded = in_scope
                .filter(|(_, e)| e.held.may_carry(&needles))
                .map(|(_, e)| e.held.resource())
                .collect::<Result<Vec<_>, _>>()?;
            return Page::collect(decoded.iter().filter(|r| query.matches(r)), query);
        }
        Page::collect(
            in_scope
                .filter_map(|(_, e)| match &e.held {
                    Held::Full(r) => Some(&**r),
                    Held::Compact { .. } => None,
                })
                .filter(|r| query.matches(r)),
            query,
        )
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}
