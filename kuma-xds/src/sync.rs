//! Event-driven config generation: store changes reach the affected proxies only.
//!
//! The reconciler listens to the store's change stream and folds the changes arriving within a
//! short debounce into one batch. Per mesh, a batch regenerates:
//! - every proxy of the mesh when the Mesh, a policy, any other mesh-scoped resource or the
//!   mesh's VIP table (the Config `kuma-<mesh>-dns-vips`) changed;
//! - when only Dataplanes changed, those Dataplanes' own proxies and the proxies whose last
//!   snapshot depends on a service the changed Dataplanes provide, before or after the change
//!   (see [`Dependencies`]); the rest of the mesh is not regenerated at all. A proxy selected
//!   only for what it depends on keeps its own resources and gets its view's new outbounds
//!   ([`SnapshotGenerator::regenerate_outbounds`]).
//!
//! Between batches it keeps each mesh's Dataplanes indexed ([`MeshIndex`]) and the mesh-wide
//! inputs (Mesh, CA, policies prepared for matching, VIPs): a batch reads from the store the
//! changed Dataplanes alone, and the mesh-wide inputs only on a mesh-wide change.
//!
//! Only connected proxies are generated ([`ProxyRegistry::connected`]): a Dataplane whose proxy
//! has no stream costs nothing, is generated when its proxy connects, and its snapshot is
//! dropped when the proxy leaves.
//!
//! In a mesh with mTLS, each proxy gets its workload certificate from [`Identities`]; the
//! reconciler also wakes up when a certificate is due for renewal and regenerates its proxy.
//!
//! The cache ignores snapshots whose content did not change, so proxies whose config is the
//! same receive nothing. If the reconciler falls behind the stream, it regenerates everything.
//!
//! What it needs from the rest of the control plane comes through small traits: [`Vips`] (the
//! services' virtual IPs and which store changes move them) and [`SyncObserver`] (generation
//! times and snapshots set, for metrics). Mesh CAs come from `kuma-ca`'s CA managers.

/// The virtual IPs of each mesh's services, for transparent proxies' outbounds. The control
/// plane's implementation reads Kuma's VIP tables (`kuma-dns`).
#[async_trait::async_trait]
pub trait Vips: Send + Sync + 'static {
    /// Service name to VIP, for the services of `mesh` that have one.
    async fn service_vips(&self, mesh: &str) -> BTreeMap<String, std::net::Ipv4Addr>;

    /// The hosts of `mesh`'s external services that have VIPs (none by default).
    async fn host_vips(&self, _mesh: &str) -> Vec<ExternalHost> {
        Vec::new()
    }

    /// Both of the above, as the reconciler asks for them; override it to read a table once.
    async fn mesh_vips(
        &self,
        mesh: &str,
    ) -> (BTreeMap<String, std::net::Ipv4Addr>, Vec<ExternalHost>) {
        (self.service_vips(mesh).await, self.host_vips(mesh).await)
    }

    /// The mesh whose VIPs a change of `key` may have moved (`None`: the change is not about
    /// VIPs).
    fn changed_mesh(&self, key: &ResourceKey) -> Option<String>;
}

/// No VIPs: proxies get only their explicit outbounds.
pub struct NoVips;

#[async_trait::async_trait]
impl Vips for NoVips {
    async fn service_vips(&self, _: &str) -> BTreeMap<String, std::net::Ipv4Addr> {
        BTreeMap::new()
    }

    fn changed_mesh(&self, _: &ResourceKey) -> Option<String> {
        None
    }
}

/// Hears what the reconciler does, for metrics. Every method has an empty default.
pub trait SyncObserver: Send + Sync + 'static {
    /// A proxy's config was generated; it took `took`.
    fn generated(&self, _node_id: &str, _took: Duration) {}

    /// A new snapshot was set for `node_id` (the first change behind it arrived at `since`),
    /// with its version of each type.
    fn snapshot_set(&self, _node_id: &str, _since: Instant, _versions: Vec<(String, String)>) {}
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::generate::external::{ExternalHost, ExternalServices};
use crate::generate::{
    Dependencies, MeshContext, MeshIndex, ProxyContext, ReachGraph, SharedBuilds,
    SnapshotGenerator, WorkloadCertificate, node_id,
};
use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Scope};
use kuma_core::rules::MeshPolicies;
use kuma_core::store::{ListQuery, StoreError};
use xds_server::cache::{Snapshot, SnapshotCache};

use crate::identities::{Identities, MeshAuthority};
use crate::lifecycle::{ProxyChange, ProxyRegistry};
use kuma_ca::config::MtlsConfig;
use kuma_core::watch::{Batch, StoreWatch};

/// What a batch of changes asks of one mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Something every proxy of the mesh may be generated from changed (the Mesh, a policy, a
    /// secret, the VIP table): the mesh-wide inputs are read again and every proxy is
    /// regenerated.
    pub everything: bool,
    /// These Dataplanes (by name) changed: they are read again, and their proxies and the
    /// proxies that depend on what they provide are regenerated.
    pub dataplanes: BTreeSet<String>,
    /// These proxies need their config (they connected, or reported new metadata); their
    /// Dataplanes did not change, so no other proxy is regenerated.
    pub proxies: BTreeSet<String>,
    /// These ZoneEgresses (by name) changed or need their config (zone proxies only: mesh
    /// `""`).
    pub zone_egresses: BTreeSet<String>,
}

impl Dirty {
    /// A mesh-wide change.
    pub fn everything() -> Self {
        Dirty {
            everything: true,
            ..Dirty::default()
        }
    }

    /// Changed Dataplanes.
    pub fn dataplanes(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Dirty {
            dataplanes: names.into_iter().map(Into::into).collect(),
            ..Dirty::default()
        }
    }

    /// Proxies that need their config.
    pub fn proxies(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Dirty {
            proxies: names.into_iter().map(Into::into).collect(),
            ..Dirty::default()
        }
    }

    /// Adds what `change` asks for.
    pub fn add(&mut self, change: Dirty) {
        self.everything |= change.everything;
        self.dataplanes.extend(change.dataplanes);
        self.proxies.extend(change.proxies);
        self.zone_egresses.extend(change.zone_egresses);
    }

    /// ZoneEgresses that changed or need their config.
    pub fn zone_egresses(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Dirty {
            zone_egresses: names.into_iter().map(Into::into).collect(),
            ..Dirty::default()
        }
    }
}

/// What the reconciler remembers of a mesh between batches, so that a batch reads from the
/// store only what changed.
#[derive(Default)]
struct MeshState {
    /// The mesh's Dataplanes, kept up to date Dataplane by Dataplane (`None`: to be listed
    /// again, after a failed read).
    index: Option<MeshIndex>,
    /// The mesh-wide inputs, read again on mesh-wide changes (`None`: not read yet, or the
    /// last read failed).
    wide: Option<MeshWide>,
    /// The automatic reachable-services graph and the index shape it was built for; dropped
    /// whenever the mesh-wide inputs are read again.
    reach: Option<(u64, Arc<ReachGraph>)>,
    /// What each proxy's snapshot (by Dataplane name) was generated from.
    dependencies: BTreeMap<String, Dependencies>,
    /// What the last batches built once for many proxies, from the current inputs.
    builds: Arc<SharedBuilds>,
    /// The remote-ingress version, the mTLS state and (when the mesh routes through the zone
    /// egress) the local-egress version the index's remote endpoints were made from.
    remote_applied: Option<(u64, bool, Option<u64>)>,
}

/// The inputs every proxy of a mesh is generated from, besides the Dataplanes.
struct MeshWide {
    spec: MeshSpec,
    authority: Option<MeshAuthority>,
    /// Every policy of the mesh, in the store's order.
    policies: Vec<Resource>,
    /// `policies` prepared for matching: rebuilt only when one of them changed.
    engine: Arc<MeshPolicies>,
    vips: Arc<BTreeMap<String, std::net::Ipv4Addr>>,
    /// The mesh's ExternalServices, their TLS data sources read.
    external: Arc<ExternalServices>,
    /// The hosts of its external services with VIPs.
    hosts: Arc<Vec<ExternalHost>>,
}

/// Why a batch could not be applied to a mesh (the proxies keep their snapshots).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot read the mesh's resources")]
    Store(#[from] kuma_core::manager::ManagerError),
    #[error("cannot load the mesh CA")]
    Ca(#[from] kuma_ca::mesh_ca::MeshCaError),
}

/// Keeps the snapshot cache in step with the store.
pub struct Reconciler {
    manager: ResourceManager,
    cache: Arc<SnapshotCache>,
    generator: Arc<dyn SnapshotGenerator>,
    registry: Arc<ProxyRegistry>,
    debounce: Duration,
    meshes: BTreeMap<String, MeshState>,
    observer: Option<Arc<dyn SyncObserver>>,
    vips: Arc<dyn Vips>,
    /// When the first change of the batch being applied arrived.
    changed_at: Instant,
    /// Mesh CAs and workload certificates.
    identities: Identities,
    /// The port of VIP outbounds.
    vip_port: u32,
    /// The DNS domain of VIPs.
    vip_domain: String,
    /// Trim transparent proxies' outbounds to what permissions admit (under mTLS).
    auto_reachable_services: bool,
    /// This control plane's zone (what an ingress offering nothing answers with).
    zone: String,
    /// Connected zone ingresses, by name, with their ZoneIngress (`None`: not read yet, or
    /// gone).
    ingresses: BTreeMap<String, Option<Resource>>,
    /// Other zones' ingresses, by name: where services of other zones are reached (`None`:
    /// not listed yet).
    remote_ingresses: Option<BTreeMap<String, Resource>>,
    /// Bumped whenever `remote_ingresses` is listed or changes: a mesh whose remote endpoints
    /// were made from this version (with mTLS as it is) needs nothing new.
    remote_version: u64,
    /// Connected zone egresses, by name, with their ZoneEgress (`None`: not read yet, or gone).
    egresses: BTreeMap<String, Option<Resource>>,
    /// This zone's egresses, by name (`None`: not listed yet): where meshes routing through
    /// the zone egress send external traffic.
    local_egresses: Option<BTreeMap<String, Resource>>,
    /// Bumped whenever `local_egresses` is listed again or changes.
    egress_version: u64,
    /// The meshes the store had at the last look (startup, a resync, each mesh-wide read):
    /// where a connecting proxy's Dataplane is looked for, without a store read per proxy.
    known_meshes: BTreeSet<String>,
}

impl Reconciler {
    /// A reconciler writing into `cache`.
    pub fn new(
        manager: ResourceManager,
        cache: Arc<SnapshotCache>,
        generator: Arc<dyn SnapshotGenerator>,
        registry: Arc<ProxyRegistry>,
        debounce: Duration,
    ) -> Self {
        Reconciler {
            cache,
            generator,
            registry,
            debounce,
            meshes: BTreeMap::new(),
            identities: Identities::new(manager.clone(), &MtlsConfig::default()),
            manager,
            observer: None,
            vips: Arc::new(NoVips),
            changed_at: Instant::now(),
            vip_port: 80,
            vip_domain: "mesh".into(),
            auto_reachable_services: false,
            zone: String::new(),
            ingresses: BTreeMap::new(),
            remote_ingresses: None,
            remote_version: 0,
            egresses: BTreeMap::new(),
            local_egresses: None,
            egress_version: 0,
            known_meshes: BTreeSet::new(),
        }
    }

    /// In meshes with mTLS, gives transparent proxies that list no `reachableServices`
    /// outbounds only for the services whose MeshTrafficPermissions can admit them
    /// (`experimental.autoReachableServices`; see [`crate::generate::ReachGraph`]).
    pub fn with_auto_reachable_services(mut self, enabled: bool) -> Self {
        self.auto_reachable_services = enabled;
        self
    }

    /// Serves VIP outbounds on `port` (`dnsServer.serviceVipPort`, 80 by default) and names
    /// VIPs in `domain` (`dnsServer.domain`, `mesh`).
    pub fn with_vips_served(mut self, port: u32, domain: &str) -> Self {
        self.vip_port = port;
        self.vip_domain = domain.to_string();
        self
    }

    /// Issues certificates as `config` says (key type, SAN layout).
    pub fn with_mtls_config(mut self, config: &MtlsConfig) -> Self {
        self.identities = Identities::new(self.manager.clone(), config);
        self
    }

    /// Loads mesh CAs with `cas` (by backend type). Call after [`Self::with_mtls_config`].
    pub fn with_ca_managers(mut self, cas: kuma_ca::mesh_ca::CaManagers) -> Self {
        self.identities.set_ca_managers(cas);
        self
    }

    /// Proxies fetch their secrets through the bootstrap cluster `cluster` (the split
    /// layout's SDS port) instead of over ADS. Call after [`Self::with_mtls_config`].
    pub fn with_sds_cluster(mut self, cluster: &str) -> Self {
        self.identities.set_sds_cluster(cluster);
        self
    }

    /// Names the control plane's zone (`multizone.zone.name`), which zone ingresses report.
    pub fn with_zone(mut self, zone: &str) -> Self {
        self.zone = zone.to_string();
        self
    }

    /// Tells `observer` of generations and snapshots set.
    pub fn with_observer(mut self, observer: Arc<dyn SyncObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Gives transparent proxies outbounds for the VIPs `vips` knows (none by default).
    pub fn with_vips(mut self, vips: Arc<dyn Vips>) -> Self {
        self.vips = vips;
        self
    }

    /// Every mesh of the store and every mesh the reconciler keeps state for; remembered as
    /// the known meshes.
    async fn all_meshes(&mut self) -> BTreeSet<String> {
        let mut meshes: BTreeSet<String> = self.meshes.keys().cloned().collect();
        if let Ok(page) = self.manager.list(&ListQuery::all(ResourceType::Mesh)).await {
            meshes.extend(page.items.into_iter().map(|m| m.meta.name));
        }
        self.known_meshes.clone_from(&meshes);
        meshes
    }

    /// Regenerates what `dirty` asks for in `mesh`; returns how many proxies were generated.
    ///
    /// Reads from the store only what changed: the changed Dataplanes one by one (the whole
    /// mesh's only the first time, or after a failed read), and the Mesh, its CA, its policies
    /// and its VIPs only on a mesh-wide change. The policy engine is rebuilt only when a policy
    /// did change, and the services index only for the services the changed Dataplanes touch.
    pub async fn sync_mesh(&mut self, mesh: &str, dirty: &Dirty) -> usize {
        let mut state = self.meshes.remove(mesh).unwrap_or_default();
        let generated = match self.sync_state(mesh, dirty, &mut state).await {
            Ok(generated) => generated,
            Err(e) => {
                tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "keeping current snapshots");
                0
            }
        };
        // Zone proxies read every mesh: kept while one is connected.
        if !state.dependencies.is_empty() || !self.ingresses.is_empty() || !self.egresses.is_empty()
        {
            self.meshes.insert(mesh.to_string(), state);
        }
        generated
    }

    /// The endpoints of services of `mesh` in other zones, as Kuma makes them: per remote
    /// zone ingress with an advertised address (one per address:port, once it lists
    /// anything), per service it lists in `mesh`, an endpoint at that address weighted by the
    /// instances behind it, tagged as the ingress lists it (`kuma.io/zone` names the zone).
    async fn remote_endpoints(
        &mut self,
        mesh: &str,
    ) -> Result<BTreeMap<String, Vec<crate::generate::Endpoint>>, ReadError> {
        use kuma_core::model::common::SERVICE_TAG;
        use kuma_core::model::zone::ZoneIngressSpec;
        let ingresses = match &self.remote_ingresses {
            Some(known) => known,
            None => {
                let query = ListQuery::all(ResourceType::ZoneIngress);
                let page = self.manager.list(&query).await?;
                let zone = self.zone.clone();
                self.remote_version += 1;
                self.remote_ingresses.insert(
                    page.items
                        .into_iter()
                        .filter(|r| is_remote_ingress(r, &zone))
                        .map(|r| (r.meta.name.clone(), r))
                        .collect(),
                )
            }
        };
        let mut endpoints: BTreeMap<String, Vec<crate::generate::Endpoint>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for spec in ingresses
            .values()
            .filter_map(|r| r.spec_as::<ZoneIngressSpec>())
        {
            let Some(net) = &spec.networking else {
                continue;
            };
            let (Some(address), Some(port)) = (
                net.advertised_address.as_deref().filter(|a| !a.is_empty()),
                net.advertised_port.filter(|p| *p != 0),
            ) else {
                continue; // not reachable from other zones (yet)
            };
            if spec.available_services.is_empty() || !seen.insert((address, port)) {
                continue;
            }
            for s in &spec.available_services {
                let Some(service) = s.tags.get(SERVICE_TAG) else {
                    continue;
                };
                if s.mesh.as_deref() != Some(mesh) || s.external_service == Some(true) {
                    continue;
                }
                endpoints
                    .entry(service.clone())
                    .or_default()
                    .push(crate::generate::Endpoint {
                        ip: address.to_string(),
                        port,
                        tags: s.tags.clone(),
                        weight: s.instances.unwrap_or(1).max(1),
                    });
            }
        }
        Ok(endpoints)
    }

    /// Takes re-read ZoneEgresses into this zone's list: whether the list moved. On a resync,
    /// or when a read failed (`complete` false) while the list was kept, it is listed again
    /// when next needed, and counts as moved.
    fn take_local_egresses(
        &mut self,
        read: &BTreeMap<String, Option<Resource>>,
        complete: bool,
        resync: bool,
    ) -> bool {
        if resync || (!complete && self.local_egresses.is_some()) {
            self.local_egresses = None;
            self.egress_version += 1;
            return true;
        }
        let Some(known) = self.local_egresses.as_mut() else {
            return false; // listed when first needed
        };
        let mut changed = false;
        for (name, now) in read {
            let now = now.as_ref().filter(|r| is_local_egress(r, &self.zone));
            changed |= match now {
                Some(r) => known
                    .insert(name.clone(), r.clone())
                    .is_none_or(|before| before.spec != r.spec),
                None => known.remove(name).is_some(),
            };
        }
        if changed {
            self.egress_version += 1;
        }
        changed
    }

    /// Where this zone's egresses listen (listed once, then kept up to date).
    async fn zone_egress_addresses(&mut self) -> Result<Arc<Vec<(String, u32)>>, ReadError> {
        use kuma_core::model::zone::ZoneEgressSpec;
        let egresses = match &self.local_egresses {
            Some(known) => known,
            None => {
                let page = self
                    .manager
                    .list(&ListQuery::all(ResourceType::ZoneEgress))
                    .await?;
                let zone = self.zone.clone();
                self.local_egresses.insert(
                    page.items
                        .into_iter()
                        .filter(|r| is_local_egress(r, &zone))
                        .map(|r| (r.meta.name.clone(), r))
                        .collect(),
                )
            }
        };
        let mut addresses: Vec<(String, u32)> = egresses
            .values()
            .filter_map(|r| r.spec_as::<ZoneEgressSpec>()?.networking.as_ref())
            .filter_map(|n| Some((n.address.clone()?, n.port)))
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(Arc::new(addresses))
    }

    /// Regenerates the connected zone egresses (those in `read` with their ZoneEgress as read
    /// again): each serves the external services of every mesh with mTLS, with a certificate
    /// of its own in each (`spiffe://<mesh>/zone-egress`). A mesh whose wide inputs are not
    /// kept yet is read once. Returns how many were generated.
    async fn sync_egresses(&mut self, read: &BTreeMap<String, Option<Resource>>) -> usize {
        use crate::generate::external::ZONE_EGRESS_SERVICE;
        use crate::generate::zone_egress::{EgressMesh, egress_snapshot};
        for (name, now) in read {
            if let Some(slot) = self.egresses.get_mut(name) {
                slot.clone_from(now);
            }
        }
        let meshes = self.known_meshes.clone();
        for mesh in &meshes {
            if self.meshes.get(mesh).is_some_and(|s| s.wide.is_some()) {
                continue;
            }
            match self.read_mesh_wide(mesh, None).await {
                Ok(wide) => self.meshes.entry(mesh.clone()).or_default().wide = Some(wide),
                Err(e) => {
                    tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "cannot read the mesh for zone egresses");
                }
            }
        }
        // Other zones' services, for the meshes that route to them through the egress.
        let mut remote: BTreeMap<String, BTreeMap<String, Vec<crate::generate::Endpoint>>> =
            BTreeMap::new();
        let routing: Vec<String> = self
            .meshes
            .iter()
            .filter(|(_, s)| {
                s.wide
                    .as_ref()
                    .is_some_and(|w| w.authority.is_some() && routes_through_egress(&w.spec))
            })
            .map(|(m, _)| m.clone())
            .collect();
        for mesh in routing {
            match self.remote_endpoints(&mesh).await {
                Ok(endpoints) => {
                    remote.insert(mesh, endpoints);
                }
                Err(e) => {
                    tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "cannot list other zones' ingresses for zone egresses");
                }
            }
        }
        // The egresses' certificates, per (egress, mesh) of a mesh with mTLS and external
        // services.
        let mut certificates: BTreeMap<(String, String), WorkloadCertificate> = BTreeMap::new();
        for (name, resource) in &self.egresses {
            let Some(resource) = resource else {
                continue;
            };
            let stand_in = zone_proxy_stand_in(resource, ZONE_EGRESS_SERVICE);
            for (mesh, state) in &self.meshes {
                let Some(wide) = &state.wide else {
                    continue;
                };
                let Some(authority) = &wide.authority else {
                    continue;
                };
                if wide.external.is_empty() {
                    continue; // other zones' traffic passes through: no certificate needed
                }
                let key = egress_identity_key(name);
                match self
                    .identities
                    .certificate(authority, mesh, &key, &stand_in)
                {
                    Ok(cert) => {
                        certificates.insert((name.clone(), mesh.clone()), cert.clone());
                    }
                    Err(e) => {
                        tracing::warn!(egress = %name, mesh, error = %kuma_core::errors::Chain(&e), "cannot issue the zone egress's certificate; its config leaves the mesh out");
                    }
                }
            }
        }
        let empty = MeshIndex::default();
        let contexts: BTreeMap<&str, MeshContext<'_>> = self
            .meshes
            .iter()
            .filter_map(|(mesh, state)| {
                let wide = state.wide.as_ref()?;
                let authority = wide.authority.as_ref()?;
                let index = state.index.as_ref().unwrap_or(&empty);
                Some((
                    mesh.as_str(),
                    MeshContext::indexed(mesh, index)
                        .with_spec(&wide.spec)
                        .with_policy_engine(wide.engine.clone())
                        .with_external_services(wide.external.clone())
                        .with_mtls(authority.mtls.clone()),
                ))
            })
            .collect();
        let mut generated = 0;
        for (name, resource) in &self.egresses {
            let node = node_id("", name);
            let Some(resource) = resource else {
                self.cache.remove(&node);
                continue;
            };
            let meshes: Vec<EgressMesh<'_>> = contexts
                .iter()
                .map(|(mesh, context)| EgressMesh {
                    context,
                    identity: certificates.get(&(name.clone(), mesh.to_string())),
                    remote: remote.get(*mesh),
                })
                .collect();
            let started = Instant::now();
            let (_, revision) = self.registry.get_revision(&node);
            match egress_snapshot(resource, &meshes) {
                Ok(snapshot) => {
                    generated += 1;
                    self.publish(&node, snapshot, started);
                    self.registry.generated(&node, revision);
                }
                Err(e) => {
                    tracing::warn!(node, error = %kuma_core::errors::Chain(e.as_ref()), "cannot generate the zone egress's config; keeping the current snapshot");
                }
            }
        }
        generated
    }

    /// Reads the zone proxies (ZoneIngresses or ZoneEgresses, `rtype`) named `names` once,
    /// for both this control plane's lists of them and the connected ones: each read one
    /// (`None`: gone); `false` when a read failed.
    async fn read_zone_proxies(
        &self,
        rtype: ResourceType,
        names: &BTreeSet<String>,
    ) -> (BTreeMap<String, Option<Resource>>, bool) {
        let mut read = BTreeMap::new();
        let mut complete = true;
        for name in names {
            let key = ResourceKey::global(rtype, name);
            match self.manager.get(&key).await {
                Ok(r) => {
                    read.insert(name.clone(), Some(r));
                }
                Err(ManagerError::Store(StoreError::NotFound(_))) => {
                    read.insert(name.clone(), None);
                }
                Err(e) => {
                    tracing::warn!(proxy = %name, error = %kuma_core::errors::Chain(&e), "cannot read a {rtype}");
                    complete = false;
                }
            }
        }
        (read, complete)
    }

    /// Takes in re-read ZoneIngresses (`complete`: every read succeeded; otherwise the other
    /// zones' list is listed again when next needed): whether the other zones' ingresses
    /// changed.
    fn take_remote_ingresses(
        &mut self,
        read: &BTreeMap<String, Option<Resource>>,
        complete: bool,
    ) -> bool {
        let Some(known) = self.remote_ingresses.as_mut() else {
            return false; // listed when first needed
        };
        if !complete {
            self.remote_ingresses = None;
            self.remote_version += 1;
            return true;
        }
        let mut changed = false;
        for (name, now) in read {
            let now = now.as_ref().filter(|r| is_remote_ingress(r, &self.zone));
            changed |= match now {
                Some(r) => known
                    .insert(name.clone(), r.clone())
                    .is_none_or(|before| before.meta.version != r.meta.version),
                None => known.remove(name).is_some(),
            };
        }
        if changed {
            self.remote_version += 1;
        }
        changed
    }

    /// Regenerates the connected zone ingresses (those in `read` with their ZoneIngress as
    /// read again; one whose read failed keeps what it had), from the indexes of the meshes
    /// they offer services of (a mesh not indexed yet is listed once, then kept). Returns how
    /// many were generated.
    async fn sync_ingresses(&mut self, read: &BTreeMap<String, Option<Resource>>) -> usize {
        for (name, now) in read {
            if let Some(slot) = self.ingresses.get_mut(name) {
                slot.clone_from(now);
            }
        }
        let mut offered: BTreeSet<String> = BTreeSet::new();
        for r in self.ingresses.values().flatten() {
            if let Some(spec) = r.spec_as() {
                offered.extend(crate::generate::zone_ingress::offered(spec).into_keys());
            }
        }
        for mesh in &offered {
            let state = self.meshes.entry(mesh.clone()).or_default();
            if state.index.is_none() {
                let query = ListQuery::in_mesh(ResourceType::Dataplane, mesh);
                match self.manager.list(&query).await {
                    Ok(page) => state.index = Some(MeshIndex::new(page.items)),
                    Err(e) => {
                        tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "cannot list the mesh's Dataplanes for zone ingresses");
                    }
                }
            }
        }
        let contexts: Vec<MeshContext<'_>> = self
            .meshes
            .iter()
            .filter(|(mesh, _)| offered.contains(*mesh))
            .filter_map(|(mesh, state)| Some(MeshContext::indexed(mesh, state.index.as_ref()?)))
            .collect();
        let by_mesh: BTreeMap<String, &MeshContext<'_>> =
            contexts.iter().map(|c| (c.mesh.to_string(), c)).collect();
        let mut generated = 0;
        for (name, resource) in &self.ingresses {
            let node = node_id("", name);
            let Some(resource) = resource else {
                self.cache.remove(&node);
                continue;
            };
            let started = Instant::now();
            let (_, revision) = self.registry.get_revision(&node);
            let Some(snapshot) = crate::generate::zone_ingress::ingress_snapshot(
                resource, &node, &self.zone, &by_mesh,
            ) else {
                continue;
            };
            generated += 1;
            self.publish(&node, snapshot, started);
            self.registry.generated(&node, revision);
        }
        generated
    }

    /// [`Self::sync_mesh`] with the mesh's state at hand.
    async fn sync_state(
        &mut self,
        mesh: &str,
        dirty: &Dirty,
        state: &mut MeshState,
    ) -> Result<usize, ReadError> {
        // The Dataplanes: the kept index, updated by the changed ones, or the whole mesh.
        let (mut index, listed) = match state.index.take() {
            Some(index) => (index, false),
            None => {
                let query = ListQuery::in_mesh(ResourceType::Dataplane, mesh);
                (MeshIndex::new(self.manager.list(&query).await?.items), true)
            }
        };
        let mut changed = Vec::new();
        if !listed {
            for name in &dirty.dataplanes {
                let key = ResourceKey::new(ResourceType::Dataplane, mesh, name);
                match self.manager.get(&key).await {
                    Ok(r) => changed.push((name.clone(), Some(r))),
                    Err(ManagerError::Store(StoreError::NotFound(_))) => {
                        changed.push((name.clone(), None));
                    }
                    // The index is listed again next time.
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut touched = index.apply(changed);
        state.index = Some(index);
        // The mesh-wide inputs: kept, or read again (after a failed read, they are missing).
        let (wide, reread) = match (dirty.everything, state.wide.take()) {
            (false, Some(wide)) => (wide, false),
            (_, previous) => {
                state.reach = None;
                (self.read_mesh_wide(mesh, previous).await?, true)
            }
        };
        let wide = &*state.wide.insert(wide);
        // Services of other zones, through their ingresses: only under mTLS, which carries
        // the SNI the ingresses route by. Made again only when other zones' ingresses or the
        // mesh's mTLS changed, or the index is new.
        // With `routing.zoneEgress`, they are reached through this zone's egresses, which
        // pass the connections on to the ingresses by SNI.
        let mtls = wide.authority.is_some();
        let through_egress = routes_through_egress(&wide.spec);
        let egresses = if through_egress {
            self.zone_egress_addresses().await?
        } else {
            Arc::default()
        };
        let applied = (
            self.remote_version,
            mtls,
            through_egress.then_some(self.egress_version),
        );
        if listed || state.remote_applied != Some(applied) {
            let remote = if mtls {
                self.remote_endpoints(mesh).await?
            } else {
                BTreeMap::new()
            };
            let remote = if through_egress {
                via_egresses(remote, &egresses)
            } else {
                remote
            };
            let index = state.index.get_or_insert_with(MeshIndex::default);
            touched.extend(index.set_remote(remote));
            state.remote_applied = Some(applied);
        }
        let index = &*state.index.get_or_insert_with(MeshIndex::default);
        let everything = reread || listed;

        // Only connected proxies are generated; a selected one that is not connected (any
        // more) loses the snapshot it may have.
        let selected: Vec<&Resource> = if everything {
            index.dataplanes().collect()
        } else {
            let dependants = state
                .dependencies
                .iter()
                .filter(|(_, d)| !touched.is_empty() && d.touched_by(&touched))
                .map(|(name, _)| name);
            let names: BTreeSet<&String> = dirty
                .proxies
                .iter()
                .chain(&dirty.dataplanes)
                .chain(dependants)
                .collect();
            names
                .into_iter()
                .filter_map(|n| index.dataplane(n))
                .collect()
        };
        let (targets, unconnected): (Vec<&Resource>, Vec<&Resource>) = selected
            .into_iter()
            .partition(|r| self.registry.connected(&node_id(mesh, &r.meta.name)));
        for r in unconnected {
            if state.dependencies.remove(&r.meta.name).is_some() {
                self.cache.remove(&node_id(mesh, &r.meta.name));
            }
        }
        // Proxies whose Dataplane is gone lose their snapshots: of those generated, when the
        // mesh was listed; of the changed Dataplanes, otherwise.
        let candidates: Vec<&String> = if listed {
            state.dependencies.keys().collect()
        } else {
            dirty.dataplanes.iter().collect()
        };
        let gone: Vec<String> = candidates
            .into_iter()
            .filter(|n| index.dataplane(n).is_none())
            .cloned()
            .collect();
        for name in &gone {
            self.cache.remove(&node_id(mesh, name));
            state.dependencies.remove(name);
        }
        if everything || !gone.is_empty() {
            let egresses = &self.egresses;
            self.identities.retain(mesh, |name| {
                wide.authority.is_some()
                    && (index.dataplane(name).is_some()
                        || egress_of_identity(name).is_some_and(|e| egresses.contains_key(e)))
            });
        }

        // Proxies selected only because services their outbounds read changed keep their
        // own resources, laid over their view's new outbounds, unless views may have moved.
        let mut views_moved = false;
        let reach = match &wide.authority {
            Some(_) if self.auto_reachable_services => Some(match &state.reach {
                Some((shape, graph)) if *shape == index.shape() => graph.clone(),
                _ => {
                    views_moved = true;
                    let graph = Arc::new(
                        ReachGraph::new(index, &wide.policies)
                            .with_external_services(&wide.external, &wide.engine),
                    );
                    state.reach = Some((index.shape(), graph.clone()));
                    graph
                }
            }),
            _ => None,
        };
        // What earlier batches built once for many proxies (views' outbounds, DNS records)
        // holds while no service and nothing mesh-wide changed: a batch of proxies connecting
        // builds nothing that is already built. Views of proxies gone since are let go now
        // and then.
        let stale_views = state.builds.outbound_builds() > 2 * state.dependencies.len() + 16;
        if everything || views_moved || !touched.is_empty() || stale_views {
            state.builds = Arc::default();
        }
        let mut mesh_context = MeshContext::indexed(mesh, index)
            .with_spec(&wide.spec)
            .with_policy_engine(wide.engine.clone())
            .with_vips(wide.vips.clone(), self.vip_port)
            .with_vip_domain(&self.vip_domain)
            .with_external_services(wide.external.clone())
            .with_external_hosts(wide.hosts.clone())
            .with_zone_egresses(egresses)
            .with_shared_builds(state.builds.clone());
        if let Some(a) = &wide.authority {
            mesh_context = mesh_context.with_mtls(a.mtls.clone());
        }
        if let Some(graph) = reach {
            mesh_context = mesh_context.with_reach_graph(graph);
        }
        let outbounds_only = |name: &str| {
            !everything
                && !views_moved
                && !dirty.proxies.contains(name)
                && !dirty.dataplanes.contains(name)
        };
        let (relayers, targets): (Vec<&Resource>, Vec<&Resource>) = targets
            .into_iter()
            .partition(|r| outbounds_only(&r.meta.name));
        let mut generated = 0;
        let mut anew = Vec::new();
        for r in relayers {
            let node = node_id(mesh, &r.meta.name);
            let started = Instant::now();
            let relayered = match (self.cache.get(&node), state.dependencies.get(&r.meta.name)) {
                (Some(previous), Some(dependencies)) => {
                    self.generator
                        .regenerate_outbounds(&mesh_context, &previous, dependencies)
                }
                _ => None,
            };
            match relayered {
                Some(Ok((snapshot, dependencies))) => {
                    generated += 1;
                    state.dependencies.insert(r.meta.name.clone(), dependencies);
                    self.publish(&node, snapshot, started);
                }
                Some(Err(e)) => {
                    tracing::warn!(node, error = %kuma_core::errors::Chain(&e), "cannot generate config; keeping the current snapshot");
                    state
                        .dependencies
                        .insert(r.meta.name.clone(), Dependencies::Everything);
                }
                None => anew.push(r),
            }
        }
        let targets: Vec<&Resource> = targets.into_iter().chain(anew).collect();
        if let Some(a) = &wide.authority {
            self.identities.prepare(
                a,
                mesh,
                targets
                    .iter()
                    .filter_map(|r| Some((r.meta.name.as_str(), r.spec_as::<DataplaneSpec>()?))),
            );
        }
        for r in targets {
            let node = node_id(mesh, &r.meta.name);
            let (metadata, revision) = self.registry.get_revision(&node);
            let Some(mut ctx) = ProxyContext::new(&mesh_context, r, metadata) else {
                continue;
            };
            if let Some(a) = &wide.authority {
                match self
                    .identities
                    .certificate(a, mesh, &r.meta.name, ctx.dataplane)
                {
                    Ok(cert) => ctx = ctx.with_identity(cert),
                    Err(e) => {
                        tracing::warn!(node, error = %kuma_core::errors::Chain(&e), "cannot issue a workload certificate; keeping the current snapshot");
                        // Tried again on the next change of any Dataplane.
                        state
                            .dependencies
                            .entry(r.meta.name.clone())
                            .or_insert(Dependencies::Everything);
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let (snapshot, dependencies) = match self.generator.generate_tracked(&ctx) {
                Ok(s) => s,
                Err(e) => {
                    // The proxy keeps the last configuration it accepted.
                    tracing::warn!(node, error = %kuma_core::errors::Chain(&e), "cannot generate config; keeping the current snapshot");
                    state
                        .dependencies
                        .entry(r.meta.name.clone())
                        .or_insert(Dependencies::Everything);
                    continue;
                }
            };
            generated += 1;
            state.dependencies.insert(r.meta.name.clone(), dependencies);
            self.publish(&node, snapshot, started);
            self.registry.generated(&node, revision);
        }
        Ok(generated)
    }

    /// Sets `node`'s new snapshot (generated since `started`), telling the observer.
    fn publish(&self, node: &str, snapshot: Snapshot, started: Instant) {
        let Some(o) = &self.observer else {
            self.cache.set(node, snapshot);
            return;
        };
        o.generated(node, started.elapsed());
        let versions: Vec<(String, String)> = snapshot
            .type_urls()
            .map(|t| (t.to_string(), snapshot.version(t)))
            .collect();
        if self.cache.set(node, snapshot) {
            o.snapshot_set(node, self.changed_at, versions);
        }
    }

    /// Reads the Mesh, its CA, its policies and its VIPs; the policy engine of `previous` is
    /// kept when no policy changed.
    async fn read_mesh_wide(
        &mut self,
        mesh: &str,
        previous: Option<MeshWide>,
    ) -> Result<MeshWide, ReadError> {
        let spec = match self
            .manager
            .get(&ResourceKey::global(ResourceType::Mesh, mesh))
            .await
        {
            Ok(r) => {
                self.known_meshes.insert(mesh.to_string());
                r.spec_as::<MeshSpec>().cloned().unwrap_or_default()
            }
            Err(ManagerError::Store(StoreError::NotFound(_))) => {
                self.known_meshes.remove(mesh);
                MeshSpec::default()
            }
            Err(e) => return Err(e.into()),
        };
        let authority = self.identities.mesh(mesh, &spec).await?;
        let policies = self.manager.mesh_policies(mesh).await?;
        let engine = match previous {
            Some(p) if same_versions(&p.policies, &policies) => p.engine,
            _ => Arc::new(MeshPolicies::new(&policies)),
        };
        let (vips, hosts) = self.vips.mesh_vips(mesh).await;
        let vips = Arc::new(vips);
        let external = self
            .manager
            .list(&ListQuery::in_mesh(ResourceType::ExternalService, mesh))
            .await?;
        let external = Arc::new(ExternalServices::load(&self.manager, mesh, &external.items).await);
        let hosts = Arc::new(hosts);
        Ok(MeshWide {
            hosts,
            spec,
            authority,
            policies,
            engine,
            vips,
            external,
        })
    }

    /// Runs until the store's change stream closes.
    pub async fn run(mut self) {
        let vips = self.vips.clone();
        let mut changes = StoreWatch::new(self.manager.store().as_ref(), move |e| {
            dirt(&e.key, vips.as_ref())
        })
        .with_debounce(self.debounce);
        // Proxies reporting new metadata (a connect, a restart of the control plane) get
        // their Dataplane regenerated as if it had changed.
        let mut reported = Some(self.registry.changes());
        self.changed_at = Instant::now();
        for mesh in self.all_meshes().await {
            self.sync_mesh(&mesh, &Dirty::everything()).await;
        }
        loop {
            let renewal = self.identities.next_renewal().map(|(at, _, _)| at);
            let until_renewal = async {
                match renewal {
                    Some(at) => {
                        // At least a second: a renewal that keeps failing (its mesh's CA
                        // cannot be loaded) is retried once a second, not in a busy loop.
                        let wait = at
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default()
                            .max(Duration::from_secs(1));
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let report = async {
                match reported.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                batch = changes.first() => Wake::Store(batch),
                () = until_renewal => Wake::Renewal,
                r = report => Wake::Proxy(r),
            };
            let mut batch = Batch::default();
            match wake {
                // Certificates are due: their proxies get new ones.
                Wake::Renewal => {
                    for (mesh, names) in self.identities.due(std::time::SystemTime::now()) {
                        let (egresses, proxies): (BTreeSet<String>, BTreeSet<String>) = names
                            .into_iter()
                            .partition(|n| egress_of_identity(n).is_some());
                        let egresses = egresses
                            .iter()
                            .filter_map(|n| egress_of_identity(n).map(str::to_string));
                        let egresses = Dirty::zone_egresses(egresses);
                        if !egresses.zone_egresses.is_empty() {
                            batch.items.push((String::new(), egresses));
                        }
                        if !proxies.is_empty() {
                            batch.items.push((mesh, Dirty::proxies(proxies)));
                        }
                    }
                }
                Wake::Store(Some(first)) => batch = first,
                Wake::Store(None) => return,
                Wake::Proxy(Some(change)) => self.proxy_change(change, &mut batch).await,
                // The registry is gone: no more reports (never a busy loop on a closed channel).
                Wake::Proxy(None) => {
                    reported = None;
                    continue;
                }
            }
            self.changed_at = Instant::now();
            changes.settle(&mut batch).await;
            while let Some(Ok(change)) = reported.as_mut().map(|rx| rx.try_recv()) {
                self.proxy_change(change, &mut batch).await;
            }
            if !batch.items.is_empty() || batch.resync {
                self.sync_batch(batch).await;
            }
        }
    }

    /// Adds what a proxy's coming or going asks for to `batch`; a proxy that left loses its
    /// snapshot at once.
    async fn proxy_change(&mut self, change: ProxyChange, batch: &mut Batch<(String, Dirty)>) {
        match change {
            ProxyChange::Reported {
                rtype: ResourceType::ZoneEgress,
                mesh,
                name,
            } => {
                self.egresses.entry(name.clone()).or_insert(None);
                batch.items.push((mesh, Dirty::zone_egresses([name])));
            }
            ProxyChange::Reported { mesh, name, .. } if mesh.is_empty() => {
                self.ingresses.entry(name.clone()).or_insert(None);
                batch.items.push((mesh, Dirty::proxies([name])));
            }
            ProxyChange::Reported { mesh, name, .. } => {
                batch.items.push((mesh, Dirty::proxies([name])));
            }
            ProxyChange::Connected(node) => {
                // A mesh created since the last look is regenerated whole when its creation
                // is applied, this proxy with it.
                for (mesh, name) in dataplanes_of(&node, &self.known_meshes) {
                    batch.items.push((mesh, Dirty::proxies([name])));
                }
            }
            ProxyChange::Disconnected(node) => {
                self.cache.remove(&node);
                if let Some(name) = node.strip_prefix('.') {
                    self.ingresses.remove(name);
                    self.egresses.remove(name);
                }
                // Only meshes the reconciler keeps state for can hold the proxy's: no store
                // read for a proxy leaving.
                let known: BTreeSet<String> = self.meshes.keys().cloned().collect();
                for (mesh, name) in dataplanes_of(&node, &known) {
                    if let Some(state) = self.meshes.get_mut(&mesh) {
                        state.dependencies.remove(&name);
                    }
                }
            }
        }
    }

    /// Regenerates what `batch` names (every mesh when it asks for a resync).
    async fn sync_batch(&mut self, batch: Batch<(String, Dirty)>) {
        let mut dirty: BTreeMap<String, Dirty> = BTreeMap::new();
        if batch.resync {
            // Changes were missed: every mesh's Dataplanes are listed again.
            for state in self.meshes.values_mut() {
                state.index = None;
            }
            for mesh in self.all_meshes().await {
                dirty.insert(mesh, Dirty::everything());
            }
        }
        for (mesh, d) in batch.items {
            match dirty.get_mut(&mesh) {
                Some(known) => known.add(d),
                None => {
                    dirty.insert(mesh, d);
                }
            }
        }
        // Zone proxies (mesh ""): the changed ZoneIngresses are read again; connected
        // ingresses are regenerated after any Dataplane change (they forward to every mesh).
        let zone_proxies = dirty.remove("").unwrap_or_default();
        if batch.resync {
            self.remote_ingresses = None;
            self.remote_version += 1;
        }
        // The changed ZoneIngresses, and on a resync the connected ones, each read once.
        let mut names: BTreeSet<String> = zone_proxies
            .dataplanes
            .iter()
            .chain(&zone_proxies.proxies)
            .cloned()
            .collect();
        if batch.resync {
            names.extend(self.ingresses.keys().cloned());
        }
        names.retain(|n| self.remote_ingresses.is_some() || self.ingresses.contains_key(n));
        let (read, complete) = self
            .read_zone_proxies(ResourceType::ZoneIngress, &names)
            .await;
        // Other zones' ingresses moved: every mesh kept looks at its remote endpoints again
        // (only the services they change are regenerated).
        let remote_moved = self.take_remote_ingresses(&read, complete);
        if remote_moved {
            for mesh in self.meshes.keys() {
                dirty.entry(mesh.clone()).or_default();
            }
        }
        // The changed ZoneEgresses, and on a resync the connected ones, each read once (those
        // the reconciler keeps: connected ones, and any while this zone's list is kept). The
        // connected ones are generated again; when this zone's egresses moved, so are the
        // meshes that route through them.
        let mut names = zone_proxies.zone_egresses.clone();
        if batch.resync {
            names.extend(self.egresses.keys().cloned());
        }
        names.retain(|n| self.local_egresses.is_some() || self.egresses.contains_key(n));
        let (egresses_read, complete) = self
            .read_zone_proxies(ResourceType::ZoneEgress, &names)
            .await;
        if self.take_local_egresses(&egresses_read, complete, batch.resync) {
            for (mesh, state) in &self.meshes {
                if state
                    .wide
                    .as_ref()
                    .is_some_and(|w| routes_through_egress(&w.spec))
                {
                    dirty.entry(mesh.clone()).or_default().everything = true;
                }
            }
        }
        let meshes_changed = !dirty.is_empty();
        let wide_changed = dirty.values().any(|d| d.everything);
        for (mesh, d) in dirty {
            self.sync_mesh(&mesh, &d).await;
        }
        let ingress_proxies = Dirty {
            zone_egresses: BTreeSet::new(),
            ..zone_proxies.clone()
        };
        if !self.ingresses.is_empty() && (meshes_changed || ingress_proxies != Dirty::default()) {
            self.sync_ingresses(&read).await;
        }
        if !self.egresses.is_empty()
            && (wide_changed
                || remote_moved
                || !zone_proxies.zone_egresses.is_empty()
                || batch.resync)
        {
            self.sync_egresses(&egresses_read).await;
        }
    }
}

/// What woke the reconciler up.
enum Wake {
    /// Store changes to act on (`None`: the store is gone).
    Store(Option<Batch<(String, Dirty)>>),
    /// A workload certificate is due for renewal.
    Renewal,
    /// A proxy came, reported or left (`None`: the registry is gone).
    Proxy(Option<ProxyChange>),
}

/// Whether `resource` is a ZoneEgress of this zone (`zone`; one without a zone, as a
/// standalone control plane has them, too).
fn is_local_egress(resource: &Resource, zone: &str) -> bool {
    resource
        .spec_as::<kuma_core::model::zone::ZoneEgressSpec>()
        .is_some_and(|s| s.zone.as_deref().is_none_or(|z| z.is_empty() || z == zone))
}

/// Other zones' endpoints (`remote`, at their ingresses) as reached through this zone's
/// `egresses`: each at every egress, with its tags and weight (its zone's locality kept).
/// Without an egress, other zones are out of reach.
fn via_egresses(
    remote: BTreeMap<String, Vec<crate::generate::Endpoint>>,
    egresses: &[(String, u32)],
) -> BTreeMap<String, Vec<crate::generate::Endpoint>> {
    remote
        .into_iter()
        .map(|(service, endpoints)| {
            let through: Vec<crate::generate::Endpoint> = endpoints
                .iter()
                .flat_map(|e| {
                    egresses.iter().map(|(ip, port)| crate::generate::Endpoint {
                        ip: ip.clone(),
                        port: *port,
                        ..e.clone()
                    })
                })
                .collect();
            (service, through)
        })
        .collect()
}

/// Whether a mesh sends external (and cross-zone) traffic through the zone egress.
fn routes_through_egress(spec: &MeshSpec) -> bool {
    spec.routing
        .as_ref()
        .and_then(|r| r.zone_egress)
        .unwrap_or(false)
}

/// The key a zone egress's certificates are kept under (no Dataplane name has a `:`).
fn egress_identity_key(egress: &str) -> String {
    format!("zone-egress:{egress}")
}

/// The zone egress whose certificate key `key` is.
fn egress_of_identity(key: &str) -> Option<&str> {
    key.strip_prefix("zone-egress:")
}

/// A Dataplane that stands for a zone proxy when its certificate is issued: one inbound at
/// its address and port, of `service`.
fn zone_proxy_stand_in(resource: &Resource, service: &str) -> DataplaneSpec {
    let net = resource
        .spec_as::<kuma_core::model::zone::ZoneEgressSpec>()
        .and_then(|s| s.networking.clone())
        .unwrap_or_default();
    let tags = [(
        kuma_core::model::common::SERVICE_TAG.to_string(),
        service.to_string(),
    )];
    crate::generate::context::stand_in_dataplane(
        net.address.as_deref().unwrap_or("127.0.0.1"),
        net.port,
        &tags.into_iter().collect(),
    )
}

/// Whether `resource` is a ZoneIngress of another zone than `zone`.
fn is_remote_ingress(resource: &Resource, zone: &str) -> bool {
    resource
        .spec_as::<kuma_core::model::zone::ZoneIngressSpec>()
        .and_then(|s| s.zone.as_deref())
        .is_some_and(|z| !z.is_empty() && z != zone)
}

/// The (mesh, Dataplane name) pairs `node` may stand for among `meshes` (`<mesh>.<name>`; a
/// mesh name may contain dots, so every mesh that prefixes it).
fn dataplanes_of(node: &str, meshes: &BTreeSet<String>) -> Vec<(String, String)> {
    meshes
        .iter()
        .filter_map(|mesh| {
            let name = node.strip_prefix(mesh.as_str())?.strip_prefix('.')?;
            Some((mesh.clone(), name.to_string()))
        })
        .collect()
}

/// True when `a` and `b` hold the same resources at the same versions.
fn same_versions(a: &[Resource], b: &[Resource]) -> bool {
    fn id(r: &Resource) -> (ResourceType, &str, &kuma_core::resource::Version) {
        (r.rtype(), &r.meta.name, &r.meta.version)
    }
    a.len() == b.len() && a.iter().map(id).eq(b.iter().map(id))
}

/// What a change asks for: its mesh and how much of it to regenerate (`None` for insights,
/// which describe proxies and never feed config generation, and for global types other than
/// Mesh).
fn dirt(key: &ResourceKey, vips: &dyn Vips) -> Option<(String, Dirty)> {
    // A mesh's VIPs shape every transparent proxy of the mesh.
    if let Some(mesh) = vips.changed_mesh(key) {
        return Some((mesh, Dirty::everything()));
    }
    // Zone ingresses and egresses are proxies of no mesh.
    if key.rtype == ResourceType::ZoneIngress {
        return Some((String::new(), Dirty::dataplanes([key.name.clone()])));
    }
    if key.rtype == ResourceType::ZoneEgress {
        return Some((String::new(), Dirty::zone_egresses([key.name.clone()])));
    }
    let mesh = mesh_of(key);
    if mesh.is_empty() {
        return None;
    }
    let dirty = if key.rtype == ResourceType::Dataplane {
        Dirty::dataplanes([key.name.clone()])
    } else {
        Dirty::everything()
    };
    Some((mesh, dirty))
}

/// The mesh a change belongs to (a Mesh's own name for Mesh changes; empty for other global
/// types and for insights).
fn mesh_of(key: &kuma_core::resource::ResourceKey) -> String {
    match (key.rtype, key.rtype.scope()) {
        (ResourceType::DataplaneInsight | ResourceType::ZoneInsight, _) => String::new(),
        (ResourceType::Mesh, _) => key.name.clone(),
        (_, Scope::Mesh) => key.mesh.clone(),
        (_, Scope::Global) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::generate::{GenerateError, GeneratorList};
    use kuma_core::manager::ManagerOptions;
    use kuma_core::resource::parse_yaml;
    use kuma_store::MemoryStore;
    use xds_server::cache::Snapshot;

    /// A registry in which the proxies of `names` (in mesh `default`) are connected.
    fn connected(names: &[&str]) -> Arc<ProxyRegistry> {
        let registry = Arc::new(ProxyRegistry::default());
        for name in names {
            registry.stream_opened(&node_id("default", name));
        }
        registry
    }

    /// A store with the default mesh and `dataplanes`.
    async fn manager_with(dataplanes: impl IntoIterator<Item = Resource>) -> ResourceManager {
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
        manager.ensure_default_mesh().await.unwrap();
        for dp in dataplanes {
            manager.apply(dp).await.unwrap();
        }
        manager
    }

    /// `web`, a transparent proxy.
    fn transparent_web() -> Resource {
        parse_yaml(
            "type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n",
        )
        .unwrap()
    }

    /// A reconciler over `manager` and `cache` that applies every change at once.
    fn undebounced(
        manager: &ResourceManager,
        cache: &Arc<SnapshotCache>,
        generator: Arc<dyn SnapshotGenerator>,
        registry: Arc<ProxyRegistry>,
    ) -> Reconciler {
        Reconciler::new(
            manager.clone(),
            cache.clone(),
            generator,
            registry,
            Duration::ZERO,
        )
    }

    /// `name`'s proxy (mesh `default`) connects, and the reconciler applies what that asks.
    async fn connect(r: &mut Reconciler, registry: &ProxyRegistry, name: &str) {
        let node = node_id("default", name);
        registry.stream_opened(&node);
        let mut batch = Batch::default();
        r.proxy_change(ProxyChange::Connected(node), &mut batch)
            .await;
        r.sync_batch(batch).await;
    }

    /// Stores the resource `yaml` describes.
    async fn apply_yaml(manager: &ResourceManager, yaml: &str) {
        manager.apply(parse_yaml(yaml).unwrap()).await.unwrap();
    }

    /// A VIP for every service of mesh `default`, as the leader's job allocates them.
    async fn allocate_vips(manager: &ResourceManager) {
        let dataplanes = manager
            .list(&ListQuery::in_mesh(ResourceType::Dataplane, "default"))
            .await
            .unwrap()
            .items;
        let cidr = kuma_dns::vips::CidrVipAllocator::new("240.0.0.0/4").unwrap();
        kuma_dns::vips::VipTables::new(manager.clone(), Arc::new(cidr))
            .sync(
                "default",
                &kuma_dns::vips::service_hostnames("default", "", &dataplanes, []),
            )
            .await
            .unwrap();
    }

    /// Kuma's VIP tables in the store (what the control plane plugs in).
    struct StoredVips(ResourceManager);

    #[async_trait::async_trait]
    impl Vips for StoredVips {
        async fn service_vips(&self, mesh: &str) -> BTreeMap<String, std::net::Ipv4Addr> {
            kuma_dns::vips::stored_service_vips(&self.0, mesh)
                .await
                .unwrap()
        }

        fn changed_mesh(&self, key: &ResourceKey) -> Option<String> {
            (key.rtype == ResourceType::Config)
                .then(|| kuma_dns::vips::mesh_of_config(&key.name).map(str::to_string))
                .flatten()
        }
    }

    #[tokio::test]
    async fn automatic_reachable_services_trim_outbounds_under_mtls_only() {
        let web = transparent_web();
        let manager = manager_with([
            web,
            dataplane("backend-1", "10.0.0.2", "backend", &[]),
            dataplane("other-1", "10.0.0.3", "other", &[]),
        ])
        .await;
        apply_yaml(&manager, "type: MeshTrafficPermission\nmesh: default\nname: backend-from-web\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n").await;
        allocate_vips(&manager).await;
        let vips = kuma_dns::vips::stored_service_vips(&manager, "default")
            .await
            .unwrap();
        let cache = Arc::new(SnapshotCache::new());
        let mut r = undebounced(
            &manager,
            &cache,
            Arc::new(GeneratorList::kuma_profile()),
            connected(&["web"]),
        )
        .with_vips(Arc::new(StoredVips(manager.clone())))
        .with_auto_reachable_services(true);
        let outbound_services = |cache: &SnapshotCache| -> BTreeSet<String> {
            let snapshot = cache.get("default.web").unwrap();
            let listeners = snapshot.get(xds_server::types::LISTENER).unwrap();
            vips.iter()
                .filter(|(_, ip)| listeners.contains(&format!("outbound:{ip}:80")))
                .map(|(s, _)| s.clone())
                .collect()
        };
        // Without mTLS nothing is refused: every service keeps its outbound.
        r.sync_mesh("default", &Dirty::everything()).await;
        assert_eq!(
            outbound_services(&cache),
            BTreeSet::from(["backend".into(), "other".into(), "web".into()])
        );
        // Under mTLS, only backend admits web.
        apply_yaml(&manager, "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n").await;
        r.sync_mesh("default", &Dirty::everything()).await;
        assert_eq!(
            outbound_services(&cache),
            BTreeSet::from(["backend".to_string()])
        );
        // A permission for everyone to `other` gives it back.
        apply_yaml(&manager, "type: MeshTrafficPermission\nmesh: default\nname: other-open\nspec:\n  targetRef: {kind: MeshService, name: other}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n").await;
        r.sync_mesh("default", &Dirty::everything()).await;
        assert_eq!(
            outbound_services(&cache),
            BTreeSet::from(["backend".into(), "other".into()])
        );
    }

    #[tokio::test]
    async fn transparent_proxies_get_an_outbound_per_vip() {
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
        manager.ensure_default_mesh().await.unwrap();
        let web = transparent_web();
        manager.apply(web).await.unwrap();
        manager
            .apply(dataplane("backend-1", "10.0.0.2", "backend", &[]))
            .await
            .unwrap();
        allocate_vips(&manager).await;
        // The table's change concerns the whole mesh.
        let vips = StoredVips(manager.clone());
        assert_eq!(
            dirt(
                &ResourceKey::global(ResourceType::Config, "kuma-default-dns-vips"),
                &vips
            ),
            Some(("default".to_string(), Dirty::everything()))
        );
        let cache = Arc::new(SnapshotCache::new());
        let mut r = undebounced(
            &manager,
            &cache,
            Arc::new(GeneratorList::kuma_profile()),
            connected(&["web", "backend-1"]),
        )
        .with_vips_served(8000, "mesh")
        .with_vips(Arc::new(vips));
        r.sync_mesh("default", &Dirty::everything()).await;
        let listeners: Vec<String> = cache
            .get("default.web")
            .unwrap()
            .get(xds_server::types::LISTENER)
            .unwrap()
            .names()
            .map(str::to_string)
            .collect();
        for name in [
            "outbound:240.0.0.1:8000", // backend
            "outbound:240.0.0.2:8000", // web
            "outbound:passthrough:ipv4",
            "inbound:passthrough:ipv4",
        ] {
            assert!(
                listeners.iter().any(|l| l == name),
                "{name} in {listeners:?}"
            );
        }
        // backend-1 is not a transparent proxy: no VIP outbounds.
        let backend = cache.get("default.backend-1").unwrap();
        let listeners = backend.get(xds_server::types::LISTENER).unwrap();
        assert!(!listeners.names().any(|l| l.starts_with("outbound:240.")));
    }

    #[test]
    fn insights_never_mark_a_mesh_dirty() {
        let key = |t, mesh, name| ResourceKey::new(t, mesh, name);
        assert_eq!(mesh_of(&key(ResourceType::Dataplane, "m1", "dp")), "m1");
        assert_eq!(mesh_of(&key(ResourceType::Mesh, "", "m2")), "m2");
        assert_eq!(
            mesh_of(&key(ResourceType::DataplaneInsight, "m1", "dp")),
            ""
        );
        assert_eq!(mesh_of(&key(ResourceType::Zone, "", "z")), "");
    }

    /// Kuma's profile, counting the proxies it generates anew and those whose own resources
    /// it lays over new outbounds.
    struct Counting {
        profile: GeneratorList,
        anew: AtomicUsize,
        relayered: AtomicUsize,
        /// The outbound views built into the shared builds of the last generation's context.
        views: AtomicUsize,
    }

    impl Counting {
        fn new() -> Arc<Self> {
            Arc::new(Counting {
                profile: GeneratorList::kuma_profile(),
                anew: AtomicUsize::new(0),
                relayered: AtomicUsize::new(0),
                views: AtomicUsize::new(0),
            })
        }

        /// (generated anew, relayered).
        fn counts(&self) -> (usize, usize) {
            (
                self.anew.load(Ordering::SeqCst),
                self.relayered.load(Ordering::SeqCst),
            )
        }
    }

    impl SnapshotGenerator for Counting {
        fn generate(&self, ctx: &ProxyContext<'_>) -> Result<Snapshot, GenerateError> {
            self.anew.fetch_add(1, Ordering::SeqCst);
            self.profile.generate(ctx)
        }

        fn generate_tracked(
            &self,
            ctx: &ProxyContext<'_>,
        ) -> Result<(Snapshot, Dependencies), GenerateError> {
            self.anew.fetch_add(1, Ordering::SeqCst);
            let generated = self.profile.generate_tracked(ctx);
            self.views
                .store(ctx.mesh.outbound_builds(), Ordering::SeqCst);
            generated
        }

        fn regenerate_outbounds(
            &self,
            mesh: &MeshContext<'_>,
            previous: &Snapshot,
            dependencies: &Dependencies,
        ) -> Option<Result<(Snapshot, Dependencies), GenerateError>> {
            let relayered = self
                .profile
                .regenerate_outbounds(mesh, previous, dependencies);
            if relayered.is_some() {
                self.relayered.fetch_add(1, Ordering::SeqCst);
            }
            relayered
        }
    }

    fn dataplane(name: &str, ip: &str, service: &str, outbounds: &[&str]) -> Resource {
        let mut yaml = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: {service}\n"
        );
        if !outbounds.is_empty() {
            yaml.push_str("  outbound:\n");
            for (i, o) in outbounds.iter().enumerate() {
                yaml.push_str(&format!(
                    "  - port: {}\n    tags:\n      kuma.io/service: {o}\n",
                    10001 + i
                ));
            }
        }
        parse_yaml(&yaml).unwrap()
    }

    fn endpoints_of(cache: &SnapshotCache, node: &str, service: &str) -> Vec<String> {
        let snapshot = cache.get(node).unwrap();
        let cla = snapshot
            .get(xds_server::types::ENDPOINT)
            .and_then(|r| r.get(service).cloned())
            .unwrap();
        let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            prost::Message::decode(cla.to_any().value.as_slice()).unwrap();
        let mut ips: Vec<String> = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match e.host_identifier.as_ref()? {
                envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep) => {
                    match ep.address.as_ref()?.address.as_ref()? {
                        envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa) => {
                            Some(sa.address.clone())
                        }
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    #[tokio::test]
    async fn connecting_proxies_reuse_the_outbounds_built_before() {
        let manager = manager_with([
            dataplane("web", "10.0.0.1", "web", &["backend"]),
            dataplane("web-2", "10.0.0.2", "web", &["backend"]),
            dataplane("backend-1", "10.0.0.3", "backend", &[]),
        ])
        .await;
        let cache = Arc::new(SnapshotCache::new());
        let generator = Counting::new();
        let registry = connected(&["web", "backend-1"]);
        let mut r = undebounced(&manager, &cache, generator.clone(), registry.clone());
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 2);
        // Two views: web's outbound to backend, and backend's none.
        assert_eq!(generator.views.load(Ordering::SeqCst), 2);

        // web-2 sees the mesh as web does: its batch builds no view.
        connect(&mut r, &registry, "web-2").await;
        assert_eq!(generator.counts(), (3, 0));
        assert_eq!(generator.views.load(Ordering::SeqCst), 2);
        assert_eq!(
            endpoints_of(&cache, "default.web-2", "backend"),
            ["10.0.0.3"]
        );

        // A changed service: what was built for the old one is not used.
        manager
            .apply(dataplane("backend-2", "10.0.0.4", "backend", &[]))
            .await
            .unwrap();
        registry.stream_opened("default.backend-2");
        r.sync_mesh("default", &Dirty::dataplanes(["backend-2"]))
            .await;
        for node in ["default.web", "default.web-2"] {
            assert_eq!(
                endpoints_of(&cache, node, "backend"),
                ["10.0.0.3", "10.0.0.4"]
            );
        }
    }

    #[tokio::test]
    async fn a_changed_dataplane_regenerates_only_its_dependants() {
        let manager = manager_with([
            dataplane("web", "10.0.0.1", "web", &["backend"]),
            dataplane("backend-1", "10.0.0.2", "backend", &[]),
            dataplane("billing", "10.0.0.3", "billing", &["db"]),
            dataplane("db-1", "10.0.0.4", "db", &[]),
            dataplane("lonely", "10.0.0.5", "lonely", &[]),
        ])
        .await;
        let cache = Arc::new(SnapshotCache::new());
        let generator = Counting::new();
        let registry = connected(&["web", "backend-1", "billing", "db-1", "lonely"]);
        let mut r = undebounced(&manager, &cache, generator.clone(), registry.clone());
        let dirty = |names: &[&str]| Dirty::dataplanes(names.iter().copied());
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 5);

        // A new backend endpoint: itself, and web (which calls backend). Web sees it; its own
        // resources are kept, laid over the new outbounds.
        registry.stream_opened("default.backend-2");
        manager
            .apply(dataplane("backend-2", "10.0.0.6", "backend", &[]))
            .await
            .unwrap();
        let web_before = cache.get("default.web").unwrap();
        assert_eq!(r.sync_mesh("default", &dirty(&["backend-2"])).await, 2);
        assert_eq!(generator.counts(), (5 + 1, 1));
        assert_eq!(
            endpoints_of(&cache, "default.web", "backend"),
            ["10.0.0.2", "10.0.0.6"]
        );
        let web = cache.get("default.web").unwrap();
        let inbound = |s: &Snapshot| {
            let listeners = s.get(xds_server::types::LISTENER).unwrap();
            listeners.get("inbound:10.0.0.1:80").unwrap().clone()
        };
        assert!(inbound(&web_before).shares_bytes_with(&inbound(&web)));
        assert_eq!(
            web.version(xds_server::types::LISTENER),
            web_before.version(xds_server::types::LISTENER)
        );

        // A Dataplane nobody calls: only itself.
        manager
            .apply(dataplane("lonely", "10.0.0.7", "lonely", &[]))
            .await
            .unwrap();
        assert_eq!(r.sync_mesh("default", &dirty(&["lonely"])).await, 1);

        // backend-2 moves to db: callers of the old and the new service, and itself.
        manager
            .apply(dataplane("backend-2", "10.0.0.6", "db", &[]))
            .await
            .unwrap();
        assert_eq!(r.sync_mesh("default", &dirty(&["backend-2"])).await, 3);
        assert_eq!(endpoints_of(&cache, "default.web", "backend"), ["10.0.0.2"]);
        assert_eq!(
            endpoints_of(&cache, "default.billing", "db"),
            ["10.0.0.4", "10.0.0.6"]
        );

        // Deleted: its snapshot goes, its callers are regenerated.
        manager
            .delete(
                &ResourceKey::new(ResourceType::Dataplane, "default", "backend-2"),
                false,
            )
            .await
            .unwrap();
        assert_eq!(r.sync_mesh("default", &dirty(&["backend-2"])).await, 1);
        assert!(cache.get("default.backend-2").is_none());
        assert_eq!(endpoints_of(&cache, "default.billing", "db"), ["10.0.0.4"]);

        // Anything else (here a full resync) regenerates the whole mesh.
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 5);
        // Web and billing were the callers: relayered, 1 + 2 + 1 times.
        assert_eq!(generator.counts(), (5 + 1 + 1 + 1 + 5, 1 + 2 + 1));
    }

    #[tokio::test]
    async fn another_zones_ingress_regenerates_only_the_callers_of_what_it_offers() {
        let manager = manager_with([
            dataplane("web", "10.0.0.1", "web", &["backend"]),
            dataplane("billing", "10.0.0.3", "billing", &["db"]),
            dataplane("db-1", "10.0.0.4", "db", &[]),
        ])
        .await;
        apply_yaml(&manager, "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n").await;
        let cache = Arc::new(SnapshotCache::new());
        let generator = Counting::new();
        let registry = connected(&["web", "billing", "db-1"]);
        let mut r = undebounced(&manager, &cache, generator.clone(), registry).with_zone("zone-1");
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 3);
        let ingress = |instances: u32| {
            format!(
                "type: ZoneIngress\nname: zone-2.ingress\nzone: zone-2\nnetworking:\n  address: 10.0.2.9\n  port: 10001\n  advertisedAddress: 192.0.2.9\n  advertisedPort: 10001\navailableServices:\n- mesh: default\n  instances: {instances}\n  tags: {{kuma.io/service: backend, kuma.io/zone: zone-2}}\n"
            )
        };
        let changed = || Batch {
            items: vec![(String::new(), Dirty::dataplanes(["zone-2.ingress"]))],
            resync: false,
        };
        // zone-2 offers backend: web (its caller) alone gets the ingress as an endpoint.
        apply_yaml(&manager, &ingress(2)).await;
        let before = generator.counts();
        r.sync_batch(changed()).await;
        let after = generator.counts();
        assert_eq!(after.0 + after.1 - before.0 - before.1, 1, "web alone");
        assert_eq!(
            endpoints_of(&cache, "default.web", "backend"),
            ["192.0.2.9"]
        );
        // The same ingress written again with the same content: nothing to do.
        let before = generator.counts();
        r.sync_batch(changed()).await;
        assert_eq!(generator.counts(), before);
        // More instances behind it: web's endpoint weighs more, web alone is regenerated.
        apply_yaml(&manager, &ingress(5)).await;
        r.sync_batch(changed()).await;
        let now = generator.counts();
        assert_eq!(now.0 + now.1 - before.0 - before.1, 1);
        // A Dataplane change elsewhere reads no ZoneIngress and leaves the remote endpoints.
        manager
            .apply(dataplane("db-1", "10.0.0.5", "db", &[]))
            .await
            .unwrap();
        r.sync_mesh("default", &Dirty::dataplanes(["db-1"])).await;
        assert_eq!(
            endpoints_of(&cache, "default.web", "backend"),
            ["192.0.2.9"]
        );
        // zone-2's ingress goes: backend has no endpoint left.
        manager
            .delete(
                &ResourceKey::global(ResourceType::ZoneIngress, "zone-2.ingress"),
                false,
            )
            .await
            .unwrap();
        r.sync_batch(changed()).await;
        assert!(endpoints_of(&cache, "default.web", "backend").is_empty());
    }

    #[tokio::test]
    async fn through_the_zone_egress_go_other_zones_and_external_services() {
        let manager =
            manager_with([dataplane("web", "10.0.0.1", "web", &["backend", "httpbin"])]).await;
        apply_yaml(&manager, "type: Mesh\nname: default\nrouting:\n  zoneEgress: true\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n").await;
        apply_yaml(&manager, "type: ZoneEgress\nname: egress-1\nzone: zone-1\nnetworking:\n  address: 10.0.1.7\n  port: 10002\n").await;
        apply_yaml(&manager, "type: ExternalService\nmesh: default\nname: httpbin\nnetworking:\n  address: 203.0.113.5:80\ntags:\n  kuma.io/service: httpbin\n  kuma.io/protocol: http\n").await;
        apply_yaml(&manager, "type: ZoneIngress\nname: zone-2.ingress\nzone: zone-2\nnetworking:\n  address: 10.0.2.9\n  port: 10001\n  advertisedAddress: 192.0.2.9\n  advertisedPort: 10001\navailableServices:\n- mesh: default\n  instances: 2\n  tags: {kuma.io/service: backend, kuma.io/zone: zone-2}\n").await;
        let cache = Arc::new(SnapshotCache::new());
        let registry = connected(&["web"]);
        let mut r = undebounced(&manager, &cache, Counting::new(), registry).with_zone("zone-1");
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 1);
        // web sends both to this zone's egress.
        assert_eq!(endpoints_of(&cache, "default.web", "backend"), ["10.0.1.7"]);
        assert_eq!(endpoints_of(&cache, "default.web", "httpbin"), ["10.0.1.7"]);

        // The egress connects: it passes backend on to zone-2's ingress, and serves httpbin.
        let mut batch = Batch::default();
        r.proxy_change(
            ProxyChange::Reported {
                rtype: ResourceType::ZoneEgress,
                mesh: String::new(),
                name: "egress-1".into(),
            },
            &mut batch,
        )
        .await;
        r.sync_batch(batch).await;
        assert_eq!(
            endpoints_of(&cache, ".egress-1", "default:backend"),
            ["192.0.2.9"]
        );
        let snapshot = cache.get(".egress-1").unwrap();
        let listener = snapshot
            .get(xds_server::types::LISTENER)
            .and_then(|l| l.get("inbound:10.0.1.7:10002").cloned())
            .unwrap();
        let listener: envoy_types::pb::envoy::config::listener::v3::Listener =
            prost::Message::decode(listener.to_any().value.as_slice()).unwrap();
        let names: Vec<&str> = listener
            .filter_chains
            .iter()
            .flat_map(|c| c.filter_chain_match.as_ref().unwrap().server_names.iter())
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["backend{mesh=default}", "httpbin{mesh=default}"]);
        // Only httpbin's chain terminates TLS (with the egress's own certificate).
        let terminating: Vec<&str> = listener
            .filter_chains
            .iter()
            .filter(|c| c.transport_socket.is_some())
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(terminating, ["httpbin_default"]);

        // The egress goes: other zones and external services are out of reach.
        manager
            .delete(
                &ResourceKey::global(ResourceType::ZoneEgress, "egress-1"),
                false,
            )
            .await
            .unwrap();
        r.sync_batch(Batch {
            items: vec![(String::new(), Dirty::zone_egresses(["egress-1"]))],
            resync: false,
        })
        .await;
        assert!(endpoints_of(&cache, "default.web", "backend").is_empty());
        assert!(endpoints_of(&cache, "default.web", "httpbin").is_empty());
    }

    /// A [`MemoryStore`] that logs the reads going through it: (operation, type).
    #[derive(Default)]
    struct ReadLog {
        inner: MemoryStore,
        reads: std::sync::Mutex<Vec<(&'static str, ResourceType)>>,
    }

    impl ReadLog {
        /// The reads since the last call.
        fn take(&self) -> Vec<(&'static str, ResourceType)> {
            std::mem::take(&mut *self.reads.lock().unwrap())
        }
    }

    #[async_trait::async_trait]
    impl kuma_core::store::ResourceStore for ReadLog {
        async fn create(
            &self,
            resource: Resource,
            owner: Option<ResourceKey>,
        ) -> Result<Resource, StoreError> {
            self.inner.create(resource, owner).await
        }
        async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
            self.inner.update(resource).await
        }
        async fn delete(
            &self,
            key: &ResourceKey,
            version: Option<&kuma_core::resource::Version>,
        ) -> Result<(), StoreError> {
            self.inner.delete(key, version).await
        }
        async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
            self.reads.lock().unwrap().push(("get", key.rtype));
            self.inner.get(key).await
        }
        async fn list(&self, query: &ListQuery) -> Result<kuma_core::store::Page, StoreError> {
            self.reads.lock().unwrap().push(("list", query.rtype));
            self.inner.list(query).await
        }
        fn watch(&self) -> tokio::sync::broadcast::Receiver<kuma_core::store::StoreEvent> {
            self.inner.watch()
        }
    }

    #[tokio::test]
    async fn a_batch_reads_only_what_changed() {
        let store = Arc::new(ReadLog::default());
        let manager = ResourceManager::new(store.clone(), ManagerOptions::default());
        manager.ensure_default_mesh().await.unwrap();
        for dp in [
            dataplane("web", "10.0.0.1", "web", &["backend"]),
            dataplane("backend-1", "10.0.0.2", "backend", &[]),
            dataplane("backend-2", "10.0.0.3", "backend", &[]),
        ] {
            manager.apply(dp).await.unwrap();
        }
        let registry = connected(&["web"]);
        let cache = Arc::new(SnapshotCache::new());
        let mut r = undebounced(
            &manager,
            &cache,
            Arc::new(GeneratorList::kuma_profile()),
            registry.clone(),
        );
        r.all_meshes().await;
        r.sync_mesh("default", &Dirty::everything()).await;
        let first = store.take();
        assert!(first.contains(&("list", ResourceType::Dataplane)));
        let engine = |r: &Reconciler| r.meshes["default"].wide.as_ref().unwrap().engine.clone();
        let before = engine(&r);

        // One Dataplane changed: it alone is read, and its caller sees the change.
        manager
            .apply(dataplane("backend-2", "10.0.0.9", "backend", &[]))
            .await
            .unwrap();
        store.take();
        assert_eq!(
            r.sync_mesh("default", &Dirty::dataplanes(["backend-2"]))
                .await,
            1
        );
        assert_eq!(store.take(), [("get", ResourceType::Dataplane)]);
        assert_eq!(
            endpoints_of(&cache, "default.web", "backend"),
            ["10.0.0.2", "10.0.0.9"]
        );

        // A proxy connecting reads nothing.
        connect(&mut r, &registry, "backend-1").await;
        assert!(cache.get("default.backend-1").is_some());
        assert_eq!(store.take(), []);

        // A deleted Dataplane: one read, the endpoint is gone.
        manager
            .delete(
                &ResourceKey::new(ResourceType::Dataplane, "default", "backend-2"),
                false,
            )
            .await
            .unwrap();
        store.take();
        r.sync_mesh("default", &Dirty::dataplanes(["backend-2"]))
            .await;
        assert_eq!(store.take(), [("get", ResourceType::Dataplane)]);
        assert_eq!(endpoints_of(&cache, "default.web", "backend"), ["10.0.0.2"]);

        // A mesh-wide change reads the mesh-wide inputs, not the Dataplanes; with no policy
        // changed, the policy engine is kept.
        r.sync_mesh("default", &Dirty::everything()).await;
        let reads = store.take();
        assert!(reads.contains(&("get", ResourceType::Mesh)));
        assert!(reads.contains(&("list", ResourceType::MeshTimeout)));
        assert!(
            !reads.iter().any(|(_, t)| *t == ResourceType::Dataplane),
            "{reads:?}"
        );
        assert!(Arc::ptr_eq(&before, &engine(&r)));

        // A policy changed: the engine is rebuilt.
        apply_yaml(&manager, "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 3s}\n").await;
        r.sync_mesh("default", &Dirty::everything()).await;
        assert!(!Arc::ptr_eq(&before, &engine(&r)));
        assert!(engine(&r).has(ResourceType::MeshTimeout));

        // Missed changes (a resync) list the Dataplanes again.
        store.take();
        let batch = Batch {
            resync: true,
            ..Batch::default()
        };
        r.sync_batch(batch).await;
        assert!(store.take().contains(&("list", ResourceType::Dataplane)));
    }

    #[test]
    fn batches_widen_to_everything_on_any_other_change_and_keep_the_dataplanes() {
        let dp = |n: &str| ResourceKey::new(ResourceType::Dataplane, "default", n);
        let dirt = |key: &ResourceKey| dirt(key, &NoVips);
        let (mesh, mut d) = dirt(&dp("a")).unwrap();
        assert_eq!(mesh, "default");
        d.add(dirt(&dp("b")).unwrap().1);
        assert_eq!(d, Dirty::dataplanes(["a", "b"]));
        d.add(
            dirt(&ResourceKey::new(ResourceType::MeshTimeout, "default", "t"))
                .unwrap()
                .1,
        );
        // The changed Dataplanes are still read again.
        let mut everything = Dirty::dataplanes(["a", "b"]);
        everything.everything = true;
        assert_eq!(d, everything);
        // Proxies that only need their config join changed Dataplanes without widening.
        let mut d = Dirty::proxies(["p"]);
        d.add(Dirty::proxies(["q"]));
        assert_eq!(d, Dirty::proxies(["p", "q"]));
        d.add(Dirty::dataplanes(["a"]));
        assert_eq!(d.proxies, BTreeSet::from(["p".into(), "q".into()]));
        assert_eq!(d.dataplanes, BTreeSet::from(["a".into()]));
        assert!(!d.everything);
        assert_eq!(
            dirt(&ResourceKey::new(
                ResourceType::DataplaneInsight,
                "default",
                "a"
            )),
            None
        );
    }

    #[tokio::test]
    async fn a_dataplane_without_a_connected_proxy_is_never_generated() {
        let manager = manager_with([
            dataplane("web", "10.0.0.1", "web", &["backend"]),
            dataplane("backend-1", "10.0.0.2", "backend", &[]),
            dataplane("backend-2", "10.0.0.3", "backend", &[]),
        ])
        .await;
        let cache = Arc::new(SnapshotCache::new());
        let generator = Counting::new();
        let registry = connected(&["web"]);
        let mut r = undebounced(&manager, &cache, generator.clone(), registry.clone());
        // Only web is generated, with both backends as endpoints.
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 1);
        assert_eq!(
            endpoints_of(&cache, "default.web", "backend"),
            ["10.0.0.2", "10.0.0.3"]
        );
        assert!(cache.get("default.backend-1").is_none());
        // A change to a Dataplane nobody has connected: it is not generated, web is.
        manager
            .apply(dataplane("backend-2", "10.0.0.4", "backend", &[]))
            .await
            .unwrap();
        let changed = Dirty::dataplanes(["backend-2"]);
        assert_eq!(r.sync_mesh("default", &changed).await, 1);
        assert_eq!(generator.counts(), (1, 1));

        // backend-1's proxy connects: it alone is generated.
        connect(&mut r, &registry, "backend-1").await;
        assert_eq!(generator.counts(), (2, 1));
        assert!(cache.get("default.backend-1").is_some());
        // It leaves: its snapshot goes, and a mesh-wide change generates web only.
        registry.stream_closed("default.backend-1");
        let mut batch = Batch::default();
        r.proxy_change(
            ProxyChange::Disconnected("default.backend-1".into()),
            &mut batch,
        )
        .await;
        assert!(batch.items.is_empty());
        assert!(cache.get("default.backend-1").is_none());
        assert_eq!(r.sync_mesh("default", &Dirty::everything()).await, 1);
        assert_eq!(generator.counts(), (3, 1));
    }

    #[tokio::test]
    async fn one_services_endpoint_change_is_encoded_once_for_every_proxy() {
        let callers = ["web-1", "web-2", "web-3", "api-1", "api-2"];
        let manager = manager_with(
            callers
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let service = name.split('-').next().unwrap();
                    dataplane(name, &format!("10.0.1.{i}"), service, &["backend", "db"])
                })
                .chain([
                    dataplane("backend-1", "10.0.0.2", "backend", &[]),
                    dataplane("backend-2", "10.0.0.3", "backend", &[]),
                    dataplane("db-1", "10.0.0.4", "db", &[]),
                ]),
        )
        .await;
        let mut all = callers.to_vec();
        all.extend(["backend-1", "backend-2", "db-1"]);
        let cache = Arc::new(SnapshotCache::new());
        let mut r = undebounced(
            &manager,
            &cache,
            Arc::new(GeneratorList::kuma_profile()),
            connected(&all),
        );
        let encoded = |r: &Reconciler| {
            let index = r.meshes["default"].index.as_ref().unwrap();
            index.encoded()
        };
        r.sync_mesh("default", &Dirty::everything()).await;
        // web, api, backend, db: each service's endpoints encoded once for the 8 proxies.
        assert_eq!(encoded(&r), 4);
        let endpoints = |node: &str, service: &str| {
            cache
                .get(node)
                .unwrap()
                .get(xds_server::types::ENDPOINT)
                .unwrap()
                .get(service)
                .unwrap()
                .clone()
        };
        let db_before = endpoints("default.web-1", "db");

        // backend-2 moves: its callers are regenerated, and only backend's endpoints are
        // encoded again, once for all five callers, which share the bytes.
        manager
            .apply(dataplane("backend-2", "10.0.0.9", "backend", &[]))
            .await
            .unwrap();
        let changed = Dirty::dataplanes(["backend-2"]);
        assert_eq!(r.sync_mesh("default", &changed).await, 6);
        assert_eq!(encoded(&r), 5);
        assert_eq!(
            endpoints_of(&cache, "default.web-1", "backend"),
            ["10.0.0.2", "10.0.0.9"]
        );
        let backend = endpoints("default.web-1", "backend");
        for caller in &callers[1..] {
            assert!(backend.shares_bytes_with(&endpoints(&format!("default.{caller}"), "backend")));
        }
        // db's endpoints did not change: the regenerated snapshots hold the same bytes.
        assert!(db_before.shares_bytes_with(&endpoints("default.web-1", "db")));
        // A full regeneration with nothing changed encodes nothing.
        r.sync_mesh("default", &Dirty::everything()).await;
        assert_eq!(encoded(&r), 5);
    }

    async fn next_response(
        responses: &mut tonic::Streaming<
            envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
        >,
    ) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delta_stream_receives_only_the_changed_resources() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};

        let manager = manager_with([
            dataplane("web-1", "10.0.0.1", "web", &["backend", "db"]),
            dataplane("backend-1", "10.0.0.2", "backend", &[]),
            dataplane("db-1", "10.0.0.3", "db", &[]),
        ])
        .await;
        let cache = Arc::new(SnapshotCache::new());
        let mut r = undebounced(
            &manager,
            &cache,
            Arc::new(GeneratorList::kuma_profile()),
            connected(&["web-1"]),
        );
        r.sync_mesh("default", &Dirty::everything()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ads = xds_server::server::AdsServer::new(
            cache.clone(),
            Arc::new(xds_server::server::NoCallbacks),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ads.into_service())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for (type_url, names) in [
            (CLUSTER, vec![]),
            (LISTENER, vec![]),
            (ENDPOINT, vec!["backend".to_string(), "db".to_string()]),
        ] {
            tx.send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: "default.web-1".into(),
                    ..Default::default()
                }),
                type_url: type_url.into(),
                resource_names_subscribe: names,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut responses = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // The initial config: clusters, listeners and both services' endpoints, ACKed.
        let mut types = BTreeSet::new();
        while types.len() < 3 {
            let response = next_response(&mut responses).await;
            types.insert(response.type_url.clone());
            tx.send(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..Default::default()
            })
            .await
            .unwrap();
        }

        // backend moves: the stream gets backend's endpoints and nothing else.
        manager
            .apply(dataplane("backend-1", "10.0.0.9", "backend", &[]))
            .await
            .unwrap();
        let changed = Dirty::dataplanes(["backend-1"]);
        assert_eq!(r.sync_mesh("default", &changed).await, 1);
        let response = next_response(&mut responses).await;
        assert_eq!(response.type_url, ENDPOINT);
        let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["backend"]);
        assert!(response.removed_resources.is_empty());
        let more = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
        assert!(more.is_err(), "nothing else is sent: {more:?}");
    }
}
