//! An in-memory [`ResourceStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    resource: Resource,
    owner: Option<ResourceKey>,
}

#[derive(Default)]
struct State {
    /// Last revision handed out; versions are revisions, so they never repeat.
    revision: u64,
    /// Per type, resources ordered by (mesh, name): the list order.
    by_type: HashMap<ResourceType, BTreeMap<(String, String), Entry>>,
    /// Owner -> owned.
    owned: HashMap<ResourceKey, BTreeSet<ResourceKey>>,
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
        st.by_type.entry(key.rtype).or_default().insert(
            (key.mesh.clone(), key.name.clone()),
            Entry {
                resource: resource.clone(),
                owner,
            },
        );
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
        check_version(&key, &current.resource.meta.version, &resource.meta.version)?;
        let creation_time = current.resource.meta.creation_time;
        let revision = st.next_revision();
        resource.meta.version = Version(revision.to_string());
        resource.meta.creation_time = creation_time;
        resource.meta.modification_time = Some(Utc::now());
        let slot = st
            .by_type
            .get_mut(&key.rtype)
            .and_then(|m| m.get_mut(&(key.mesh.clone(), key.name.clone())))
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        slot.resource = resource.clone();
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
            check_version(key, &current.resource.meta.version, v)?;
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
            self.emit(EventKind::Delete, k, entry.resource.meta.version, revision);
        }
        Ok(())
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        self.read()
            .entry(key)
            .map(|e| e.resource.clone())
            .ok_or_else(|| StoreError::NotFound(key.clone()))
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
        Page::collect(
            in_scope.map(|e| &e.resource).filter(|r| query.matches(r)),
            query,
        )
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}
