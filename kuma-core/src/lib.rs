//! The core of a Kuma-compatible control plane: the resource model and its validation, the
//! storage abstraction ([`ResourceStore`]), the [`ResourceManager`] that enforces Kuma's rules on
//! top of any store, the policy engine ([`rules`]), and the configuration loader
//! ([`config`], Kuma's YAML and `KUMA_*` variables, for the sections crates own).
//!
//! It does no I/O of its own: no network, no database, no files but the configuration file.
//! Stores are `kuma-store`'s, config generation `kuma-xds`'s, serving `kuma-cp`'s.
//!
//! ```
//! use kuma_core::resource::parse_yaml;
//!
//! let dp = parse_yaml(r#"
//! type: Dataplane
//! mesh: default
//! name: backend-1
//! networking:
//!   address: 192.168.0.2
//!   inbound:
//!   - port: 11011
//!     servicePort: 11012
//!     tags:
//!       kuma.io/service: backend
//!       kuma.io/protocol: http
//! "#).unwrap();
//! assert!(dp.validate().is_ok());
//! ```
//!
//! # Features
//!
//! - `conformance`: [`conformance::run`], the checks every [`ResourceStore`] must pass (the
//!   bundled stores run it; so should yours).
//!
//! # Extension point: `ResourceStore`
//!
//! A store of your own implements [`ResourceStore`]; the manager validates before it writes, so
//! a store only keeps resources, versions them, and reports changes. A store that refuses every
//! write, over any other:
//!
//! ```
//! use kuma_core::resource::{Resource, ResourceKey, Version};
//! use kuma_core::store::{BackendError, ListQuery, Page, ResourceStore, StoreError, StoreEvent};
//! use tokio::sync::broadcast;
//!
//! struct ReadOnly<S>(S);
//!
//! #[async_trait::async_trait]
//! impl<S: ResourceStore> ResourceStore for ReadOnly<S> {
//!     async fn create(&self, r: Resource, _: Option<ResourceKey>) -> Result<Resource, StoreError> {
//!         Err(StoreError::Backend(BackendError::new(format!("{}: read-only", r.key()))))
//!     }
//!     async fn update(&self, r: Resource) -> Result<Resource, StoreError> {
//!         Err(StoreError::Backend(BackendError::new(format!("{}: read-only", r.key()))))
//!     }
//!     async fn delete(&self, key: &ResourceKey, _: Option<&Version>) -> Result<(), StoreError> {
//!         Err(StoreError::Backend(BackendError::new(format!("{key}: read-only"))))
//!     }
//!     async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
//!         self.0.get(key).await
//!     }
//!     async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
//!         self.0.list(query).await
//!     }
//!     fn watch(&self) -> broadcast::Receiver<StoreEvent> {
//!         self.0.watch()
//!     }
//! }
//! ```

pub mod bootstrap;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dataplane_files;
pub mod defaults;
pub mod duration;
pub mod errors;
pub mod manager;
pub mod model;
pub mod resource;
pub mod rules;
pub mod store;
pub mod validation;
pub mod watch;

pub use manager::{ManagerError, ManagerOptions, ResourceManager};
pub use resource::{Resource, ResourceKey, ResourceType, parse_documents, parse_yaml};
pub use store::{ListQuery, Page, ResourceStore, StoreError, StoreEvent};
pub use validation::{ValidationContext, ValidationError};
