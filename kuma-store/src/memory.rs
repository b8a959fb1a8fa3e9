//! An in-memory [`ResourceStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::broadcast;

use crate::common::check_version;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version};
use kuma_core::store::{EventKind, ListQuery, Page, ResourceStore, StoreError, StoreEvent};

/// Events buffered per subscriber before a slow one is told it lagged.
pub const DEFAULT_EVENT_CAPACITY: usize = 16 * 1024;

struct Entry {
    held: Held,
    owner: Option<ResourceKey>,
}

/// How a resource is kept: as it is, or (for the types a store keeps compact) as its JSON,
/// decoded on every read.
enum Held {
    /// Boxed: the map's entries stay small, whichever way their resources are kept.
    Full(Box<Resource>),
    Compact {
        version: Version,
        json: Box<str>,
    },
}

impl Held {
    fn new(resource: &Resource, compact: bool) -> Held {
        if compact {
            Held::Compact {
                version: resource.meta.version.clone(),
                json: resource.to_json().into_boxed_str(),
            }
        } else {
            Held::Full(Box::new(resource.clone()))
        }
    }

    fn version(&self) -> &Version {
        match self {
            Held::Full(r) => &r.meta.version,
            Held::Compact { version, .. } => version,
        }
    }

    fn resource(&self) -> Result<Resource, StoreError> {
        match self {
            Held::Full(r) => Ok(Resource::clone(r)),
            Held::Compact { version, json } => {
                // The text is what `to_json` wrote: it parses back to the same resource.
                let mut r = kuma_core::resource::parse_json(json).map_err(|e| {
                    StoreError::Backend(kuma_core::store::BackendError::caused_by(
                        "decoding a compact resource",
                        e,
                    ))
                })?;
                r.meta.version = version.clone();
                Ok(r)
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Last revision handed out; versions are revisions, so they never repeat.
    revision: u64,
    /// Per type, resources ordered by (mesh, name): the list order.
    by_type: HashMap<ResourceType, BTreeMap<(String, String), Entry>>,
    /// Owner -> owned.
    owned: HashMap<ResourceKey, BTreeSet<ResourceKey>>,
    /// Types kept as JSON (see [`MemoryStore::with_compact_types`]).
    compact: HashSet<ResourceType>,
}

impl State {
    fn entry(&self, key: &ResourceKey) -> Option<&Entry> {
        self.by_type
            .get(&key.rtype)?
            .get(&(key.mesh.clone(), key.name.clone()))
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
        if let Some(o) = &owner {
            st.owned.entry(o.clone()).or_default().insert(key.clone());
        }
        let held = Held::new(&resource, st.compact.contains(&key.rtype));
        st.by_type
            .entry(key.rtype)
            .or_default()
            .insert((key.mesh.clone(), key.name.clone()), Entry { held, owner });
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
        check_version(&key, current.held.version(), &resource.meta.version)?;
        let creation_time = current.held.resource()?.meta.creation_time;
        let revision = st.next_revision();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = creation_time;
        resource.meta.modification_time = Some(Utc::now());
        let compact = st.compact.contains(&key.rtype);
        let slot = st
            .by_type
            .get_mut(&key.rtype)
            .and_then(|m| m.get_mut(&(key.mesh.clone(), key.name.clone())))
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        slot.held = Held::new(&resource, compact);
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
            check_version(key, current.held.version(), v)?;
        }
        // Collect the owned closure first (depth-first, owner before owned), then remove.
        let mut doomed = Vec::new();
        let mut stack = vec![key.clone()];
        let mut seen = BTreeSet::new();
        while let Some(k) = stack.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(children) = st.owned.get(&k) {
                stack.extend(children.iter().cloned());
            }
            doomed.push(k);
        }
        for k in doomed {
            let removed = st
                .by_type
                .get_mut(&k.rtype)
                .and_then(|m| m.remove(&(k.mesh.clone(), k.name.clone())));
            st.owned.remove(&k);
            let Some(entry) = removed else { continue };
            if let Some(o) = &entry.owner
                && let Some(siblings) = st.owned.get_mut(o)
            {
                siblings.remove(&k);
            }
            let revision = st.next_revision();
            self.emit(EventKind::Delete, k, entry.held.version().clone(), revision);
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
        let Some(all) = st.by_type.get(&query.rtype) else {
            return Page::collect(std::iter::empty(), query);
        };
        let in_scope: Box<dyn Iterator<Item = &Entry>> = match &query.mesh {
            Some(m) => Box::new(
                all.range((m.clone(), String::new())..)
                    .take_while(move |((mesh, _), _)| mesh == m)
                    .map(|(_, e)| e),
            ),
            None => Box::new(all.values()),
        };
        if st.compact.contains(&query.rtype) {
            let decoded = in_scope
                .map(|e| e.held.resource())
                .collect::<Result<Vec<_>, _>>()?;
            return Page::collect(decoded.iter().filter(|r| query.matches(r)), query);
        }
        Page::collect(
            in_scope
                .filter_map(|e| match &e.held {
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
