//! The outbound part of a proxy's config, built once for every proxy that sees its mesh the
//! same way.
//!
//! A proxy's outbounds (listeners, clusters and endpoints of the services it sends to) are
//! most of its config: with transparent proxying, one set per service of the mesh. They do not
//! depend on the proxy itself but on its [`OutboundView`]: which outbounds it has, which
//! policies select it, whether it has a workload certificate, and, only when a policy that
//! selects it writes them into outbound config, a few facts about the proxy ([`Source`]).
//! [`ResourceGenerator::apply_outbound`] receives an [`OutboundContext`], which holds the
//! view and the mesh and nothing else, so what outbound generation reads is what the view
//! says. The first proxy with a view builds and encodes its outbounds; every later proxy of
//! the same regeneration with an equal view takes the same encoded resources
//! ([`MeshContext::shared_outbounds`](super::MeshContext::shared_outbounds)).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::resource::ResourceType;
use kuma_core::rules::ProxyRules;

use super::context::{MeshContext, ProxyContext};
use super::resources::ResourceSet;
use super::{GenerateError, ResourceGenerator};
use xds_server::cache::SharedResources;

/// The policy types whose `to` rules configure outbounds.
pub const OUTBOUND_POLICIES: &[ResourceType] = &[
    ResourceType::MeshTCPRoute,
    ResourceType::MeshHTTPRoute,
    ResourceType::MeshLoadBalancingStrategy,
    ResourceType::MeshCircuitBreaker,
    ResourceType::MeshHealthCheck,
    ResourceType::MeshTimeout,
    ResourceType::MeshRetry,
    ResourceType::MeshAccessLog,
];

/// The policy types whose outbound config names the proxy itself (see [`Source`]).
const SOURCE_POLICIES: &[ResourceType] = &[
    ResourceType::MeshAccessLog,
    ResourceType::MeshLoadBalancingStrategy,
];

/// An explicit outbound of a Dataplane: the service, and where the proxy listens for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExplicitOutbound {
    /// The destination service.
    pub service: String,
    /// The listener's address.
    pub ip: String,
    /// The listener's port.
    pub port: u32,
}

/// What outbound config may say about the proxy it is for: MeshAccessLog's placeholders and
/// the kuma-dp pipe it writes to, MeshLoadBalancingStrategy's locality. Only in the view of a
/// proxy selected by such a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// The Dataplane's name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// kuma-dp's work directory, as the proxy reported it.
    pub workdir: Option<String>,
    /// The tags of its first inbound (what "local" means for locality).
    pub local_tags: Tags,
}

impl Source {
    /// The `kuma.io/service` of the proxy's first inbound (`unknown` without one).
    pub fn service(&self) -> &str {
        self.local_tags
            .get(SERVICE_TAG)
            .map_or("unknown", String::as_str)
    }
}

/// The services a transparent proxy reaches by VIP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Every service with a VIP.
    Every,
    /// Only these, sorted and distinct: its `reachableServices`, or what its permissions let
    /// it reach ([`crate::generate::ReachGraph`]).
    Only(Arc<[String]>),
}

impl Reach {
    /// Only `services` (in any order, repeats allowed).
    pub fn only(services: impl IntoIterator<Item = String>) -> Self {
        let mut services: Vec<String> = services.into_iter().collect();
        services.sort_unstable();
        services.dedup();
        Reach::Only(services.into())
    }
}

/// Everything the outbound part of a proxy's config is generated from, besides its mesh.
/// Proxies with equal views get equal outbound resources. The default view has no outbounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OutboundView {
    /// The Dataplane's explicit outbounds (those naming a service).
    pub explicit: Vec<ExplicitOutbound>,
    /// Transparent proxying: `None` when off; otherwise the services it reaches by VIP.
    pub transparent: Option<Reach>,
    /// The proxy has a workload certificate (outbound clusters present it under mesh mTLS).
    pub identity: bool,
    /// Per outbound policy type with a policy selecting the proxy, the positions of those
    /// policies ([`kuma_core::rules::MeshPolicies::selecting`]).
    policies: Vec<(ResourceType, Vec<usize>)>,
    /// The proxy itself, when a policy selecting it writes it into outbound config.
    pub source: Option<Source>,
    /// The proxy's zone (`kuma.io/zone` of its first inbound): what is local to it. Every
    /// proxy of a zone has the same, so it does not split views within a zone.
    pub zone: Option<String>,
}

impl OutboundView {
    /// The view of the proxy `ctx` is for.
    pub fn of(ctx: &ProxyContext<'_>) -> Self {
        let explicit = ctx
            .dataplane
            .outbounds()
            .iter()
            .filter_map(|o| {
                Some(ExplicitOutbound {
                    service: o.service()?.to_string(),
                    ip: o.address.as_deref().unwrap_or("127.0.0.1").to_string(),
                    port: o.port,
                })
            })
            .collect();
        let transparent = ctx
            .dataplane
            .networking
            .as_ref()
            .and_then(|n| n.transparent_proxying.as_ref())
            .map(|tp| {
                if !tp.reachable_services.is_empty() {
                    return Reach::only(tp.reachable_services.iter().cloned());
                }
                match ctx.mesh.reach_graph() {
                    Some(graph) => {
                        let sources: Vec<Tags> = ctx
                            .dataplane
                            .inbounds()
                            .iter()
                            .map(|i| i.tags.clone())
                            .collect();
                        // In the VIPs' order: sorted.
                        Reach::Only(
                            graph.reachable(&sources, ctx.mesh.vips.keys().map(String::as_str)),
                        )
                    }
                    None => Reach::Every,
                }
            });
        let view = ctx.view();
        let policies: Vec<(ResourceType, Vec<usize>)> = OUTBOUND_POLICIES
            .iter()
            .filter(|t| ctx.mesh.policies.has(**t))
            .map(|t| (*t, ctx.mesh.policies.selecting(*t, &view)))
            .filter(|(_, positions)| !positions.is_empty())
            .collect();
        let named = policies.iter().any(|(t, _)| SOURCE_POLICIES.contains(t));
        let source = named.then(|| Source {
            name: ctx.name.to_string(),
            address: ctx.address().to_string(),
            workdir: ctx.metadata.workdir.clone(),
            local_tags: ctx
                .dataplane
                .inbounds()
                .first()
                .map(|i| i.tags.clone())
                .unwrap_or_default(),
        });
        let zone = ctx
            .dataplane
            .inbounds()
            .first()
            .and_then(|i| i.tags.get(kuma_core::model::common::ZONE_TAG).cloned());
        OutboundView {
            explicit,
            transparent,
            identity: ctx.identity.is_some(),
            policies,
            source,
            zone,
        }
    }

    /// True when the proxy has outbounds at all (explicit ones, or transparent proxying).
    pub fn has_outbounds(&self) -> bool {
        !self.explicit.is_empty() || self.transparent.is_some()
    }
}

/// What outbound generation sees: the mesh, and one [`OutboundView`].
#[derive(Debug, Clone, Copy)]
pub struct OutboundContext<'a> {
    /// The mesh and what its proxies share.
    pub mesh: &'a MeshContext<'a>,
    /// The view the outbounds are built for.
    pub view: &'a OutboundView,
}

impl OutboundContext<'_> {
    /// The rules of policy type `rtype` the view's policies make (`to` and single-item rules;
    /// outbounds have no `from` rules).
    pub fn rules(&self, rtype: ResourceType) -> ProxyRules {
        let positions = self
            .view
            .policies
            .iter()
            .find(|(t, _)| *t == rtype)
            .map(|(_, p)| p.as_slice())
            .unwrap_or_default();
        self.mesh.policies.to_rules(rtype, positions)
    }
}

/// The outbound resources of one view, encoded, and what they were made from.
#[derive(Debug, Default)]
pub struct SharedOutbounds {
    /// The view they were built for.
    pub view: Arc<OutboundView>,
    /// The resources (listeners, clusters, endpoints), held by reference by every snapshot
    /// with them.
    pub resources: SharedResources,
    /// The services whose endpoints or protocol went into them.
    pub services: Arc<BTreeSet<String>>,
    /// A generator read Dataplanes beyond those services' endpoints.
    pub reads_every_dataplane: bool,
}

impl SharedOutbounds {
    /// Runs `generators`' outbound step for `ctx` and encodes the result.
    pub fn build(
        generators: &[Box<dyn ResourceGenerator>],
        ctx: &OutboundContext<'_>,
    ) -> Result<Self, GenerateError> {
        let rs = build_set(generators, ctx)?;
        Ok(SharedOutbounds {
            view: Arc::new(ctx.view.clone()),
            services: Arc::new(rs.services()),
            reads_every_dataplane: rs.reads_every_dataplane,
            resources: SharedResources::new(rs.into_encoded()),
        })
    }
}

impl SharedOutbounds {
    /// What a proxy whose own resources read nothing else of the mesh depends on with these
    /// outbounds.
    pub fn dependencies(&self) -> super::Dependencies {
        if self.reads_every_dataplane {
            return super::Dependencies::Everything;
        }
        super::Dependencies::Outbounds {
            view: self.view.clone(),
            services: self.services.clone(),
        }
    }
}

/// Runs `generators`' outbound step for `ctx` over a new resource set.
pub(crate) fn build_set(
    generators: &[Box<dyn ResourceGenerator>],
    ctx: &OutboundContext<'_>,
) -> Result<ResourceSet, GenerateError> {
    super::run_step(generators, |g, rs| g.apply_outbound(ctx, rs))
}

/// The outbounds built during one regeneration of a mesh, by view.
#[derive(Debug, Default)]
pub(crate) struct OutboundCache {
    built: Mutex<HashMap<OutboundView, Arc<SharedOutbounds>>>,
}

impl OutboundCache {
    /// The outbounds of `view`: the ones built before, or `build`'s (kept for later callers;
    /// an error is returned and not kept).
    pub(crate) fn get_or_build(
        &self,
        view: &OutboundView,
        build: impl FnOnce() -> Result<SharedOutbounds, GenerateError>,
    ) -> Result<Arc<SharedOutbounds>, GenerateError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = built.get(view) {
            return Ok(shared.clone());
        }
        let shared = Arc::new(build()?);
        built.insert(view.clone(), shared.clone());
        Ok(shared)
    }

    /// How many views were built.
    pub(crate) fn builds(&self) -> usize {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
