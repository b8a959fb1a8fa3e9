//! Resource stores for a Kuma-compatible control plane.
//!
//! [`MemoryStore`] keeps everything in process memory: the default for standalone and for
//! tests. A PostgreSQL store joins in a later release; both pass the same conformance suite
//! (`kuma_core::conformance`).

mod memory;

pub use memory::MemoryStore;

// The README's Rust examples compile as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
