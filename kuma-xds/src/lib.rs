//! Kuma's Envoy config generation, and MADS.
//!
//! - [`generate`] turns a mesh's resources and one proxy into a [`xds_server::Snapshot`]: the
//!   Kuma profile (inbound, outbound, admin, probes, metrics, DNS) and the `Mesh*` policies.
//! - [`mads`] serves Kuma's monitoring assignments to Prometheus (`kuma_sd_configs`) over REST.
//!
//! Serving the snapshots to proxies is [`xds_server`]'s job, re-exported here.

pub mod generate;
pub mod mads;

pub use xds_server;
