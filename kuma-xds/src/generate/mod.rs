//! Kuma config generation: from a Dataplane, its mesh and the mesh's policies to an xDS
//! [`Snapshot`].
//!
//! A [`SnapshotGenerator`] turns a [`ProxyContext`] into a snapshot. The bundled one,
//! [`GeneratorList::kuma_profile`], runs a list of [`ResourceGenerator`]s over one
//! [`ResourceSet`]: first the core of Kuma's profile ([`profile`]: inbound and outbound
//! listeners, clusters and endpoints, admin and readiness, virtual probes, the Prometheus
//! listener), then one generator per policy type ([`policies`]), each editing what the earlier
//! ones built. Add your own generators to the list, or implement [`SnapshotGenerator`] outright.
//!
//! Names follow Kuma: listeners `inbound:<ip>:<port>` and `outbound:<ip>:<port>`, local
//! clusters `localhost:<workload port>`, outbound clusters named after the service, route
//! tables `inbound:<service>` and `outbound:<service>`.

pub mod context;
pub mod external;
pub mod index;
pub mod mtls;
pub mod outbound;
pub mod policies;
pub mod profile;
pub mod reach;
pub mod resources;
pub mod source_tags;
pub mod zone_egress;
pub mod zone_ingress;

#[cfg(test)]
mod tests;

pub use context::{
    Endpoint, MeshContext, MeshMtls, Protocol, ProxyContext, ProxyMetadata, Service, SharedBuilds,
    WorkloadCertificate, access_log_pipe, dynamic_config_pipe,
};
pub use index::MeshIndex;
pub use outbound::{OutboundContext, OutboundView, Reach, SharedOutbounds};
pub use reach::ReachGraph;
pub use resources::ResourceSet;

use std::collections::BTreeSet;
use std::sync::Arc;

use xds_server::cache::Snapshot;

/// Envoy's node id for a Dataplane: `<mesh>.<name>`.
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

pub use kuma_core::errors::BoxError;

/// Why a proxy's snapshot could not be generated: the generator that failed, and why (also its
/// [`source`](std::error::Error::source), with the generator's own causes behind it).
#[derive(Debug, thiserror::Error)]
#[error("generator {generator:?} failed: {source}")]
pub struct GenerateError {
    /// The failing generator's name.
    pub generator: String,
    /// What went wrong.
    #[source]
    pub source: BoxError,
}

/// What else in its mesh a proxy's snapshot was generated from, besides its own Dataplane, the
/// Mesh and the mesh's policies (a change to any of those regenerates every proxy of the mesh).
/// A changed Dataplane regenerates itself and the proxies that depend on a service it provides
/// (before or after the change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependencies {
    /// The endpoints and protocols of these services (shared by the proxies whose outbounds
    /// are shared).
    Services(Arc<BTreeSet<String>>),
    /// The proxy's own resources depend on nothing else of the mesh; its outbounds are those
    /// of `view`, made from the endpoints and protocols of `services`. When only those
    /// services change, [`SnapshotGenerator::regenerate_outbounds`] lays the proxy's own
    /// resources over the view's new outbounds without building them again.
    Outbounds {
        /// The view the outbounds were built for.
        view: Arc<OutboundView>,
        /// The services they were made from.
        services: Arc<BTreeSet<String>>,
    },
    /// Possibly any Dataplane of the mesh: every Dataplane change regenerates the proxy.
    Everything,
}

impl Dependencies {
    /// True when a change to a Dataplane providing `services` can change this snapshot.
    pub fn touched_by(&self, services: &BTreeSet<String>) -> bool {
        match self {
            Dependencies::Services(own) | Dependencies::Outbounds { services: own, .. } => {
                !own.is_disjoint(services)
            }
            Dependencies::Everything => true,
        }
    }
}

/// Turns a proxy's context into its xDS snapshot. Implement it to generate your own config.
///
/// Generation is synchronous and pure (the context holds everything it reads), so it can run on
/// a blocking pool and golden tests need no runtime.
pub trait SnapshotGenerator: Send + Sync + 'static {
    /// The snapshot for the proxy.
    fn generate(&self, ctx: &ProxyContext<'_>) -> Result<Snapshot, GenerateError>;

    /// The snapshot and what it depends on. The default claims [`Dependencies::Everything`],
    /// always correct; say less to spare regenerations when other Dataplanes change.
    fn generate_tracked(
        &self,
        ctx: &ProxyContext<'_>,
    ) -> Result<(Snapshot, Dependencies), GenerateError> {
        Ok((self.generate(ctx)?, Dependencies::Everything))
    }

    /// The new snapshot of a proxy whose current one, `previous`, was generated with
    /// `dependencies`, when nothing of the proxy itself changed since, only services that
    /// `dependencies` names; `mesh` is the mesh as it is now. `None` (the default): generate it
    /// anew with [`SnapshotGenerator::generate_tracked`].
    fn regenerate_outbounds(
        &self,
        mesh: &MeshContext<'_>,
        previous: &Snapshot,
        dependencies: &Dependencies,
    ) -> Option<Result<(Snapshot, Dependencies), GenerateError>> {
        let _ = (mesh, previous, dependencies);
        None
    }
}

/// One step of building a proxy's resources.
///
/// A proxy's resources are built in two parts, each by every generator in order: its own
/// ([`apply`](ResourceGenerator::apply): inbounds, identity, plumbing) and its outbounds
/// ([`apply_outbound`](ResourceGenerator::apply_outbound), which sees only the mesh and the
/// proxy's [`OutboundView`], so proxies with equal views share the result, built once). A
/// generator configuring traffic to services does so in `apply_outbound`.
///
/// Contract with [`GeneratorList`]'s dependency tracking: a generator that reads a service's
/// endpoints or protocol from the mesh gives that service a cluster with
/// [`ClusterRole::Outbound`](resources::ClusterRole::Outbound) (as
/// [`profile::add_service_cluster`] does). The services of those clusters are what the
/// snapshot depends on.
pub trait ResourceGenerator: Send + Sync + 'static {
    /// The name errors report.
    fn name(&self) -> &str;

    /// Adds to or edits the proxy's own resources; an error explains what in the input is
    /// wrong. The default does nothing.
    fn apply(&self, ctx: &ProxyContext<'_>, resources: &mut ResourceSet) -> Result<(), BoxError> {
        let _ = (ctx, resources);
        Ok(())
    }

    /// Adds to or edits the outbound resources of a view. The default does nothing.
    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        resources: &mut ResourceSet,
    ) -> Result<(), BoxError> {
        let _ = (ctx, resources);
        Ok(())
    }
}

/// Resource generators run in order over one [`ResourceSet`].
pub struct GeneratorList {
    generators: Vec<Box<dyn ResourceGenerator>>,
}

impl std::fmt::Debug for GeneratorList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl GeneratorList {
    /// An empty list.
    pub fn new() -> Self {
        GeneratorList {
            generators: Vec::new(),
        }
    }

    /// Kuma's default profile: the core generators, then the policies in Kuma's order.
    pub fn kuma_profile() -> Self {
        let mut list = GeneratorList::new();
        for g in profile::core() {
            list.generators.push(g);
        }
        for g in policies::all() {
            list.generators.push(g);
        }
        list.generators.push(Box::new(mtls::MutualTls));
        list
    }

    /// Appends `generator`.
    pub fn with(mut self, generator: impl ResourceGenerator) -> Self {
        self.generators.push(Box::new(generator));
        self
    }

    /// The generators' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.generators.iter().map(|g| g.name()).collect()
    }

    /// Runs every generator over the proxy's own resources.
    fn build_own(&self, ctx: &ProxyContext<'_>) -> Result<ResourceSet, GenerateError> {
        run_step(&self.generators, |g, rs| g.apply(ctx, rs))
    }

    /// The outbounds of `view` in `mesh`: built by the generators for the first proxy with
    /// that view, shared by the later ones.
    fn outbounds(
        &self,
        mesh: &MeshContext<'_>,
        view: &OutboundView,
    ) -> Result<Arc<SharedOutbounds>, GenerateError> {
        mesh.shared_outbounds(view, |outbound| {
            SharedOutbounds::build(&self.generators, outbound)
        })
    }

    /// Runs every generator over one resource set: the proxy's own resources and its
    /// outbounds, built for this proxy alone (generation shares outbounds between proxies;
    /// this is for looking at the drafts).
    pub fn build(&self, ctx: &ProxyContext<'_>) -> Result<ResourceSet, GenerateError> {
        let mut resources = self.build_own(ctx)?;
        let view = OutboundView::of(ctx);
        let outbound = OutboundContext {
            mesh: ctx.mesh,
            view: &view,
        };
        resources.absorb(outbound::build_set(&self.generators, &outbound)?);
        Ok(resources)
    }
}
/// Runs `step` of every generator, in order, over a new resource set; an error names the
/// generator that failed.
fn run_step(
    generators: &[Box<dyn ResourceGenerator>],
    step: impl Fn(&dyn ResourceGenerator, &mut ResourceSet) -> Result<(), BoxError>,
) -> Result<ResourceSet, GenerateError> {
    let mut resources = ResourceSet::default();
    for g in generators {
        step(g.as_ref(), &mut resources).map_err(|source| GenerateError {
            generator: g.name().to_string(),
            source,
        })?;
    }
    Ok(resources)
}

impl Default for GeneratorList {
    fn default() -> Self {
        Self::kuma_profile()
    }
}

impl SnapshotGenerator for GeneratorList {
    fn generate(&self, ctx: &ProxyContext<'_>) -> Result<Snapshot, GenerateError> {
        Ok(self.generate_tracked(ctx)?.0)
    }

    /// The proxy's own resources, and the outbounds of its view: taken from the mesh context
    /// when a proxy with an equal view was generated with it, built and kept there otherwise.
    fn generate_tracked(
        &self,
        ctx: &ProxyContext<'_>,
    ) -> Result<(Snapshot, Dependencies), GenerateError> {
        let own = self.build_own(ctx)?;
        let shared = self.outbounds(ctx.mesh, &OutboundView::of(ctx))?;
        let own_services = own.services();
        let dependencies = if own.reads_every_dataplane || shared.reads_every_dataplane {
            Dependencies::Everything
        } else if own_services.is_empty() {
            shared.dependencies()
        } else if own_services.is_subset(&shared.services) {
            // Its own resources read services too: generated anew when they change.
            Dependencies::Services(shared.services.clone())
        } else {
            let mut services = own_services;
            services.extend(shared.services.iter().cloned());
            Dependencies::Services(Arc::new(services))
        };
        let snapshot = Snapshot::layered(own.into_encoded(), &shared.resources);
        Ok((snapshot, dependencies))
    }

    /// The proxy's own resources as `previous` holds them, over the outbounds of its view as
    /// they are in `mesh` (built once for every proxy with that view).
    fn regenerate_outbounds(
        &self,
        mesh: &MeshContext<'_>,
        previous: &Snapshot,
        dependencies: &Dependencies,
    ) -> Option<Result<(Snapshot, Dependencies), GenerateError>> {
        let Dependencies::Outbounds { view, .. } = dependencies else {
            return None;
        };
        let shared = match self.outbounds(mesh, view) {
            Ok(shared) => shared,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok((
            previous.relayered(&shared.resources),
            shared.dependencies(),
        )))
    }
}
