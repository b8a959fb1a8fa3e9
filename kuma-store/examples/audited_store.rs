//! A `ResourceStore` of your own: every write to an inner store is recorded in an audit log
//! (what changed, and how), reads go straight through. Wrapping a bundled store is the usual way
//! to add auditing, quotas or caching without writing a database layer.
//!
//! ```text
//! cargo run -p kuma-store --example audited_store
//! ```
//!
//! runs Kuma's store conformance suite (`kuma_core::conformance::run`, the checks every bundled
//! store passes) against it and prints how many writes were audited.

use std::sync::{Arc, Mutex};

use kuma_core::resource::{Resource, ResourceKey, Version};
use kuma_core::store::{ListQuery, Page, ResourceStore, StoreError, StoreEvent};
use kuma_store::MemoryStore;
use tokio::sync::broadcast;

/// One audited write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `create`, `update` or `delete`.
    pub operation: &'static str,
    /// The resource.
    pub key: ResourceKey,
    /// Whether the store accepted it.
    pub accepted: bool,
}

/// `inner`, with every write recorded in `log`.
pub struct AuditedStore<S> {
    inner: S,
    log: Arc<Mutex<Vec<Entry>>>,
}

impl<S: ResourceStore> AuditedStore<S> {
    /// Audits the writes to `inner` into `log`.
    pub fn new(inner: S, log: Arc<Mutex<Vec<Entry>>>) -> Self {
        AuditedStore { inner, log }
    }

    fn record<T>(
        &self,
        operation: &'static str,
        key: ResourceKey,
        outcome: &Result<T, StoreError>,
    ) {
        let entry = Entry {
            operation,
            key,
            accepted: outcome.is_ok(),
        };
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
    }
}

#[async_trait::async_trait]
impl<S: ResourceStore> ResourceStore for AuditedStore<S> {
    async fn create(
        &self,
        resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        let key = resource.key();
        let outcome = self.inner.create(resource, owner).await;
        self.record("create", key, &outcome);
        outcome
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        let key = resource.key();
        let outcome = self.inner.update(resource).await;
        self.record("update", key, &outcome);
        outcome
    }

    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        let outcome = self.inner.delete(key, version).await;
        self.record("delete", key.clone(), &outcome);
        outcome
    }

    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.inner.list(query).await
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.watch()
    }
}

/// Runs the conformance suite against fresh audited stores; returns the writes audited.
pub async fn conformance() -> usize {
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = log.clone();
    kuma_core::conformance::run(move || {
        let log = shared.clone();
        async move {
            Arc::new(AuditedStore::new(MemoryStore::new(), log)) as Arc<dyn ResourceStore>
        }
    })
    .await;
    log.lock().map(|l| l.len()).unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let audited = conformance().await;
    println!("the audited store passes the conformance suite ({audited} writes audited)");
}
