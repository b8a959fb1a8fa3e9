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

pub mod auth;
pub mod bootstrap;
pub mod dns;
pub mod follow;
pub mod identities;
pub mod insights;
pub mod inspect;
pub mod lifecycle;
pub mod mads;
pub mod metrics;
pub mod reconcile;
pub mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use kuma_core::config::{Config, ConfigError, Mode, PortLayout, StoreType};
use kuma_core::manager::{ManagerError, ManagerOptions, ResourceManager};
use kuma_store::MemoryStore;
use kuma_xds::cache::SnapshotCache;
use kuma_xds::generate::{GeneratorList, SnapshotGenerator};
use kuma_xds::server::AdsServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long proxies' streams get to close before shutdown cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long store changes are collected before proxies' configs are regenerated.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often a proxy's DataplaneInsight is written at most.
pub const INSIGHT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The store could not be opened (PostgreSQL unreachable, schema not migrated, ...).
    #[error("store: {0}")]
    Store(String),
    /// The admin user token could not be bootstrapped.
    #[error("admin user token: {0}")]
    Tokens(#[from] kuma_ca::TokenError),
    /// The DNS settings cannot be used.
    #[error("dnsServer: {0}")]
    Dns(String),
}

/// A running control plane.
pub struct ControlPlane {
    manager: ResourceManager,
    cache: Arc<SnapshotCache>,
    readiness: Arc<kuma_api::diagnostics::Readiness>,
    diagnostics_addr: SocketAddr,
    dp_server_addr: SocketAddr,
    api_http_addr: Option<SocketAddr>,
    api_https_addr: Option<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    mads_addr: Option<SocketAddr>,
    admission_addr: Option<SocketAddr>,
    split: Option<SplitAddrs>,
    ca_pem: String,
    ca_path: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    servers: serve::Servers,
    /// Tasks that run as long as the control plane (leadership): stopped, not waited for.
    background: serve::Servers,
    reconciler: JoinHandle<()>,
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

/// Where the SQLite store lives: `store.sqlite.path`, else `kuma.db` in `general.workDir`,
/// else in `$HOME/.kuma-rs` (a persistent place: keeping state is why one picks SQLite).
fn sqlite_path(config: &Config) -> std::path::PathBuf {
    if !config.store.sqlite.path.is_empty() {
        return config.store.sqlite.path.clone().into();
    }
    let dir = if config.general.work_dir.is_empty() {
        std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".kuma-rs"))
            .unwrap_or_else(|| std::path::PathBuf::from(".kuma-rs"))
    } else {
        config.general.work_dir.clone().into()
    };
    dir.join("kuma.db")
}

/// The resources every zone starts with: a leader-only job (each step is idempotent, so two
/// leaders in a row cannot duplicate anything).
struct Defaults {
    manager: ResourceManager,
    user_tokens: Arc<kuma_ca::user_token::UserTokens>,
    mesh: bool,
    admin_token: bool,
    api_port: u16,
}

impl Defaults {
    async fn ensure(&self) -> Result<(), StartError> {
        if self.mesh {
            self.manager.ensure_default_mesh().await?;
        }
        if self.admin_token && self.user_tokens.bootstrap_admin_token().await? {
            tracing::info!(
                "admin user token generated and stored as the global secret {:?}; an admin reads it \
                 with `curl http://localhost:{}/global-secrets/{0} | jq -r .data | base64 -d`",
                kuma_ca::user_token::ADMIN_USER_TOKEN,
                self.api_port,
            );
        }
        Ok(())
    }
}

/// Runs the leader-only jobs whenever this instance becomes leader, and reports leadership.
async fn leader_jobs(
    mut leader: watch::Receiver<bool>,
    defaults: Defaults,
    metrics: Arc<metrics::Metrics>,
) {
    let mut was = *leader.borrow_and_update();
    metrics.leader.set(i64::from(was));
    loop {
        if leader.changed().await.is_err() {
            return;
        }
        let now = *leader.borrow_and_update();
        metrics.leader.set(i64::from(now));
        if now && !was {
            tracing::info!("this instance is now the leader");
            if let Err(e) = defaults.ensure().await {
                tracing::warn!(error = %e, "leader job `defaults` failed; retried at the next leadership");
            }
        } else if !now && was {
            tracing::info!("this instance is no longer the leader");
        }
        was = now;
    }
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
        let (shutdown, _) = watch::channel(false);
        let connections = &config.connections;
        let mut ports = serve::Ports::new(
            shutdown.subscribe(),
            serve::ClientBudget::new(connections.max_per_client as usize),
        );
        // Every HTTP listener follows apiServer's timeouts, but for the ports proxies use.
        let api_limits = serve::Limits {
            max_connections: connections.max_per_listener as usize,
            handshake_timeout: connections.tls_handshake_timeout.get(),
            read_header_timeout: config.api_server.read_header_timeout.get(),
            idle_timeout: config.api_server.idle_timeout.get(),
            read_timeout: config.api_server.read_timeout.get(),
            max_body: kuma_core::resource::MAX_DOCUMENT_BYTES as u64,
        };
        let dp_limits = serve::Limits {
            read_header_timeout: config.dp_server.read_header_timeout.get(),
            idle_timeout: config.dp_server.idle_timeout.get(),
            ..api_limits
        };
        let readiness = Arc::new(kuma_api::diagnostics::Readiness::default());
        let metrics = Arc::new(metrics::Metrics::default());
        let diagnostics =
            kuma_api::diagnostics::router(readiness.clone()).route(
                "/metrics",
                get({
                    let metrics = metrics.clone();
                    move |headers: axum::http::HeaderMap| async move {
                        metrics::serve(&metrics, &headers)
                    }
                }),
            );
        let diagnostics_addr = ports
            .http(
                "diagnostics",
                ("0.0.0.0", config.diagnostics.server_port),
                api_limits,
                diagnostics,
            )
            .await?;

        let zone = (config.mode == Mode::Zone).then(|| config.multizone.zone.name.clone());
        let backend: Arc<dyn kuma_core::store::ResourceStore> = match config.store.kind {
            StoreType::Memory => Arc::new(MemoryStore::new()),
            StoreType::Postgres => Arc::new(
                kuma_store::PostgresStore::connect(&config.store.postgres)
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            ),
            StoreType::Sqlite => {
                let path = sqlite_path(&config);
                tracing::info!(path = %path.display(), "resources are kept in SQLite");
                Arc::new(
                    kuma_store::SqliteStore::open(&path)
                        .map_err(|e| StartError::Store(e.to_string()))?,
                )
            }
        };
        let store = metrics::MeteredStore::new(backend, metrics.clone());
        let manager = ResourceManager::new(Arc::new(store), ManagerOptions { zone });
        // Leadership: the once-per-zone jobs run on the leader only.
        let mut background = serve::Servers(Vec::new());
        let leader = match config.store.kind {
            // One process owns the store: it leads.
            StoreType::Memory | StoreType::Sqlite => kuma_store::leader::in_process(),
            StoreType::Postgres => {
                let (leader, campaign) =
                    kuma_store::leader::postgres::campaign(config.store.postgres.clone()).await;
                background.0.push(campaign);
                leader
            }
        };

        let cache = Arc::new(SnapshotCache::new());
        let generator: Arc<dyn SnapshotGenerator> = Arc::new(GeneratorList::kuma_profile());
        let registry = Arc::new(lifecycle::ProxyRegistry::default());
        let reconciler = reconcile::Reconciler::new(
            manager.clone(),
            cache.clone(),
            generator,
            registry.clone(),
            DEBOUNCE,
        )
        .with_metrics(metrics.clone())
        .with_mtls_config(&config.mtls)
        .with_vips_served(
            u32::from(config.dns_server.service_vip_port),
            &config.dns_server.domain,
        );
        let split_layout = config.port_layout == PortLayout::Split && config.mode != Mode::Global;
        let reconciler = if split_layout {
            reconciler.with_sds_cluster(bootstrap::SDS_CLUSTER)
        } else {
            reconciler
        };
        let reconciler = tokio::spawn(reconciler.run());

        let lifecycle = lifecycle::Lifecycle::new(
            manager.clone(),
            config.xds_server.dataplane_deregistration_delay.get(),
            tokio::runtime::Handle::current(),
            registry,
        )
        .with_shutdown(shutdown.subscribe());
        let hostname = tls::hostname();
        let mut info = kuma_api::ServerInfo::local(&hostname);
        info.mode = match config.mode {
            Mode::Standalone => "standalone",
            Mode::Zone => "zone",
            Mode::Global => "global",
        }
        .into();
        let insights = insights::InsightRecorder::new(
            manager.clone(),
            &info.instance_id,
            config.metrics.dataplane.subscription_limit,
        );
        let insight_writer = tokio::spawn(
            insights
                .clone()
                .run(INSIGHT_FLUSH_INTERVAL, shutdown.subscribe()),
        );
        ports.add_task(insight_writer);
        let preparer = Arc::new(lifecycle.clone());
        let callbacks = (
            lifecycle,
            (insights.clone(), metrics::XdsMetrics(metrics.clone())),
        );
        // Kuma's default: proxies prove who they are with a dataplane token.
        let dp_auth = match config.dp_server.authn.dp_proxy.kind.as_str() {
            "none" => None,
            _ => Some(Arc::new(auth::DataplaneTokenAuthenticator::new(
                manager.clone(),
            ))),
        };
        let mut ads = AdsServer::new(cache.clone(), Arc::new(callbacks))
            .with_shutdown(shutdown.subscribe())
            .with_preparer(preparer);
        if let Some(a) = &dp_auth {
            ads = ads.with_authenticator(a.clone());
        }
        let ads = ads.into_service();
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
        // A listener's TLS: its own certificate files when set, else the control plane's.
        let own_or_ours = |cert: &str, key: &str| {
            if cert.is_empty() {
                return Ok(server_tls.clone());
            }
            tls::CpCertificate::load_or_generate(cert, key, &tls_dir, &tls::default_hosts())
                .and_then(|c| c.server_config())
                .map_err(StartError::Tls)
        };
        let ca_path = if cert_file.is_empty() {
            Some(tls::CpCertificate::ca_path(&tls_dir))
        } else {
            None
        };
        // The split layout's SDS port: the secrets service alone, over the same TLS.
        let mut sds_addr = None;
        if split_layout {
            // Its streams' deliveries count in the proxy's insight and the metrics, but the
            // proxy's subscription, and its registration, is its ADS stream.
            let callbacks =
                kuma_xds::server::DeliveriesOnly((insights, metrics::XdsMetrics(metrics.clone())));
            let mut sds = AdsServer::new(cache.clone(), Arc::new(callbacks))
                .with_shutdown(shutdown.subscribe());
            if let Some(a) = &dp_auth {
                sds = sds.with_authenticator(a.clone());
            }
            let router = tonic::service::Routes::new(sds.into_service().sds()).into_axum_router();
            let port = config.sds_server.grpc_port;
            sds_addr = Some(
                ports
                    .https(
                        "SDS",
                        ("0.0.0.0", port),
                        server_tls.clone(),
                        dp_limits,
                        router,
                    )
                    .await?,
            );
        }
        let bootstrap_state = bootstrap::BootstrapState {
            manager: manager.clone(),
            params: config.bootstrap_server.params.clone(),
            dp_server_port: config.dp_server.port,
            sds_port: sds_addr.map(|a| a.port()),
            ca_pem: certificate.ca_pem.clone(),
            dp_auth,
        };
        let bootstrap_router = axum::Router::new().route(
            "/bootstrap",
            post(bootstrap::handle).with_state(bootstrap_state),
        );
        let ads_router = tonic::service::Routes::new(ads).into_axum_router();
        // By default one TLS port serves ADS and the bootstrap; split, the bootstrap has a
        // plain-HTTP port of its own.
        let mut bootstrap_addr = None;
        let router = if split_layout {
            let port = config.bootstrap_server.port;
            bootstrap_addr = Some(
                ports
                    .http(
                        "bootstrap server",
                        ("0.0.0.0", port),
                        dp_limits,
                        bootstrap_router,
                    )
                    .await?,
            );
            // Say where the bootstrap went rather than answer as gRPC would (200, UNIMPLEMENTED).
            let moved = format!(
                "in the split port layout the bootstrap is served over plain HTTP on port {} (bootstrapServer.port)",
                port
            );
            ads_router.route(
                "/bootstrap",
                post(move || async move { (axum::http::StatusCode::NOT_FOUND, moved) }),
            )
        } else {
            ads_router.merge(bootstrap_router)
        };

        let dp_server_addr = ports
            .https(
                "dp-server",
                ("0.0.0.0", config.dp_server.port),
                server_tls.clone(),
                dp_limits,
                router,
            )
            .await?;
        tracing::info!(%dp_server_addr, split_layout, "dp-server (TLS) listening");

        let api = &config.api_server;
        let user_tokens = Arc::new(kuma_ca::user_token::UserTokens::new(manager.clone()));
        let defaults = Defaults {
            manager: manager.clone(),
            user_tokens: user_tokens.clone(),
            mesh: !config.defaults.skip_mesh_creation,
            admin_token: api.authn.tokens.bootstrap_admin_token,
            api_port: api.http.port,
        };
        // At start the leader creates the defaults before anything is served; afterwards an
        // instance that becomes leader (re)checks them.
        if *leader.borrow() {
            defaults.ensure().await?;
        }
        // DNS: the leader allocates VIPs, every instance serves the zone.
        let mut dns_addr = None;
        if config.mode != Mode::Global {
            let d = &config.dns_server;
            let allocator = kuma_dns::vips::CidrVipAllocator::new(manager.clone(), &d.cidr)
                .map_err(StartError::Dns)?;
            if d.service_vip_enabled {
                background.0.push(tokio::spawn(dns::allocate_vips(
                    manager.clone(),
                    Arc::new(allocator),
                    config.multizone.zone.name.clone(),
                    leader.clone(),
                )));
            }
            // Stored VIPs are answered from the first query on.
            let zone = dns::build_zone(&manager, &d.domain, d.ttl).await;
            let server = kuma_dns::server::DnsServer::new(zone);
            let addr: SocketAddr = ([0, 0, 0, 0], d.port).into();
            let bound = server
                .bind(addr, shutdown.subscribe())
                .await
                .map_err(|source| StartError::Bind {
                    addr: format!("{addr} (DNS)"),
                    source,
                })?;
            dns_addr = Some(bound);
            background.0.push(tokio::spawn(dns::follow_vips(
                manager.clone(),
                server,
                d.domain.clone(),
                d.ttl,
            )));
        }
        // MADS: every instance serves the assignments of its store.
        let mut mads_addr = None;
        let m = &config.monitoring_assignment_server;
        if config.mode != Mode::Global && m.enabled {
            let held = metrics.mads_held.clone();
            let mads = kuma_xds::mads::Mads::new()
                .with_shutdown(shutdown.subscribe())
                .with_held_observer(move |delta| {
                    held.inc_by(delta);
                });
            background.0.push(tokio::spawn(mads::follow_assignments(
                manager.clone(),
                mads.clone(),
            )));
            let router = kuma_xds::mads::router(mads, m.default_fetch_timeout.get());
            mads_addr = Some(if m.tls_enabled {
                let tls = own_or_ours(&m.tls_cert_file, &m.tls_key_file)?;
                ports
                    .https("MADS", ("0.0.0.0", m.port), tls, api_limits, router)
                    .await?
            } else {
                ports
                    .http("MADS", ("0.0.0.0", m.port), api_limits, router)
                    .await?
            });
        }
        background
            .0
            .push(tokio::spawn(leader_jobs(leader, defaults, metrics.clone())));
        let token_issuer: Arc<dyn kuma_api::tokens::DataplaneTokenIssuer> =
            Arc::new(auth::DataplaneTokenIssuer(
                kuma_ca::dataplane_token::DataplaneTokens::new(manager.clone()),
            ));
        // The API's state; the split layout's admin and GUI servers get variants of it.
        let api_state =
            |read_only: bool,
             dataplane_tokens: Option<Arc<dyn kuma_api::tokens::DataplaneTokenIssuer>>,
             catalog: Option<kuma_api::catalog::Catalog>| {
                Arc::new(kuma_api::ApiState {
                    config: masked_config(&config),
                    read_only,
                    localhost_is_admin: api.authn.localhost_is_admin,
                    tokens: Some(Arc::new(auth::TokenAuthenticator(user_tokens.clone()))),
                    proxy_configs: Some(Arc::new(inspect::CacheInspector(cache.clone()))),
                    dataplane_tokens,
                    catalog,
                    access: config.access.static_access.clone(),
                    ..kuma_api::ApiState::new(manager.clone(), info.clone())
                })
            };
        let count_requests = |router: axum::Router| {
            router.layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                metrics::count_api_requests,
            ))
        };
        let mut split = None;
        let api_router = if let (Some(sds), Some(bootstrap)) = (sds_addr, bootstrap_addr) {
            // Tokens and secrets on localhost; the GUI with an API that only reads.
            let router = count_requests(kuma_api::admin_router(api_state(
                api.read_only,
                Some(token_issuer),
                None,
            )));
            let port = config.admin_server.local.port;
            let admin = ports
                .http("admin server", ("127.0.0.1", port), api_limits, router)
                .await?;
            let router = count_requests(kuma_api::router(api_state(true, None, None)));
            let port = config.gui_server.port;
            let gui = ports
                .http("GUI server", ("0.0.0.0", port), api_limits, router)
                .await?;
            split = Some(SplitAddrs {
                sds,
                admin,
                bootstrap,
                gui,
            });
            let catalog = kuma_api::catalog::Catalog {
                bootstrap_port: bootstrap.port(),
                admin_port: admin.port(),
                mads_port: mads_addr.map(|a| a.port()),
            };
            count_requests(kuma_api::router(api_state(
                api.read_only,
                None,
                Some(catalog),
            )))
        } else {
            count_requests(kuma_api::router(api_state(
                api.read_only,
                Some(token_issuer),
                None,
            )))
        };
        let mut api_http_addr = None;
        if api.http.enabled {
            let router = api_router
                .clone()
                .layer(axum::Extension(kuma_api::Scheme("http")));
            let (interface, port) = (&api.http.interface, api.http.port);
            api_http_addr = Some(
                ports
                    .http("API (HTTP)", (interface, port), api_limits, router)
                    .await?,
            );
        }
        let mut api_https_addr = None;
        if config.serves_https_api() {
            let tls = own_or_ours(&api.https.tls_cert_file, &api.https.tls_key_file)?;
            let router = api_router.layer(axum::Extension(kuma_api::Scheme("https")));
            let (interface, port) = (&api.https.interface, api.https.port);
            api_https_addr = Some(
                ports
                    .https("API (HTTPS)", (interface, port), tls, api_limits, router)
                    .await?,
            );
        }
        // The admission webhook, when asked for: HTTPS with its own certificate or ours.
        let mut admission_addr = None;
        let a = &config.runtime.kubernetes.admission_server;
        if a.enabled {
            let file = |f: &str| match a.cert_dir.as_str() {
                "" => String::new(),
                dir => std::path::Path::new(dir)
                    .join(f)
                    .to_string_lossy()
                    .into_owned(),
            };
            let tls = own_or_ours(&file("tls.crt"), &file("tls.key"))?;
            let router = kuma_api::admission::router();
            admission_addr = Some(
                ports
                    .https(
                        "admission webhook",
                        (&a.address, a.port),
                        tls,
                        api_limits,
                        router,
                    )
                    .await?,
            );
        }
        readiness.set(true);
        Ok(ControlPlane {
            manager,
            cache,
            readiness,
            diagnostics_addr,
            dp_server_addr,
            api_http_addr,
            api_https_addr,
            dns_addr,
            mads_addr,
            admission_addr,
            split,
            ca_pem: certificate.ca_pem,
            ca_path,
            shutdown,
            servers: ports.servers,
            background,
            reconciler,
            metrics,
        })
    }

    /// Where the DNS server listens, UDP and TCP (`None` in global mode).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Where MADS (monitoring assignments for Prometheus) listens (`None` in global mode or
    /// when `monitoringAssignmentServer.enabled` is false).
    pub fn mads_addr(&self) -> Option<SocketAddr> {
        self.mads_addr
    }

    /// Where the admission webhook listens, HTTPS (`None` unless
    /// `runtime.kubernetes.admissionServer.enabled`).
    pub fn admission_addr(&self) -> Option<SocketAddr> {
        self.admission_addr
    }

    /// Where the split port layout's own servers listen (`None` in the default layout).
    pub fn split_addrs(&self) -> Option<SplitAddrs> {
        self.split
    }

    /// Where the diagnostics port (`/ready`, `/healthy`) listens.
    pub fn diagnostics_addr(&self) -> SocketAddr {
        self.diagnostics_addr
    }

    /// Where the API serves plain HTTP (`None`: disabled).
    pub fn api_http_addr(&self) -> Option<SocketAddr> {
        self.api_http_addr
    }

    /// Where the API serves HTTPS (`None`: disabled).
    pub fn api_https_addr(&self) -> Option<SocketAddr> {
        self.api_https_addr
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

    /// The control plane's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
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
        self.readiness.set(false);
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
        self.reconciler.abort();
        drop(self.background);
        graceful
    }
}
