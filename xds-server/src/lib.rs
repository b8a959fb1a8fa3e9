//! A generic Envoy xDS server, with no service-mesh semantics of its own (what go-control-plane
//! is for Go).
//!
//! You put a [`Snapshot`] of Envoy resources per node into a cache; the server streams each
//! connected proxy its node's snapshot and every later change, over the aggregated discovery
//! service (ADS) and the secret discovery service (SDS), state of the world and incremental
//! (delta) alike. What goes into the snapshots, and when, is yours: this crate never generates
//! config, reads a store, or knows what a mesh is.
//!
//! - [`SnapshotCache`] holds one [`Snapshot`] per node id; it is the bundled [`Cache`], the
//!   trait the server reads from. Versions are derived from content, so setting an unchanged
//!   snapshot pushes nothing.
//! - [`AdsServer`] serves the streams, with nonce/ACK/NACK tracking, [`Callbacks`] for stream
//!   events, an optional [`StreamAuthenticator`] and [`StreamPreparer`], and graceful shutdown.
//! - Resources are encoded once ([`EncodedResource`]) and written into every stream from the same
//!   bytes ([`wire`]); [`canonical`] puts their maps' entries in key order, so equal content
//!   encodes alike in every process.
//! - [`envoy`] has small builders for common Envoy resources (clusters, listeners, `Any`).
//!
//! # Features
//!
//! - `inspect`: [`inspect::snapshot_json`] renders a snapshot as canonical protobuf JSON (as
//!   Envoy's admin `config_dump` would), for debugging endpoints and golden tests.
//!
//! # Example
//!
//! Serve one static cluster to every Envoy whose node id is `envoy-1`:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
//! use xds_server::envoy::{eds_cluster, load_assignment};
//! use xds_server::{AdsServer, EncodedResource, NoCallbacks, Snapshot, SnapshotCache};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Arc::new(SnapshotCache::new());
//! let cluster: ClusterLoadAssignment = load_assignment("backend", &[("127.0.0.1".into(), 8080)]);
//! cache.set(
//!     "envoy-1",
//!     Snapshot::new([
//!         ("backend".to_string(), EncodedResource::from_message(&eds_cluster("backend"))),
//!         ("backend".to_string(), EncodedResource::from_message(&cluster)),
//!     ]),
//! );
//! let ads = AdsServer::new(cache, Arc::new(NoCallbacks)).into_service();
//! tonic::transport::Server::builder()
//!     .add_service(ads)
//!     .serve("127.0.0.1:18000".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! The crate's `examples/static_snapshot.rs` serves a snapshot through a [`Cache`] of its own,
//! and its tests run that example against a real Envoy.

pub mod cache;
pub mod canonical;
mod delta;
pub mod envoy;
#[cfg(feature = "inspect")]
pub mod inspect;
mod names;
mod respond;
pub mod server;
mod stream;
pub mod types;
pub mod wire;

pub use cache::{Cache, EncodedResource, Snapshot, SnapshotCache, TypeResources};
pub use server::{
    AdsServer, AdsService, Callbacks, DeliveriesOnly, NoCallbacks, SdsService, StreamAuthenticator,
    StreamPreparer,
};
