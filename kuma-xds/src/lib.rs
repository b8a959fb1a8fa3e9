//! Kuma's Envoy config generation, and MADS.
//!
//! - [`generate`] turns a mesh's resources and one proxy into an [`xds_server::Snapshot`]: the
//!   [`SnapshotGenerator`] trait, and [`GeneratorList::kuma_profile`], Kuma's profile (inbound,
//!   outbound, admin, probes, metrics, DNS) with the `Mesh*` policies and mesh mTLS over SDS.
//! - [`mads`] serves Kuma's monitoring assignments to Prometheus (`kuma_sd_configs`) over REST.
//!
//! - [`sync`]: the [`Reconciler`](sync::Reconciler), which keeps a snapshot cache in step with
//!   the store, event-driven (only what a change touches is regenerated), fed through small
//!   traits: [`sync::Vips`] (services' VIPs) and [`sync::SyncObserver`] (metrics);
//! - [`identities`]: each proxy's workload certificate from its mesh's CA (`kuma-ca`'s CA
//!   managers), kept until it must be renewed;
//! - [`bootstrap`]: Envoy's bootstrap for a proxy's `POST /bootstrap` request;
//! - [`config`]: the configuration sections these parts read (`xdsServer`, `bootstrapServer`,
//!   `monitoringAssignmentServer`, `metrics`);
//! - [`lifecycle`]: Dataplanes registered when their proxy connects and removed after it
//!   leaves, and what each proxy reports about itself.
//!
//! It does not serve xDS (that is [`xds_server`], re-exported here), choose VIPs (`kuma-dns`),
//! or listen on ports (`kuma-cp` assembles the control plane).
//!
//! # Extension point: generators
//!
//! Add a [`ResourceGenerator`] after Kuma's own, or implement [`SnapshotGenerator`] outright:
//!
//! ```
//! use kuma_xds::generate::{BoxError, GeneratorList, ProxyContext, ResourceGenerator, ResourceSet};
//!
//! /// Drops every listener of proxies named `*-canary` (a sketch).
//! struct NoListenersForCanaries;
//!
//! impl ResourceGenerator for NoListenersForCanaries {
//!     fn name(&self) -> &str {
//!         "no-listeners-for-canaries"
//!     }
//!     fn apply(&self, ctx: &ProxyContext<'_>, resources: &mut ResourceSet) -> Result<(), BoxError> {
//!         if ctx.name.ends_with("-canary") {
//!             resources.listeners.clear();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let generators = GeneratorList::kuma_profile().with(NoListenersForCanaries);
//! assert_eq!(generators.names().last(), Some(&"no-listeners-for-canaries"));
//! ```

pub mod bootstrap;
pub mod config;
pub mod generate;
pub mod identities;
pub mod lifecycle;
pub mod mads;
pub mod sync;

pub use generate::{GenerateError, GeneratorList, ResourceGenerator, SnapshotGenerator};
pub use xds_server;
