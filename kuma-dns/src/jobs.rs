//! The DNS jobs of a control plane: the leader keeps each mesh's VIPs in step with its
//! Dataplanes ([`allocate_vips`]), and every instance serves the `.mesh` zone built from the
//! stored VIP tables ([`follow_vips`]), so all instances answer alike whichever one allocated.
//! Both follow the store through [`StoreWatch`]: they do nothing while nothing changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_core::store::{ListQuery, StoreError};
use kuma_core::watch::StoreWatch;
use tokio::sync::watch;

use crate::server::DnsServer;
use crate::vips::{
    VipTables, config_name, external_service_hostnames, mesh_of_config, parse_table,
    service_hostnames,
};
use crate::zone::Zone;

/// What a store change means for VIP allocation.
enum VipChange {
    /// The services of this mesh may have changed.
    Mesh(String),
    /// A ZoneIngress changed: the services other zones offer, in every mesh.
    Everywhere,
}

/// Allocates VIPs while `leader` reads true: every mesh when leadership starts, then the meshes
/// whose Dataplanes or ExternalServices change, and every mesh when a ZoneIngress changes (the services other zones
/// offer get VIPs too; `local_zone` is this control plane's zone). VIP tables of deleted meshes
/// are removed. Returns when the store's change stream ends.
pub async fn allocate_vips(
    manager: ResourceManager,
    tables: VipTables,
    local_zone: String,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        let mut changes = StoreWatch::new(manager.store().as_ref(), |e| match e.key.rtype {
            ResourceType::Dataplane | ResourceType::ExternalService => {
                Some(VipChange::Mesh(e.key.mesh.clone()))
            }
            ResourceType::Mesh => Some(VipChange::Mesh(e.key.name.clone())),
            ResourceType::ZoneIngress => Some(VipChange::Everywhere),
            _ => None,
        });
        for mesh in all_meshes(&manager).await {
            sync_mesh(&manager, &tables, &local_zone, &mesh).await;
        }
        loop {
            let batch = tokio::select! {
                batch = changes.next() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                () = leadership_lost(&mut leader) => break,
            };
            let mut dirty = BTreeSet::new();
            let mut everything = batch.resync;
            for change in batch.items {
                match change {
                    VipChange::Mesh(mesh) => {
                        dirty.insert(mesh);
                    }
                    VipChange::Everywhere => everything = true,
                }
            }
            if everything {
                dirty.extend(all_meshes(&manager).await);
            }
            for mesh in dirty {
                sync_mesh(&manager, &tables, &local_zone, &mesh).await;
            }
        }
    }
}

/// Resolves when `leader` turns false. A leadership whose sender is gone (the in-process one,
/// which leads for good) is never lost: before, this returned at once and the loop above
/// re-read every mesh without end, a core's worth of store reads on an idle control plane.
async fn leadership_lost(leader: &mut watch::Receiver<bool>) {
    if leader.wait_for(|l| !*l).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Every mesh, and every mesh with a VIP table (to clean up after deleted meshes).
async fn all_meshes(manager: &ResourceManager) -> BTreeSet<String> {
    let mut meshes = BTreeSet::new();
    if let Ok(page) = manager.list(&ListQuery::all(ResourceType::Mesh)).await {
        meshes.extend(page.items.into_iter().map(|m| m.meta.name));
    }
    if let Ok(page) = manager.list(&ListQuery::all(ResourceType::Config)).await {
        meshes.extend(
            page.items
                .iter()
                .filter_map(|c| mesh_of_config(&c.meta.name).map(str::to_string)),
        );
    }
    meshes
}

async fn sync_mesh(manager: &ResourceManager, tables: &VipTables, local_zone: &str, mesh: &str) {
    let exists = manager
        .get(&ResourceKey::global(ResourceType::Mesh, mesh))
        .await
        .is_ok();
    if !exists {
        let key = ResourceKey::global(ResourceType::Config, &config_name(mesh));
        match manager.delete(&key, false).await {
            Ok(()) | Err(ManagerError::Store(StoreError::NotFound(_))) => {}
            Err(e) => {
                tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "cannot remove the VIPs of a deleted mesh")
            }
        }
        return;
    }
    let (in_mesh, ingresses, external) = (
        ListQuery::in_mesh(ResourceType::Dataplane, mesh),
        ListQuery::all(ResourceType::ZoneIngress),
        ListQuery::in_mesh(ResourceType::ExternalService, mesh),
    );
    let listed = tokio::try_join!(
        manager.list(&in_mesh),
        manager.list(&ingresses),
        manager.list(&external)
    );
    let (dataplanes, ingresses, external) = match listed {
        Ok((d, i, e)) => (d.items, i.items, e.items),
        Err(e) => {
            tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "cannot list the services for VIPs");
            return;
        }
    };
    let mut wanted = service_hostnames(mesh, local_zone, &dataplanes, &ingresses);
    wanted.extend(external_service_hostnames(&external));
    if let Err(e) = tables.sync(mesh, &wanted).await {
        tracing::warn!(mesh, error = %kuma_core::errors::Chain(&e), "VIP allocation incomplete");
    }
}

/// The zone of every stored VIP table.
pub async fn build_zone(manager: &ResourceManager, domain: &str, ttl: u32) -> Zone {
    let mut tables = Vec::new();
    if let Ok(page) = manager.list(&ListQuery::all(ResourceType::Config)).await {
        for c in &page.items {
            if mesh_of_config(&c.meta.name).is_none() {
                continue;
            }
            match parse_table(&c.meta.name, c) {
                Ok(t) => tables.push(t),
                Err(e) => {
                    tracing::warn!(error = %kuma_core::errors::Chain(&e), "a VIP table is skipped")
                }
            }
        }
    }
    let zone = Zone::new(domain, ttl).with_tables(&tables);
    tracing::debug!(tables = tables.len(), names = zone.len(), "DNS zone built");
    zone
}

/// Keeps `server`'s zone in step with the stored VIP tables until the store's change stream
/// ends.
pub async fn follow_vips(
    manager: ResourceManager,
    server: Arc<DnsServer>,
    domain: String,
    ttl: u32,
) {
    let mut changes = StoreWatch::new(manager.store().as_ref(), |e| {
        (e.key.rtype == ResourceType::Config && mesh_of_config(&e.key.name).is_some()).then_some(())
    });
    server.set_zone(build_zone(&manager, &domain, ttl).await);
    while changes.next().await.is_some() {
        server.set_zone(build_zone(&manager, &domain, ttl).await);
    }
}
