//! [`ControlPlaneBuilder`]: a control plane from a configuration, with the extension points
//! swapped in, started listener by listener from a [`Layout`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, Mode};
use kuma_ca::mesh_ca::{CaManager, CaManagers};
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::store::ResourceStore;
use kuma_dns::vips::VipAllocator;
use kuma_xds::generate::{GeneratorList, SnapshotGenerator};
use tokio::sync::watch;

use crate::auth::{DataplaneAuthenticator, DataplaneTokenAuthenticator};
use crate::layout::{Layout, Peers, Service};
use crate::parts::{self, ApiParts, Certificates, DataPlaneSide, Defaults, Routes, Running};
use crate::{ControlPlane, StartError, metrics, serve};

/// A control plane to start: the configuration, and whatever replaces what it would choose.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use kuma_cp::Config;
/// use kuma_cp::ControlPlane;
/// use kuma_store::MemoryStore;
/// use kuma_xds::generate::GeneratorList;
///
/// # async fn run() -> Result<(), kuma_cp::StartError> {
/// let cp = ControlPlane::builder(Config::default())
///     .store(Arc::new(MemoryStore::new()))
///     .generator(GeneratorList::kuma_profile())
///     .routes(axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" })))
///     .start()
///     .await?;
/// cp.shutdown().await;
/// # Ok(()) }
/// ```
pub struct ControlPlaneBuilder {
    config: Config,
    layout: Option<Layout>,
    store: Option<Arc<dyn ResourceStore>>,
    generator: Option<Arc<dyn SnapshotGenerator>>,
    vips: Option<Arc<dyn VipAllocator>>,
    cas: CaManagers,
    dp_authenticator: Option<Arc<dyn DataplaneAuthenticator>>,
    routes: axum::Router,
}

impl ControlPlaneBuilder {
    pub(crate) fn new(config: Config) -> Self {
        ControlPlaneBuilder {
            config,
            layout: None,
            store: None,
            generator: None,
            vips: None,
            cas: CaManagers::bundled(),
            dp_authenticator: None,
            routes: axum::Router::new(),
        }
    }

    /// Keeps resources in `store` instead of the one `store.type` names. The instance leads
    /// alone (leader election is the configured PostgreSQL store's).
    pub fn store(mut self, store: Arc<dyn ResourceStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Generates proxies' config with `generator` instead of the Kuma profile, for instance
    /// `GeneratorList::kuma_profile().with(MyGenerator)`.
    pub fn generator(mut self, generator: impl SnapshotGenerator + 'static) -> Self {
        self.generator = Some(Arc::new(generator));
        self
    }

    /// Allocates VIPs with `vips` instead of from `dnsServer.CIDR` in the store.
    pub fn vip_allocator(mut self, vips: Arc<dyn VipAllocator>) -> Self {
        self.vips = Some(vips);
        self
    }

    /// Loads Mesh mTLS backends of type `kind` with `manager`: Meshes naming that type are
    /// accepted (their `conf` checked by the manager) and their CA comes from it.
    pub fn ca_backend(mut self, kind: &str, manager: Arc<dyn CaManager>) -> Self {
        self.cas = self.cas.with(kind, manager);
        self
    }

    /// Checks data-plane proxies' credentials with `authenticator` instead of Kuma's
    /// dataplane tokens (`dpServer.authn.dpProxy.type` must not be `none`).
    pub fn dataplane_authenticator(
        mut self,
        authenticator: Arc<dyn DataplaneAuthenticator>,
    ) -> Self {
        self.dp_authenticator = Some(authenticator);
        self
    }

    /// Serves `routes` beside the HTTP API, on every listener of the API. They must not
    /// repeat one of the API's routes: [`ControlPlaneBuilder::start`] refuses that.
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Listens as `layout` says instead of as the configuration's mode and `portLayout` do.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Starts every component the layout serves; nothing is left listening if one fails.
    pub async fn start(self) -> Result<ControlPlane, StartError> {
        let config = Arc::new(self.config);
        config
            .validate()
            .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;
        let layout = self.layout.unwrap_or_else(|| Layout::from_config(&config));
        let (shutdown, _) = watch::channel(false);
        let budget = serve::ClientBudget::new(config.connections.max_per_client as usize);
        let mut ports = serve::Ports::new(shutdown.subscribe(), budget);
        let metrics = Arc::new(metrics::Metrics::default());
        let (store, leader, mut background) = match self.store {
            Some(store) => (
                store,
                kuma_store::leader::in_process(),
                serve::Servers::default(),
            ),
            None => parts::open_store(&config).await?,
        };
        let options = ManagerOptions {
            zone: (config.mode == Mode::Zone).then(|| config.multizone.zone.name.clone()),
            validation: self.cas.validation(),
        };
        let store = metrics::MeteredStore::new(store, metrics.clone());
        let manager = ResourceManager::new(Arc::new(store), options);
        let certificates = Certificates::load(&config)?;
        let authenticator = (config.dp_server.authn.dp_proxy.kind != "none").then(|| {
            self.dp_authenticator
                .unwrap_or_else(|| Arc::new(DataplaneTokenAuthenticator::new(manager.clone())))
        });
        // Zone proxies: zone tokens, verified with global's public keys on a federated zone.
        let zone_proxies = (config.dp_server.authn.zone_proxy.kind != "none").then(|| {
            let tokens = if config.is_federated_zone() {
                kuma_ca::zone_token::ZoneTokens::federated(manager.clone())
            } else {
                kuma_ca::zone_token::ZoneTokens::issuing(manager.clone())
            };
            crate::auth::ZoneProxyAuthenticator::new(tokens, &config.multizone.zone.name)
        });
        let authenticator = (authenticator, zone_proxies);
        let generator = self
            .generator
            .unwrap_or_else(|| Arc::new(GeneratorList::kuma_profile()));
        let info = parts::server_info(&config);
        let user_tokens = Arc::new(kuma_ca::user_token::UserTokens::new(manager.clone()));
        let dp = DataPlaneSide::start(
            (&config, &layout, &manager, &metrics),
            generator,
            // A federated zone's builtin CAs come from global.
            if config.is_federated_zone() {
                self.cas.federated()
            } else {
                self.cas
            },
            authenticator,
            &info.instance_id,
            &shutdown,
            &mut ports,
        );
        let defaults = Defaults::new(&config, &manager, user_tokens.clone());
        if *leader.borrow() {
            defaults.ensure().await?; // before anything is served
        }
        let dns_addr = match &layout.dns {
            Some(at) => {
                let jobs = (&leader, &shutdown, &mut background);
                Some(parts::start_dns(&config, at, &manager, self.vips, jobs).await?)
            }
            None => None,
        };
        let mads = layout
            .serves(Service::Mads)
            .then(|| parts::start_mads(&manager, &metrics, &shutdown, &mut background));
        // Global makes the meshes' builtin CAs, which zones receive.
        if config.mode == Mode::Global {
            let cas = crate::multizone::keep_builtin_cas(
                manager.clone(),
                config.mtls.key_type,
                leader.clone(),
            );
            background.0.push(tokio::spawn(cas));
        }
        let kds = (config.mode == Mode::Global).then(|| {
            crate::multizone::start_global(
                &config,
                manager.store(),
                &info.instance_id,
                &mut background,
            )
        });
        if config.mode == Mode::Zone
            && let Some(settings) = crate::multizone::zone_settings(&config, &info.instance_id)?
        {
            let store = manager.store().clone();
            let zone = crate::multizone::zone_while_leading(settings, store, leader.clone());
            background.0.push(tokio::spawn(zone));
        }
        // Zone ingresses registered here list what other zones may reach through them.
        if layout.serves(Service::Ads) {
            let updater = crate::ingress::keep_available_services(
                manager.clone(),
                config.multizone.zone.name.clone(),
                config.multizone.zone.ingress_update_interval.get(),
                config.experimental.ingress_tag_filters.clone(),
                leader.clone(),
            );
            background.0.push(tokio::spawn(updater));
        }
        let leading = parts::leader_jobs(leader, defaults, metrics.clone());
        background.0.push(tokio::spawn(leading));
        let identity = (info, user_tokens);
        let api = ApiParts::new(
            config.clone(),
            &manager,
            &dp.cache,
            &metrics,
            self.routes,
            identity,
        );
        let readiness = Arc::new(kuma_api::diagnostics::Readiness::default());
        let routes = Routes {
            config: &config,
            layout: &layout,
            dp: &dp,
            api,
            mads,
            readiness: &readiness,
            metrics: &metrics,
            certificates: &certificates,
            kds,
        };
        let mut bound = BTreeMap::new();
        for listener in &layout.listeners {
            let router = routes.of(listener, &bound)?;
            let tls = certificates.for_listener(&listener.tls)?;
            let limits = parts::limits(&config, listener.peers == Peers::Proxies);
            let addr = ports.listen(listener, tls, limits, router).await?;
            tracing::info!(listener = listener.name, %addr, "listening");
            bound.insert(listener.name, addr);
        }
        readiness.set(true);
        let running = Running {
            manager,
            dp,
            readiness,
            layout,
            bound,
            dns_addr,
            certificates,
        };
        Ok(ControlPlane::new(
            running, shutdown, ports, background, metrics,
        ))
    }
}
