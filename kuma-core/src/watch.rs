//! Following a store's changes: the one primitive every job that keeps something in step with
//! the store uses (the config reconciler, VIP allocation, the DNS zone, MADS).
//!
//! A [`StoreWatch`] keeps the events its selector maps to something, waits [`DEBOUNCE`] after
//! the first of a burst so the burst is handled once, and turns missed events (the receiver
//! lagged behind the store) into [`Batch::resync`]: the follower rebuilds everything rather
//! than act on a partial picture. It never polls: between changes it waits on the store's
//! change stream.
//!
//! ```
//! use std::sync::Arc;
//!
//! use kuma_core::resource::ResourceType;
//! use kuma_core::watch::StoreWatch;
//! # use kuma_core::store::ResourceStore;
//! # async fn follow(store: Arc<dyn ResourceStore>) {
//! let mut meshes = StoreWatch::new(store.as_ref(), |e| {
//!     (e.key.rtype == ResourceType::Mesh).then(|| e.key.name.clone())
//! });
//! while let Some(batch) = meshes.next().await {
//!     if batch.resync {
//!         println!("missed changes: rebuild everything");
//!     }
//!     for mesh in batch.items {
//!         println!("mesh {mesh} changed");
//!     }
//! }
//! # }
//! ```

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::store::{ResourceStore, StoreEvent};

/// How long changes are collected after the first of a burst before they are acted on.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The changes a follower acts on at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// What the selector made of each selected change, in the order they came.
    pub items: Vec<T>,
    /// Changes were missed: act as if everything changed.
    pub resync: bool,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            items: Vec::new(),
            resync: false,
        }
    }
}

/// The changes of one store a follower cares about (see the [module](self)).
pub struct StoreWatch<T, F> {
    events: broadcast::Receiver<StoreEvent>,
    select: F,
    debounce: Duration,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> StoreWatch<T, F>
where
    F: FnMut(&StoreEvent) -> Option<T>,
{
    /// Follows the changes of `store` made from now on that `select` maps to an item.
    pub fn new(store: &dyn ResourceStore, select: F) -> Self {
        StoreWatch {
            events: store.watch(),
            select,
            debounce: DEBOUNCE,
            _item: std::marker::PhantomData,
        }
    }

    /// Collects for `debounce` after the first change instead of [`DEBOUNCE`].
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Waits for the first selected change, then for the debounce window, and returns every
    /// selected change that arrived meanwhile; `None` once the store's change stream has ended.
    pub async fn next(&mut self) -> Option<Batch<T>> {
        let mut batch = self.first().await?;
        self.settle(&mut batch).await;
        Some(batch)
    }

    /// Waits for the first selected change and returns it alone (not debounced); `None` once the
    /// store's change stream has ended. Cancel-safe, for use in `select!` beside other wake-ups;
    /// follow it with [`StoreWatch::settle`].
    pub async fn first(&mut self) -> Option<Batch<T>> {
        loop {
            match self.events.recv().await {
                Ok(event) => {
                    if let Some(item) = (self.select)(&event) {
                        return Some(Batch {
                            items: vec![item],
                            resync: false,
                        });
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    return Some(Batch {
                        items: Vec::new(),
                        resync: true,
                    });
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Waits for the debounce window, then adds to `batch` every selected change that arrived.
    pub async fn settle(&mut self, batch: &mut Batch<T>) {
        tokio::time::sleep(self.debounce).await;
        self.drain(batch);
    }

    /// Adds to `batch` the selected changes that have arrived, without waiting.
    pub fn drain(&mut self, batch: &mut Batch<T>) {
        loop {
            match self.events.try_recv() {
                Ok(event) => batch.items.extend((self.select)(&event)),
                Err(TryRecvError::Lagged(_)) => batch.resync = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{ResourceKey, ResourceType, Version};
    use crate::store::EventKind;

    /// A store with nothing but its change stream.
    struct Events(broadcast::Sender<StoreEvent>);

    #[async_trait::async_trait]
    impl ResourceStore for Events {
        async fn create(
            &self,
            _: crate::resource::Resource,
            _: Option<ResourceKey>,
        ) -> Result<crate::resource::Resource, crate::store::StoreError> {
            unimplemented!("only watched")
        }
        async fn update(
            &self,
            _: crate::resource::Resource,
        ) -> Result<crate::resource::Resource, crate::store::StoreError> {
            unimplemented!("only watched")
        }
        async fn delete(
            &self,
            _: &ResourceKey,
            _: Option<&crate::resource::Version>,
        ) -> Result<(), crate::store::StoreError> {
            unimplemented!("only watched")
        }
        async fn get(
            &self,
            _: &ResourceKey,
        ) -> Result<crate::resource::Resource, crate::store::StoreError> {
            unimplemented!("only watched")
        }
        async fn list(
            &self,
            _: &crate::store::ListQuery,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            unimplemented!("only watched")
        }
        fn watch(&self) -> broadcast::Receiver<StoreEvent> {
            self.0.subscribe()
        }
    }

    fn event(rtype: ResourceType, name: &str) -> StoreEvent {
        StoreEvent {
            kind: EventKind::Update,
            key: ResourceKey::new(rtype, "default", name),
            version: Version("1".into()),
            revision: 0,
        }
    }

    fn meshes(e: &StoreEvent) -> Option<String> {
        (e.key.rtype == ResourceType::Mesh).then(|| e.key.name.clone())
    }

    #[tokio::test]
    async fn a_burst_is_one_batch_of_the_selected_changes() {
        let (tx, _) = broadcast::channel(16);
        let store = Events(tx.clone());
        let mut watch = StoreWatch::new(&store, meshes);
        tx.send(event(ResourceType::Dataplane, "dp")).unwrap();
        tx.send(event(ResourceType::Mesh, "a")).unwrap();
        tx.send(event(ResourceType::Mesh, "b")).unwrap();
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DEBOUNCE / 2).await;
            later.send(event(ResourceType::Mesh, "c")).unwrap();
        });
        let batch = watch.next().await.unwrap();
        assert_eq!(batch.items, ["a", "b", "c"]);
        assert!(!batch.resync);
        drop(tx);
        drop(store);
        assert_eq!(watch.next().await, None, "the stream ended");
    }

    #[tokio::test]
    async fn missed_changes_ask_for_a_resync() {
        let (tx, _) = broadcast::channel(2);
        let store = Events(tx.clone());
        let mut watch = StoreWatch::new(&store, meshes);
        for name in ["a", "b", "c", "d"] {
            tx.send(event(ResourceType::Mesh, name)).unwrap();
        }
        let batch = watch.next().await.unwrap();
        assert!(batch.resync);
        assert_eq!(batch.items, ["c", "d"], "what is still there comes too");
    }
}
