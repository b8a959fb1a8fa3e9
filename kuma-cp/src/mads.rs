//! MADS in the control plane: every instance serves the monitoring assignments of the
//! Dataplanes in its store, rebuilt when a Mesh or a Dataplane changes.

use kuma_core::manager::ResourceManager;
use kuma_core::resource::ResourceType;
use kuma_core::store::ListQuery;
use kuma_xds::mads::{Mads, assignments};

/// Keeps `mads` in step with the store's Meshes and Dataplanes until the store's change
/// stream ends.
pub async fn follow_assignments(manager: ResourceManager, mads: Mads) {
    let concerns = |k: &kuma_core::resource::ResourceKey| {
        matches!(k.rtype, ResourceType::Mesh | ResourceType::Dataplane)
    };
    crate::follow::rebuild_on_changes(&manager, concerns, || async {
        let (meshes, dataplanes) = (
            ListQuery::all(ResourceType::Mesh),
            ListQuery::all(ResourceType::Dataplane),
        );
        match tokio::try_join!(manager.list(&meshes), manager.list(&dataplanes)) {
            Ok((meshes, dataplanes)) => {
                let list = assignments(&meshes.items, &dataplanes.items);
                tracing::debug!(assignments = list.len(), "monitoring assignments rebuilt");
                mads.publish(&list);
            }
            // The assignments in force stay until the store answers again.
            Err(e) => tracing::warn!(error = %e, "cannot list resources for MADS"),
        }
    })
    .await;
}
