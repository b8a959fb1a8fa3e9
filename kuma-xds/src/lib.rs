//! A generic Envoy xDS server, usable without any Kuma semantics (as go-control-plane is for Go).
//!
//! - [`cache::SnapshotCache`] holds one [`cache::Snapshot`] per node id. Versions are derived
//!   from content, so setting an unchanged snapshot pushes nothing.
//! - [`server::AdsServer`] serves `envoy.service.discovery.v3.AggregatedDiscoveryService`,
//!   both state-of-the-world and incremental (delta), with nonce/ACK/NACK tracking and
//!   [`server::Callbacks`] for stream events.
//! - Resources are encoded once ([`cache::EncodedResource`]) and written into every stream from
//!   the same bytes ([`wire`]); [`canonical`] puts their maps' entries in key order, so equal
//!   content encodes alike in every process.
//! - With the `inspect` feature, `inspect` renders snapshots as canonical protobuf JSON.
//! - [`mads`] serves Kuma's monitoring assignments to Prometheus (`kuma_sd_configs`) over REST.

pub mod cache;
pub mod canonical;
mod delta;
pub mod envoy;
pub mod generate;
#[cfg(feature = "inspect")]
pub mod inspect;
pub mod mads;
pub mod server;
mod stream;
pub mod types;
pub mod wire;
