//! The parts [`ControlPlaneBuilder::start`](crate::ControlPlaneBuilder::start) assembles: the
//! store and leadership, the certificates, the data-plane side (reconciler, lifecycle,
//! insights, ADS/SDS, bootstrap), DNS, MADS, the API, and the routes each [`Service`] serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use axum::routing::{get, post};
use kuma_ca::mesh_ca::CaManagers;
use kuma_core::manager::ResourceManager;
use kuma_core::store::ResourceStore;
use kuma_dns::vips::VipAllocator;
use kuma_store::config::StoreType;
use kuma_xds::generate::SnapshotGenerator;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use xds_server::cache::SnapshotCache;
use xds_server::server::{AdsServer, DeliveriesOnly};

use crate::auth::{DataplaneAuthenticator, ProxyAdmission};
use crate::layout::{Layout, Listener, Service, Tls};
use crate::{DEBOUNCE, INSIGHT_FLUSH_INTERVAL, serve, tls};
use crate::{StartError, auth, bootstrap, insights, inspect, metrics};
use kuma_core::resource::ResourceType;
use kuma_xds::lifecycle;
use kuma_xds::sync::Reconciler;

/// The configured store, the leadership over it, and the tasks that keep leadership.
pub(crate) async fn open_store(
    config: &Config,
) -> Result<
    (
        Arc<dyn ResourceStore>,
        watch::Receiver<bool>,
        serve::Servers,
    ),
    StartError,
> {
    Ok(match config.store.kind {
        // One process owns the store: it leads. Global holds every zone's proxies and reads
        // them rarely (the API): it keeps those compact.
        StoreType::Memory => (
            Arc::new(
                kuma_store::MemoryStore::new().with_compact_types(
                    (config.mode == crate::config::Mode::Global)
                        .then_some([ResourceType::Dataplane, ResourceType::DataplaneInsight])
                        .into_iter()
                        .flatten(),
                ),
            ),
            kuma_store::leader::in_process(),
            serve::Servers(Vec::new()),
        ),
        #[cfg(feature = "sqlite")]
        StoreType::Sqlite => {
            let path = sqlite_path(config);
            tracing::info!(path = %path.display(), "resources are kept in SQLite");
            let store =
                kuma_store::SqliteStore::open(&path).map_err(|e| StartError::Store(Box::new(e)))?;
            (
                Arc::new(store),
                kuma_store::leader::in_process(),
                serve::Servers(Vec::new()),
            )
        }
        #[cfg(feature = "postgres")]
        StoreType::Postgres => {
            let store = kuma_store::PostgresStore::connect(&config.store.postgres)
                .await
                .map_err(|e| StartError::Store(Box::new(e)))?;
            let (leader, campaign) =
                kuma_store::leader::postgres::campaign(config.store.postgres.clone()).await;
            (Arc::new(store), leader, serve::Servers(vec![campaign]))
        }
        #[allow(unreachable_patterns)] // with every store feature on
        other => {
            let feature = serde_json::to_value(other).unwrap_or_default();
            let feature = feature.as_str().unwrap_or("?");
            return Err(StartError::Unsupported(format!(
                "store.type {feature}: this control plane was built without kuma-cp's `{feature}` feature"
            )));
        }
    })
}

#[cfg(feature = "sqlite")]
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

/// The control plane's TLS: its certificate (configured, or generated under a CA of its own),
/// and listeners' own certificates.
pub(crate) struct Certificates {
    pub(crate) ca_pem: String,
    pub(crate) ca_path: Option<std::path::PathBuf>,
    ours: Arc<ServerConfig>,
    dir: std::path::PathBuf,
}

impl Certificates {
    /// `dpServer`'s certificate files, else `general`'s, else one generated in the work dir.
    pub(crate) fn load(config: &Config) -> Result<Self, StartError> {
        let work_dir = if config.general.work_dir.is_empty() {
            std::env::temp_dir().join(format!("kuma-rs-cp-{}", std::process::id()))
        } else {
            std::path::PathBuf::from(&config.general.work_dir)
        };
        let dir = work_dir.join("tls");
        let (cert_file, key_file) = if config.dp_server.tls_cert_file.is_empty() {
            (&config.general.tls_cert_file, &config.general.tls_key_file)
        } else {
            (
                &config.dp_server.tls_cert_file,
                &config.dp_server.tls_key_file,
            )
        };
        let certificate =
            tls::CpCertificate::load_or_generate(cert_file, key_file, &dir, &tls::default_hosts())
                .map_err(|e| StartError::Tls(e.into()))?;
        Ok(Certificates {
            ours: certificate
                .server_config()
                .map_err(|e| StartError::Tls(e.into()))?,
            ca_path: cert_file
                .is_empty()
                .then(|| tls::CpCertificate::ca_path(&dir)),
            ca_pem: certificate.ca_pem,
            dir,
        })
    }

    /// The server TLS of a listener (`None`: plain TCP): its own files, else ours.
    pub(crate) fn for_listener(&self, tls: &Tls) -> Result<Option<Arc<ServerConfig>>, StartError> {
        match tls {
            Tls::Plain => Ok(None),
            Tls::Files { cert_file, .. } if cert_file.is_empty() => Ok(Some(self.ours.clone())),
            Tls::Files {
                cert_file,
                key_file,
            } => tls::CpCertificate::load_or_generate(
                cert_file,
                key_file,
                &self.dir,
                &tls::default_hosts(),
            )
            .and_then(|c| c.server_config())
            .map(Some)
            .map_err(|e| StartError::Tls(e.into())),
        }
    }
}

/// The limits of a listener: apiServer's timeouts, or dpServer's for the ports proxies use.
pub(crate) fn limits(config: &Config, proxies: bool) -> serve::Limits {
    let api = serve::Limits {
        max_connections: config.connections.max_per_listener as usize,
        handshake_timeout: config.connections.tls_handshake_timeout.get(),
        read_header_timeout: config.api_server.read_header_timeout.get(),
        idle_timeout: config.api_server.idle_timeout.get(),
        read_timeout: config.api_server.read_timeout.get(),
        max_body: kuma_core::resource::MAX_DOCUMENT_BYTES as u64,
    };
    if !proxies {
        return api;
    }
    serve::Limits {
        read_header_timeout: config.dp_server.read_header_timeout.get(),
        idle_timeout: config.dp_server.idle_timeout.get(),
        ..api
    }
}

/// From store changes to proxies: the snapshot cache, the reconciler, the Dataplane lifecycle,
/// the insight recorder, and the ADS and SDS services over them.
pub(crate) struct DataPlaneSide {
    pub(crate) cache: Arc<SnapshotCache>,
    pub(crate) reconciler: JoinHandle<()>,
    ads: xds_server::AdsService<Callbacks>,
    sds: Option<xds_server::SdsService<DeliveriesOnly<Observers>>>,
    admission: Option<Arc<ProxyAdmission>>,
    manager: ResourceManager,
}

type Observers = (insights::InsightRecorder, metrics::XdsMetrics);
type Callbacks = (lifecycle::Lifecycle, Observers);

/// What the data-plane side is built from: the configuration, the layout, the manager and
/// the metrics.
type Setting<'a> = (
    &'a Config,
    &'a Layout,
    &'a ResourceManager,
    &'a Arc<metrics::Metrics>,
);

impl DataPlaneSide {
    /// Starts the reconciler and the insight writer; ADS and SDS are served once routed.
    pub(crate) fn start(
        (config, layout, manager, metrics): Setting<'_>,
        generator: Arc<dyn SnapshotGenerator>,
        cas: CaManagers,
        (authenticator, zone_proxies): (
            Option<Arc<dyn DataplaneAuthenticator>>,
            Option<auth::ZoneProxyAuthenticator>,
        ),
        instance_id: &str,
        shutdown: &watch::Sender<bool>,
        ports: &mut serve::Ports,
    ) -> Self {
        let cache = Arc::new(SnapshotCache::new());
        let registry = Arc::new(lifecycle::ProxyRegistry::default());
        let mut reconciler = Reconciler::new(
            manager.clone(),
            cache.clone(),
            generator,
            registry.clone(),
            DEBOUNCE,
        )
        .with_observer(metrics.clone())
        .with_vips(Arc::new(crate::vips::StoredVips(manager.clone())))
        .with_mtls_config(&config.mtls)
        .with_ca_managers(cas)
        .with_vips_served(
            u32::from(config.dns_server.service_vip_port),
            &config.dns_server.domain,
        )
        .with_auto_reachable_services(config.experimental.auto_reachable_services)
        .with_zone(&config.multizone.zone.name);
        if layout.sds_apart() {
            reconciler = reconciler.with_sds_cluster(kuma_xds::bootstrap::SDS_CLUSTER);
        }
        // Without a port for proxies (global mode) there is nothing to generate: the
        // reconciler does not follow the store at all.
        let reconciler = if layout.serves(Service::Ads) {
            tokio::spawn(reconciler.run())
        } else {
            tokio::spawn(async {})
        };
        let lifecycle = lifecycle::Lifecycle::new(
            manager.clone(),
            config.xds_server.dataplane_deregistration_delay.get(),
            tokio::runtime::Handle::current(),
            registry,
        )
        .with_shutdown(shutdown.subscribe());
        let insights = insights::InsightRecorder::new(
            manager.clone(),
            instance_id,
            config.metrics.dataplane.subscription_limit,
        );
        ports.add_task(tokio::spawn(
            insights
                .clone()
                .run(INSIGHT_FLUSH_INTERVAL, shutdown.subscribe()),
        ));
        let admission = (authenticator.is_some() || zone_proxies.is_some()).then(|| {
            Arc::new(ProxyAdmission::new(
                authenticator,
                zone_proxies,
                manager.clone(),
            ))
        });
        let observers = (insights, metrics::XdsMetrics(metrics.clone()));
        let preparer = Arc::new(lifecycle.clone());
        let mut ads = AdsServer::new(cache.clone(), Arc::new((lifecycle, observers.clone())))
            .with_shutdown(shutdown.subscribe())
            .with_preparer(preparer);
        // A separate SDS port's deliveries count in the proxy's insight and the metrics, but
        // the proxy's subscription, and its registration, is its ADS stream.
        let mut sds = layout.sds_apart().then(|| {
            AdsServer::new(cache.clone(), Arc::new(DeliveriesOnly(observers)))
                .with_shutdown(shutdown.subscribe())
        });
        if let Some(a) = &admission {
            ads = ads.with_authenticator(a.clone());
            sds = sds.map(|s| s.with_authenticator(a.clone()));
        }
        DataPlaneSide {
            cache,
            reconciler,
            ads: ads.into_service(),
            sds: sds.map(|s| s.into_service().sds()),
            admission,
            manager: manager.clone(),
        }
    }

    /// ADS; when the bootstrap is served elsewhere, `POST /bootstrap` says where rather than
    /// answer as gRPC would (200, UNIMPLEMENTED).
    pub(crate) fn ads_router(&self, layout: &Layout) -> axum::Router {
        let router = tonic::service::Routes::new(self.ads.clone()).into_axum_router();
        match layout.listener_of(Service::Bootstrap) {
            Some(b) if !b.services.contains(&Service::Ads) => {
                let moved = format!(
                    "in the split port layout the bootstrap is served over plain HTTP on port {} (bootstrapServer.port)",
                    b.port
                );
                router.route(
                    "/bootstrap",
                    post(move || async move { (axum::http::StatusCode::NOT_FOUND, moved) }),
                )
            }
            _ => router,
        }
    }

    /// The secrets service alone.
    pub(crate) fn sds_router(&self) -> axum::Router {
        match &self.sds {
            Some(sds) => tonic::service::Routes::new(sds.clone()).into_axum_router(),
            None => axum::Router::new(),
        }
    }

    /// `POST /bootstrap`, pointing proxies at the dp-server (and the SDS port when apart).
    pub(crate) fn bootstrap_router(
        &self,
        config: &Config,
        layout: &Layout,
        bound: &BTreeMap<&'static str, SocketAddr>,
        certificates: &Certificates,
    ) -> axum::Router {
        let sds_port = layout
            .sds_apart()
            .then(|| port_of(layout, bound, Service::Sds))
            .flatten();
        let state = bootstrap::BootstrapState {
            manager: self.manager.clone(),
            target: kuma_xds::bootstrap::ControlPlaneTarget {
                params: config.bootstrap_server.params.clone(),
                dp_server_port: config.dp_server.port,
                sds_port,
                ca_pem: certificates.ca_pem.clone(),
            },
            dp_auth: self.admission.clone(),
        };
        axum::Router::new().route("/bootstrap", post(bootstrap::handle).with_state(state))
    }
}

/// The port `service` listens on: bound already, else configured.
fn port_of(
    layout: &Layout,
    bound: &BTreeMap<&'static str, SocketAddr>,
    service: Service,
) -> Option<u16> {
    let listener = layout.listener_of(service)?;
    Some(bound.get(listener.name).map_or(listener.port, |a| a.port()))
}

/// `/catalog`: where the bootstrap, admin and MADS servers listen.
pub(crate) fn catalog(
    layout: &Layout,
    bound: &BTreeMap<&'static str, SocketAddr>,
) -> kuma_api::catalog::Catalog {
    kuma_api::catalog::Catalog {
        bootstrap_port: port_of(layout, bound, Service::Bootstrap).unwrap_or_default(),
        admin_port: port_of(layout, bound, Service::Admin).unwrap_or_default(),
        mads_port: port_of(layout, bound, Service::Mads),
    }
}

/// What `GET /` says about this instance; its instance id also marks the insights it writes.
pub(crate) fn server_info(config: &Config) -> kuma_api::ServerInfo {
    let mut info = kuma_api::ServerInfo::local(&tls::hostname());
    info.mode = match config.mode {
        crate::config::Mode::Standalone => "standalone",
        crate::config::Mode::Zone => "zone",
        crate::config::Mode::Global => "global",
    }
    .into();
    info
}

/// The API's place in a multi-zone deployment.
fn federation(config: &Config) -> kuma_api::federation::Federation {
    use kuma_api::federation::Federation;
    match config.mode {
        crate::config::Mode::Standalone => Federation::Standalone,
        crate::config::Mode::Global => Federation::Global,
        crate::config::Mode::Zone => Federation::Zone {
            name: config.multizone.zone.name.clone(),
            federated: config.is_federated_zone(),
        },
    }
}

/// The resources every zone starts with: a leader-only job (each step is idempotent, so two
/// leaders in a row cannot duplicate anything).
pub(crate) struct Defaults {
    manager: ResourceManager,
    user_tokens: Arc<kuma_ca::user_token::UserTokens>,
    mesh: bool,
    admin_token: bool,
    /// Makes the first zone-token signing key (global and standalone).
    zone_tokens: Option<kuma_ca::zone_token::ZoneTokens>,
    api_port: u16,
}

impl Defaults {
    pub(crate) fn new(
        config: &Config,
        manager: &ResourceManager,
        user_tokens: Arc<kuma_ca::user_token::UserTokens>,
    ) -> Self {
        Defaults {
            manager: manager.clone(),
            user_tokens,
            // A federated zone's meshes come from global.
            mesh: !config.defaults.skip_mesh_creation && !config.is_federated_zone(),
            admin_token: config.api_server.authn.tokens.bootstrap_admin_token,
            zone_tokens: (config.mode != crate::config::Mode::Zone)
                .then(|| kuma_ca::zone_token::ZoneTokens::issuing(manager.clone())),
            api_port: config.api_server.http.port,
        }
    }

    pub(crate) async fn ensure(&self) -> Result<(), StartError> {
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
        // Global sends zones the key's public half before any zone token is issued.
        if let Some(zone_tokens) = &self.zone_tokens
            && zone_tokens.ensure_signing_key().await?
        {
            tracing::info!(
                "zone-token signing key generated and stored as the global secret {:?}",
                kuma_ca::signing_key::secret_name(
                    kuma_ca::zone_token::SIGNING_KEY_PREFIX,
                    kuma_ca::signing_key::DEFAULT_KEY_ID
                ),
            );
        }
        Ok(())
    }
}

/// Runs the leader-only jobs whenever this instance becomes leader, and reports leadership.
pub(crate) async fn leader_jobs(
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
                tracing::warn!(error = %kuma_core::errors::Chain(&e), "leader job `defaults` failed; retried at the next leadership");
            }
        } else if !now && was {
            tracing::info!("this instance is no longer the leader");
        }
        was = now;
    }
}

/// DNS: the leader allocates VIPs (with `vips`, else from `dnsServer.CIDR`), every instance
/// serves the zone from the stored tables on `(interface, port)`, UDP and TCP.
pub(crate) async fn start_dns(
    config: &Config,
    (interface, port): &(String, u16),
    manager: &ResourceManager,
    vips: Option<Arc<dyn VipAllocator>>,
    (leader, shutdown, background): (
        &watch::Receiver<bool>,
        &watch::Sender<bool>,
        &mut serve::Servers,
    ),
) -> Result<SocketAddr, StartError> {
    let d = &config.dns_server;
    let vips = match vips {
        Some(vips) => vips,
        None => Arc::new(kuma_dns::vips::CidrVipAllocator::new(&d.cidr).map_err(StartError::Dns)?),
    };
    if d.service_vip_enabled {
        background
            .0
            .push(tokio::spawn(kuma_dns::jobs::allocate_vips(
                manager.clone(),
                kuma_dns::vips::VipTables::new(manager.clone(), vips),
                config.multizone.zone.name.clone(),
                leader.clone(),
            )));
    }
    // Stored VIPs are answered from the first query on.
    let zone = kuma_dns::jobs::build_zone(manager, &d.domain, d.ttl).await;
    let server = kuma_dns::server::DnsServer::new(zone);
    let addr = format!("{interface}:{port}");
    let parsed: SocketAddr = addr.parse().map_err(|_| StartError::Bind {
        addr: format!("{addr} (DNS)"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address"),
    })?;
    let bound = server
        .bind(parsed, shutdown.subscribe())
        .await
        .map_err(|source| StartError::Bind {
            addr: format!("{addr} (DNS)"),
            source,
        })?;
    background.0.push(tokio::spawn(kuma_dns::jobs::follow_vips(
        manager.clone(),
        server,
        d.domain.clone(),
        d.ttl,
    )));
    Ok(bound)
}

/// MADS: every instance serves the assignments of its store.
pub(crate) fn start_mads(
    manager: &ResourceManager,
    metrics: &Arc<metrics::Metrics>,
    shutdown: &watch::Sender<bool>,
    background: &mut serve::Servers,
) -> kuma_xds::mads::Mads {
    let held = metrics.mads_held.clone();
    let mads = kuma_xds::mads::Mads::new()
        .with_shutdown(shutdown.subscribe())
        .with_held_observer(move |delta| {
            held.inc_by(delta);
        });
    background.0.push(tokio::spawn(kuma_xds::mads::follow(
        manager.clone(),
        mads.clone(),
    )));
    mads
}

/// `/ready`, `/healthy` and `/metrics`.
pub(crate) fn diagnostics_router(
    readiness: &Arc<kuma_api::diagnostics::Readiness>,
    metrics: &Arc<metrics::Metrics>,
) -> axum::Router {
    let metrics = metrics.clone();
    kuma_api::diagnostics::router(readiness.clone()).route(
        "/metrics",
        get(
            move |headers: axum::http::HeaderMap| async move { metrics::serve(&metrics, &headers) },
        ),
    )
}

/// What the HTTP API's routers share.
pub(crate) struct ApiParts {
    config: Arc<Config>,
    manager: ResourceManager,
    cache: Arc<SnapshotCache>,
    metrics: Arc<metrics::Metrics>,
    user_tokens: Arc<kuma_ca::user_token::UserTokens>,
    token_issuer: Arc<dyn kuma_api::tokens::DataplaneTokenIssuer>,
    /// Global and standalone issue zone tokens; zones do not.
    zone_token_issuer: Option<Arc<dyn kuma_api::tokens::ZoneTokenIssuer>>,
    info: kuma_api::ServerInfo,
    extra: axum::Router,
}

impl ApiParts {
    pub(crate) fn new(
        config: Arc<Config>,
        manager: &ResourceManager,
        cache: &Arc<SnapshotCache>,
        metrics: &Arc<metrics::Metrics>,
        extra: axum::Router,
        (info, user_tokens): (kuma_api::ServerInfo, Arc<kuma_ca::user_token::UserTokens>),
    ) -> Self {
        ApiParts {
            user_tokens,
            token_issuer: Arc::new(auth::DataplaneTokenIssuer(
                kuma_ca::dataplane_token::DataplaneTokens::new(manager.clone()),
            )),
            zone_token_issuer: (config.mode != crate::config::Mode::Zone).then(|| {
                Arc::new(auth::ZoneTokenIssuer(
                    kuma_ca::zone_token::ZoneTokens::issuing(manager.clone()),
                )) as Arc<dyn kuma_api::tokens::ZoneTokenIssuer>
            }),
            config,
            manager: manager.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            info,
            extra,
        }
    }

    fn state(
        &self,
        read_only: bool,
        tokens: bool,
        catalog: Option<kuma_api::catalog::Catalog>,
    ) -> Arc<kuma_api::ApiState> {
        let api = &self.config.api_server;
        let dataplane_tokens = tokens.then(|| self.token_issuer.clone());
        let zone_tokens = self.zone_token_issuer.clone().filter(|_| tokens);
        Arc::new(kuma_api::ApiState {
            config: crate::masked_config(&self.config),
            read_only,
            localhost_is_admin: api.authn.localhost_is_admin,
            tokens: Some(Arc::new(auth::TokenAuthenticator(self.user_tokens.clone()))),
            proxy_configs: Some(Arc::new(inspect::CacheInspector(self.cache.clone()))),
            dataplane_tokens,
            zone_tokens,
            catalog,
            access: self.config.access.static_access.clone(),
            federation: federation(&self.config),
            ..kuma_api::ApiState::new(self.manager.clone(), self.info.clone())
        })
    }

    fn counted(&self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(
            self.metrics.clone(),
            metrics::count_api_requests,
        ))
    }

    /// The API (and GUI) as `listener` serves it, with the embedder's routes beside it.
    pub(crate) fn router(
        &self,
        read_only: bool,
        tokens: bool,
        catalog: Option<kuma_api::catalog::Catalog>,
        listener: &Listener,
    ) -> Result<axum::Router, StartError> {
        let api = kuma_api::router(self.state(read_only, tokens, catalog));
        let extra = self.extra.clone();
        // axum refuses overlapping routes by panicking: say which listener, and stop.
        let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api.merge(extra)))
            .map_err(|_| {
                StartError::Unsupported(format!(
                    "the routes added with ControlPlaneBuilder::routes overlap the API's on {}",
                    listener.name
                ))
            })?;
        let scheme = match listener.tls {
            Tls::Plain => "http",
            Tls::Files { .. } => "https",
        };
        Ok(self
            .counted(merged)
            .layer(axum::Extension(kuma_api::Scheme(scheme))))
    }

    /// Tokens and secrets (the split layout's admin server).
    pub(crate) fn admin_router(&self) -> axum::Router {
        let read_only = self.config.api_server.read_only;
        self.counted(kuma_api::admin_router(self.state(read_only, true, None)))
    }
}

/// Every part a listener may route to.
pub(crate) struct Routes<'a> {
    pub(crate) config: &'a Config,
    pub(crate) layout: &'a Layout,
    pub(crate) dp: &'a DataPlaneSide,
    pub(crate) api: ApiParts,
    pub(crate) mads: Option<kuma_xds::mads::Mads>,
    pub(crate) readiness: &'a Arc<kuma_api::diagnostics::Readiness>,
    pub(crate) metrics: &'a Arc<metrics::Metrics>,
    pub(crate) certificates: &'a Certificates,
    /// Global's KDS server (global mode only).
    pub(crate) kds: Option<kuma_kds::global::GlobalKds>,
}

impl Routes<'_> {
    /// The routes of every service `listener` serves, merged; `bound` holds where the
    /// listeners before it listen.
    pub(crate) fn of(
        &self,
        listener: &Listener,
        bound: &BTreeMap<&'static str, SocketAddr>,
    ) -> Result<axum::Router, StartError> {
        let mut router = axum::Router::new();
        for service in &listener.services {
            router = router.merge(match *service {
                Service::Diagnostics => diagnostics_router(self.readiness, self.metrics),
                Service::Ads => self.dp.ads_router(self.layout),
                Service::Sds => self.dp.sds_router(),
                Service::Bootstrap => {
                    self.dp
                        .bootstrap_router(self.config, self.layout, bound, self.certificates)
                }
                Service::Api {
                    read_only,
                    tokens,
                    catalog,
                } => {
                    let catalog = catalog.then(|| self::catalog(self.layout, bound));
                    self.api.router(read_only, tokens, catalog, listener)?
                }
                Service::Admin => self.api.admin_router(),
                Service::Mads => {
                    let timeout = &self
                        .config
                        .monitoring_assignment_server
                        .default_fetch_timeout;
                    match &self.mads {
                        Some(mads) => kuma_xds::mads::router(mads.clone(), timeout.get()),
                        None => axum::Router::new(),
                    }
                }
                Service::Admission => kuma_api::admission::router(),
                Service::Kds => match &self.kds {
                    Some(kds) => {
                        let (sync, global) = kds.services();
                        tonic::service::Routes::new(sync)
                            .add_service(global)
                            .into_axum_router()
                    }
                    None => axum::Router::new(),
                },
            });
        }
        Ok(router)
    }
}

/// What a started control plane keeps.
pub(crate) struct Running {
    pub(crate) manager: ResourceManager,
    pub(crate) dp: DataPlaneSide,
    pub(crate) readiness: Arc<kuma_api::diagnostics::Readiness>,
    pub(crate) layout: Layout,
    pub(crate) bound: BTreeMap<&'static str, SocketAddr>,
    pub(crate) dns_addr: Option<SocketAddr>,
    pub(crate) certificates: Certificates,
}
