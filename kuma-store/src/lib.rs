//! Resource stores for a Kuma-compatible control plane, and leader election over them.
//!
//! - [`MemoryStore`]: process memory, the default for standalone and for tests.
//! - `SqliteStore` (feature `sqlite`): an embedded SQLite file, for one instance that keeps its
//!   state across restarts.
//! - `PostgresStore` (feature `postgres`): PostgreSQL, shared by several control-plane
//!   instances (changes reach every instance through LISTEN/NOTIFY), with Kuma's schema
//!   migrations.
//! - [`config`]: the `store` section of the configuration ([`StoreConfig`]), which says which
//!   of them to open.
//! - [`leader`]: which instance runs the once-per-zone jobs (in process, or a PostgreSQL lock).
//!
//! Every store passes `kuma_core::conformance::run`. This crate does not validate (the
//! `ResourceManager` does, before it writes) and serves nothing.
//!
//! # Features
//!
//! - `sqlite`: `SqliteStore` (SQLite bundled, no system library needed).
//! - `postgres`: `PostgresStore`, `leader::postgres` and the migrations.
//!
//! No feature is on by default: the memory store needs no database client.
//!
//! ```
//! use std::sync::Arc;
//!
//! use kuma_core::manager::{ManagerOptions, ResourceManager};
//! use kuma_store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
//! manager.ensure_default_mesh().await.unwrap();
//! # }
//! ```
//!
//! `examples/audited_store.rs` wraps a store with an audit log and passes the conformance
//! suite.

mod common;
pub mod config;
pub mod leader;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
mod postgres_tls;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use config::{StoreConfig, StoreType};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
