//! The reconciler's VIPs: Kuma's VIP tables in the store (`kuma-dns`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use kuma_core::manager::ResourceManager;
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_dns::vips::{mesh_of_config, stored_service_vips};

/// The service VIPs of the stored tables (`kuma-<mesh>-dns-vips`).
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

    fn changed_mesh(&self, key: &ResourceKey) -> Option<String> {
        if key.rtype != ResourceType::Config {
            return None;
        }
        mesh_of_config(&key.name).map(str::to_string)
    }
}
