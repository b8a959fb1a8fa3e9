//! Assembles the kuma-rs crates into a running control plane.
//!
//! ```no_run
//! # async fn run() -> Result<(), kuma_cp::StartError> {
//! let config = kuma_core::config::Config::load(None, |k| std::env::var(k).ok())?;
//! let cp = kuma_cp::ControlPlane::start(config).await?;
//! println!("dp-server on {}", cp.dp_server_addr());
//! cp.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What runs today: the store (memory), the resource manager with the `default` mesh, the
//! event-driven reconciler that turns store changes into xDS snapshots, and the dp-server port
//! serving ADS (gRPC, state of the world and delta) and `POST /bootstrap` side by side over one
//! TLS port (certificate configured, or generated at start under its own CA), with the
//! universal Dataplane lifecycle.

pub mod bootstrap;
pub mod lifecycle;
pub mod reconcile;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use kuma_core::config::{Config, ConfigError, Mode, StoreType};
use kuma_core::manager::{ManagerError, ManagerOptions, ResourceManager};
use kuma_store::MemoryStore;
use kuma_xds::cache::SnapshotCache;
use kuma_xds::generate::{DefaultGenerator, SnapshotGenerator};
use kuma_xds::server::AdsServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long proxies' streams get to close before shutdown cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long store changes are collected before proxies' configs are regenerated.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting this build cannot honour yet.
    #[error("{0}")]
    Unsupported(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate could not be loaded or generated.
    #[error("TLS: {0}")]
    Tls(String),
    /// Initial resources could not be created.
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// A running control plane.
pub struct ControlPlane {
    manager: ResourceManager,
    cache: Arc<SnapshotCache>,
    dp_server_addr: SocketAddr,
    ca_pem: String,
    ca_path: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    reconciler: JoinHandle<()>,
}

impl ControlPlane {
    /// Starts every component the configured mode serves.
    pub async fn start(config: Config) -> Result<ControlPlane, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;
        if config.mode == Mode::Global {
            return Err(StartError::Unsupported(
                "global mode is not available yet; run standalone".into(),
            ));
        }
        if config.store.kind != StoreType::Memory {
            return Err(StartError::Unsupported(
                "store.type postgres is not available yet; use memory".into(),
            ));
        }
        let zone = (config.mode == Mode::Zone).then(|| config.multizone.zone.name.clone());
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions { zone });
        if !config.defaults.skip_mesh_creation {
            manager.ensure_default_mesh().await?;
        }

        let cache = Arc::new(SnapshotCache::new());
        let generator: Arc<dyn SnapshotGenerator> = Arc::new(DefaultGenerator);
        let registry = Arc::new(lifecycle::ProxyRegistry::default());
        let reconciler = reconcile::Reconciler::new(
            manager.clone(),
            cache.clone(),
            generator,
            registry.clone(),
            DEBOUNCE,
        );
        let reconciler = tokio::spawn(reconciler.run());

        let lifecycle = lifecycle::Lifecycle::new(
            manager.clone(),
            config.xds_server.dataplane_deregistration_delay.get(),
            tokio::runtime::Handle::current(),
            registry,
        );
        let (shutdown, _) = watch::channel(false);
        let ads = AdsServer::new(cache.clone(), Arc::new(lifecycle))
            .with_shutdown(shutdown.subscribe())
            .into_service();
        let work_dir = if config.general.work_dir.is_empty() {
            std::env::temp_dir().join(format!("kuma-rs-cp-{}", std::process::id()))
        } else {
            std::path::PathBuf::from(&config.general.work_dir)
        };
        let tls_dir = work_dir.join("tls");
        let (cert_file, key_file) = if config.dp_server.tls_cert_file.is_empty() {
            (&config.general.tls_cert_file, &config.general.tls_key_file)
        } else {
            (
                &config.dp_server.tls_cert_file,
                &config.dp_server.tls_key_file,
            )
        };
        let certificate = tls::CpCertificate::load_or_generate(
            cert_file,
            key_file,
            &tls_dir,
            &tls::default_hosts(),
        )
        .map_err(StartError::Tls)?;
        let server_tls = certificate.server_config().map_err(StartError::Tls)?;
        let ca_path = if cert_file.is_empty() {
            Some(tls::CpCertificate::ca_path(&tls_dir))
        } else {
            None
        };
        let bootstrap_state = bootstrap::BootstrapState {
            manager: manager.clone(),
            params: config.bootstrap_server.params.clone(),
            dp_server_port: config.dp_server.port,
            ca_pem: certificate.ca_pem.clone(),
        };
        let router = tonic::service::Routes::new(ads).into_axum_router().route(
            "/bootstrap",
            post(bootstrap::handle).with_state(bootstrap_state),
        );

        let addr = format!("0.0.0.0:{}", config.dp_server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let dp_server_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: "dp-server".into(),
            source,
        })?;
        let mut stop = shutdown.subscribe();
        let listener =
            tls::TlsListener::new(listener, server_tls).map_err(|source| StartError::Bind {
                addr: "dp-server".into(),
                source,
            })?;
        let server = tokio::spawn(async move {
            let graceful = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = graceful.await {
                tracing::error!(error = %e, "dp-server failed");
            }
        });
        tracing::info!(%dp_server_addr, "dp-server (TLS: ADS and /bootstrap) listening");
        Ok(ControlPlane {
            manager,
            cache,
            dp_server_addr,
            ca_pem: certificate.ca_pem,
            ca_path,
            shutdown,
            server,
            reconciler,
        })
    }

    /// Where the dp-server listens.
    pub fn dp_server_addr(&self) -> SocketAddr {
        self.dp_server_addr
    }

    /// The CA proxies and kuma-dp must trust for the dp-server, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the generated CA certificate was written (`None` with a configured certificate).
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca_path.as_deref()
    }

    /// The resource manager (validating access to the store).
    pub fn manager(&self) -> &ResourceManager {
        &self.manager
    }

    /// The xDS snapshot cache.
    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    /// Ends every ADS stream with `UNAVAILABLE` (proxies reconnect and keep their config
    /// meanwhile), stops accepting connections, and waits for open ones to finish.
    ///
    /// Returns true when every connection finished on its own, false when some had to be cut
    /// after the grace period.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        let graceful = tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_ok();
        if !graceful {
            server.abort();
        }
        self.reconciler.abort();
        graceful
    }
}
