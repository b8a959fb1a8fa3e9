//! The reconciler's VIPs: Kuma's VIP tables in the store (`kuma-dns`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use kuma_core::manager::ResourceManager;
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_dns::vips::{host_vips, mesh_of_config, service_vips, stored_service_vips, stored_table};
use kuma_xds::generate::external::ExternalHost;

/// The service and external host VIPs of the stored tables (`kuma-<mesh>-dns-vips`), each
/// table read once per mesh-wide read.
pub(crate) struct StoredVips(pub(crate) ResourceManager);

#[async_trait::async_trait]
impl kuma_xds::sync::Vips for StoredVips {
    async fn service_vips(&self, mesh: &str) -> BTreeMap<String, Ipv4Addr> {
        match stored_service_vips(&self.0, mesh).await {
            Ok(vips) => vips,
            Err(e) => {
                tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "VIP outbounds left out");
                BTreeMap::new()
            }
        }
    }

    async fn host_vips(&self, mesh: &str) -> Vec<ExternalHost> {
        self.mesh_vips(mesh).await.1
    }

    async fn mesh_vips(&self, mesh: &str) -> (BTreeMap<String, Ipv4Addr>, Vec<ExternalHost>) {
        let table = match stored_table(&self.0, mesh).await {
            Ok((table, _)) => table,
            Err(e) => {
                tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "VIP outbounds left out");
                return (BTreeMap::new(), Vec::new());
            }
        };
        let hosts = host_vips(&table)
            .into_iter()
            .map(|h| ExternalHost {
                host: h.host,
                ip: h.ip,
                service: h.service,
                port: h.port,
            })
            .collect();
        (service_vips(&table), hosts)
    }

    fn changed_mesh(&self, key: &ResourceKey) -> Option<String> {
        if key.rtype != ResourceType::Config {
            return None;
        }
        mesh_of_config(&key.name).map(str::to_string)
    }
}
