//! MeshTCPRoute: weighted backends of TCP outbounds.

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use kuma_core::model::policy::TcpRouteConf;
use kuma_core::resource::ResourceType;

use super::{backend_cluster, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::{ResourceSet, Terminal};

/// Applies MeshTCPRoute.
#[derive(Debug, Clone, Copy)]
pub struct MeshTcpRoute;

impl ResourceGenerator for MeshTcpRoute {
    fn name(&self) -> &str {
        "MeshTCPRoute"
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshTCPRoute);
        if rules.is_empty() {
            return Ok(());
        }
        let outbounds: Vec<_> = rs
            .outbounds
            .iter()
            .filter(|o| !o.protocol.is_http())
            .map(|o| (o.listener.clone(), o.service.clone()))
            .collect();
        for (listener, service) in outbounds {
            let Some(conf) = to_conf::<TcpRouteConf>(&rules, &service)? else {
                continue;
            };
            let Some(refs) = conf.backend_refs else {
                continue;
            };
            let targets: Vec<(String, u32)> = refs
                .iter()
                .filter_map(|b| Some((backend_cluster(ctx.mesh, rs, b)?, b.weight.unwrap_or(1))))
                .collect();
            let Some(Terminal::Tcp(tcp)) = rs.listeners.get_mut(&listener).map(|l| &mut l.terminal)
            else {
                continue;
            };
            tcp.cluster_specifier = match targets.as_slice() {
                [] => continue,
                [(name, _)] => Some(ClusterSpecifier::Cluster(name.clone())),
                many => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: many
                        .iter()
                        .map(|(name, weight)| ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        })
                        .collect(),
                })),
            };
        }
        Ok(())
    }
}
