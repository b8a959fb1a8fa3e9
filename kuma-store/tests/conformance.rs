//! MemoryStore against the store conformance suite, and proof that the suite catches broken
//! stores.

use std::sync::Arc;

use async_trait::async_trait;
use kuma_core::resource::{Resource, ResourceKey, Version};
use kuma_core::store::{ListQuery, Page, ResourceStore, StoreError, StoreEvent};
use kuma_store::MemoryStore;
use tokio::sync::broadcast;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    kuma_core::conformance::run(|| async {
        Arc::new(MemoryStore::new()) as Arc<dyn ResourceStore>
    })
    .await;
}

/// A store keeping every type as JSON passes the same suite: reads decode exactly what was
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_keeping_everything_compact_conforms() {
    kuma_core::conformance::run(|| async {
        let all = kuma_core::resource::ResourceType::ALL.iter().copied();
        Arc::new(MemoryStore::new().with_compact_types(all)) as Arc<dyn ResourceStore>
    })
    .await;
}

/// A faulty store: updates ignore the version they carry (last writer wins).
struct AcceptsStaleVersions(MemoryStore);

/// A faulty store: every fifth event never reaches watchers.
struct DropsEvents {
    inner: Arc<MemoryStore>,
    events: broadcast::Sender<StoreEvent>,
}

impl DropsEvents {
    fn new() -> Self {
        let inner = Arc::new(MemoryStore::new());
        let (events, _) = broadcast::channel(1 << 14);
        let mut rx = inner.watch();
        let tx = events.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(e) = rx.recv().await {
                n += 1;
                if !n.is_multiple_of(5) {
                    let _ = tx.send(e);
                }
            }
        });
        DropsEvents { inner, events }
    }
}

#[async_trait]
impl ResourceStore for AcceptsStaleVersions {
    async fn create(
        &self,
        r: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        self.0.create(r, owner).await
    }
    async fn update(&self, mut r: Resource) -> Result<Resource, StoreError> {
        // The fault: overwrite whatever version the caller read with the current one.
        if let Ok(current) = self.0.get(&r.key()).await {
            r.meta.version = current.meta.version;
        }
        self.0.update(r).await
    }
    async fn delete(&self, k: &ResourceKey, v: Option<&Version>) -> Result<(), StoreError> {
        self.0.delete(k, v).await
    }
    async fn get(&self, k: &ResourceKey) -> Result<Resource, StoreError> {
        self.0.get(k).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        self.0.list(q).await
    }
    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.0.watch()
    }
}

#[async_trait]
impl ResourceStore for DropsEvents {
    async fn create(
        &self,
        r: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        self.inner.create(r, owner).await
    }
    async fn update(&self, r: Resource) -> Result<Resource, StoreError> {
        self.inner.update(r).await
    }
    async fn delete(&self, k: &ResourceKey, v: Option<&Version>) -> Result<(), StoreError> {
        self.inner.delete(k, v).await
    }
    async fn get(&self, k: &ResourceKey) -> Result<Resource, StoreError> {
        self.inner.get(k).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        self.inner.list(q).await
    }
    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        // The fault: watchers see the forwarded stream with gaps.
        self.events.subscribe()
    }
}

async fn suite_panics(factory: fn() -> Arc<dyn ResourceStore>) -> String {
    let outcome =
        tokio::spawn(async move { kuma_core::conformance::run(|| async { factory() }).await })
            .await;
    let err = outcome.expect_err("the conformance suite must reject a faulty store");
    assert!(err.is_panic());
    let payload = err.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_rejects_a_store_that_accepts_stale_versions() {
    let msg = suite_panics(|| Arc::new(AcceptsStaleVersions(MemoryStore::new()))).await;
    assert!(
        msg.contains("stale version must conflict"),
        "unexpected failure: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_rejects_a_store_that_drops_events() {
    let msg = suite_panics(|| Arc::new(DropsEvents::new())).await;
    assert!(msg.contains("event"), "unexpected failure: {msg}");
}
