//! A Kuma-compatible control plane assembled from the kuma-rs crates.
//!
//! [`ControlPlane::builder`] takes a [`Config`] (Kuma's YAML and `KUMA_*` variables, loaded by
//! [`Config::load`]) and optionally what replaces the configured parts: the
//! [`ResourceStore`](kuma_core::store::ResourceStore), the
//! [`SnapshotGenerator`](kuma_xds::generate::SnapshotGenerator), the
//! [`VipAllocator`](kuma_dns::vips::VipAllocator), CA backends by type name
//! ([`CaManager`](kuma_ca::mesh_ca::CaManager)), the [`DataplaneAuthenticator`], extra HTTP
//! routes and the [`Layout`] of listeners. [`ControlPlaneBuilder::start`] opens the store,
//! starts the reconciler (store changes to xDS snapshots), the Dataplane lifecycle, the insight
//! recorder, DNS and MADS, and serves every listener of the layout until
//! [`ControlPlane::shutdown`].
//!
//! This crate does not generate config (that is `kuma-xds`), serve xDS (`xds-server`), store
//! resources (`kuma-store`), run proxies (`kuma-dp`), or speak KDS (`kuma-kds`): it assembles them
//! into a standalone, global or zone control plane.
//!
//! ```no_run
//! # async fn run() -> Result<(), kuma_cp::StartError> {
//! let config = kuma_cp::Config::load(None, |k| std::env::var(k).ok())?;
//! let cp = kuma_cp::ControlPlane::start(config).await?;
//! println!("dp-server on {:?}", cp.dp_server_addr());
//! cp.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `postgres` (default): `store.type: postgres`, with leader election.
//! - `sqlite` (default): `store.type: sqlite`.

pub mod auth;
mod bootstrap;
mod builder;
pub mod config;
mod ingress;
mod insights;
mod inspect;
pub mod layout;
mod metrics;
mod multizone;
mod parts;
pub mod process;
pub mod serve;
mod tls;
mod vips;

pub use auth::{DataplaneAuthenticator, DataplaneTokenAuthenticator};
pub use builder::ControlPlaneBuilder;
pub use config::{Config, ConfigError};
pub use layout::{Layout, Listener, Service};
pub use metrics::Metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kuma_core::manager::{ManagerError, ResourceManager};
use tokio::sync::watch;
use xds_server::cache::SnapshotCache;

/// How long proxies' streams get to close before shutdown cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long store changes are collected before proxies' configs are regenerated (the one
/// debounce of every store follower).
pub use kuma_core::watch::DEBOUNCE;
/// How often a proxy's DataplaneInsight is written at most.
pub const INSIGHT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// `error` and its sources, `: `-separated: how a binary reports a [`StartError`].
pub use kuma_core::errors::chain as error_chain;

/// Why the control plane did not start. Its [`Display`](std::fmt::Display) says what failed;
/// the cause is its [`source`](std::error::Error::source) ([`error_chain`] prints both).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting this build cannot honour yet.
    #[error("{0}")]
    Unsupported(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate could not be loaded or generated.
    #[error("TLS")]
    Tls(#[source] kuma_core::errors::BoxError),
    /// Initial resources could not be created.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The store could not be opened (PostgreSQL unreachable, schema not migrated, ...).
    #[error("store")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The admin user token could not be bootstrapped.
    #[error("admin user token")]
    Tokens(#[from] kuma_ca::TokenError),
    /// The DNS settings cannot be used.
    #[error("dnsServer")]
    Dns(#[source] kuma_dns::vips::InvalidCidr),
}

/// A running control plane.
pub struct ControlPlane {
    running: parts::Running,
    shutdown: watch::Sender<bool>,
    servers: serve::Servers,
    /// Tasks that run as long as the control plane (leadership): stopped, not waited for.
    background: serve::Servers,
    metrics: Arc<metrics::Metrics>,
}

/// Where the split port layout's own servers listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitAddrs {
    /// SDS (gRPC over TLS).
    pub sds: SocketAddr,
    /// The admin server (tokens and secrets, HTTP on 127.0.0.1).
    pub admin: SocketAddr,
    /// The bootstrap server (`POST /bootstrap`, plain HTTP).
    pub bootstrap: SocketAddr,
    /// The GUI, with a read-only API for it.
    pub gui: SocketAddr,
}

/// The configuration as `GET /config` shows it: every password, token and key file masked.
pub fn masked_config(config: &Config) -> serde_json::Value {
    fn mask(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let lower = k.to_ascii_lowercase();
                    let secret = lower.contains("password")
                        || lower.contains("token") && !lower.contains("file");
                    if secret && v.as_str().is_some_and(|s| !s.is_empty()) {
                        *v = serde_json::Value::String("*****".into());
                    } else {
                        mask(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(mask),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(config).unwrap_or_default();
    mask(&mut value);
    value
}

impl ControlPlane {
    /// A control plane configured by `config`, to which the builder's extension points add.
    pub fn builder(config: Config) -> ControlPlaneBuilder {
        ControlPlaneBuilder::new(config)
    }

    /// Starts the control plane `config` describes ([`ControlPlane::builder`] with nothing
    /// swapped in).
    pub async fn start(config: Config) -> Result<ControlPlane, StartError> {
        Self::builder(config).start().await
    }

    pub(crate) fn new(
        running: parts::Running,
        shutdown: watch::Sender<bool>,
        ports: serve::Ports,
        background: serve::Servers,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        ControlPlane {
            running,
            shutdown,
            servers: ports.servers,
            background,
            metrics,
        }
    }

    /// Where the listener serving `service` listens.
    pub fn addr_of(&self, service: Service) -> Option<SocketAddr> {
        let listener = self.running.layout.listener_of(service)?;
        self.running.bound.get(listener.name).copied()
    }

    /// Where the listener named `name` (see [`Layout`]) listens.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.bound.get(name).copied()
    }

    /// Every listener with the address it listens on, in the layout's order.
    pub fn listeners(&self) -> impl Iterator<Item = (&Listener, SocketAddr)> {
        let bound = &self.running.bound;
        self.running
            .layout
            .listeners
            .iter()
            .filter_map(|l| Some((l, *bound.get(l.name)?)))
    }

    /// The layout the control plane listens by.
    pub fn layout(&self) -> &Layout {
        &self.running.layout
    }

    /// Where the DNS server listens, UDP and TCP (`None`: the layout has no DNS server).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.running.dns_addr
    }

    /// Where MADS (monitoring assignments for Prometheus) listens (`None` in global mode or
    /// when `monitoringAssignmentServer.enabled` is false).
    pub fn mads_addr(&self) -> Option<SocketAddr> {
        self.addr_of(Service::Mads)
    }

    /// Where the admission webhook listens, HTTPS (`None` unless
    /// `runtime.kubernetes.admissionServer.enabled`).
    pub fn admission_addr(&self) -> Option<SocketAddr> {
        self.addr_of(Service::Admission)
    }

    /// Where the split port layout's own servers listen (`None` in the default layout).
    pub fn split_addrs(&self) -> Option<SplitAddrs> {
        Some(SplitAddrs {
            sds: self.addr_of(Service::Sds)?,
            admin: self.addr_of(Service::Admin)?,
            bootstrap: self.addr_of(Service::Bootstrap)?,
            gui: self.listener_addr(layout::GUI_SERVER)?,
        })
    }

    /// Where the diagnostics port (`/ready`, `/healthy`, `/metrics`) listens.
    pub fn diagnostics_addr(&self) -> Option<SocketAddr> {
        self.addr_of(Service::Diagnostics)
    }

    /// Where the API serves plain HTTP (`None`: disabled).
    pub fn api_http_addr(&self) -> Option<SocketAddr> {
        self.listener_addr(layout::API_HTTP)
    }

    /// Where the API serves HTTPS (`None`: disabled).
    pub fn api_https_addr(&self) -> Option<SocketAddr> {
        self.listener_addr(layout::API_HTTPS)
    }

    /// Where the dp-server (ADS) listens (`None`: the layout serves no proxies).
    pub fn dp_server_addr(&self) -> Option<SocketAddr> {
        self.addr_of(Service::Ads)
    }

    /// The CA proxies and kuma-dp must trust for the dp-server, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.running.certificates.ca_pem
    }

    /// Where the generated CA certificate was written (`None` with a configured certificate).
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.running.certificates.ca_path.as_deref()
    }

    /// The resource manager (validating access to the store).
    pub fn manager(&self) -> &ResourceManager {
        &self.running.manager
    }

    /// The control plane's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The xDS snapshot cache.
    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.running.dp.cache
    }

    /// Ends every ADS stream with `UNAVAILABLE` (proxies reconnect and keep their config
    /// meanwhile), stops accepting connections, and waits for open ones to finish.
    ///
    /// Returns true when every connection finished on its own, false when some had to be cut
    /// after the grace period.
    pub async fn shutdown(self) -> bool {
        self.running.readiness.set(false);
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut graceful = true;
        let mut servers = self.servers;
        for server in &mut servers.0 {
            if tokio::time::timeout_at(deadline, &mut *server)
                .await
                .is_err()
            {
                server.abort();
                graceful = false;
            }
        }
        self.running.dp.reconciler.abort();
        drop(self.background);
        graceful
    }
}

// The README's Rust examples compile as doctests of this crate (it links every crate they use).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
