//! Resource stores for a Kuma-compatible control plane.
//!
//! [`MemoryStore`] keeps everything in process memory: the default for standalone and for
//! tests. `PostgresStore` (feature `postgres`) keeps resources in PostgreSQL, shared by several
//! control-plane instances. Both pass the same conformance suite (`kuma_core::conformance`).

mod common;
pub mod leader;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
mod postgres_tls;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

// The README's Rust examples compile as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
