//! Event-driven config generation: store changes reach the affected proxies only.
//!
//! The reconciler listens to the store's change stream. A change marks its mesh dirty; after a
//! short debounce (changes arriving meanwhile are folded in) every Dataplane of each dirty mesh
//! gets a freshly generated snapshot. The cache ignores snapshots whose content did not change,
//! so proxies that are not affected receive nothing. If the reconciler falls behind the stream,
//! it regenerates everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuma_core::manager::ResourceManager;
use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::{ResourceKey, ResourceType, Scope};
use kuma_core::store::ListQuery;
use kuma_xds::cache::SnapshotCache;
use kuma_xds::generate::{MeshContext, ProxyContext, SnapshotGenerator, node_id};

use crate::lifecycle::ProxyRegistry;
use crate::metrics::Metrics;
use tokio::sync::broadcast::error::RecvError;

/// Keeps the snapshot cache in step with the store.
pub struct Reconciler {
    manager: ResourceManager,
    cache: Arc<SnapshotCache>,
    generator: Arc<dyn SnapshotGenerator>,
    registry: Arc<ProxyRegistry>,
    debounce: Duration,
    /// Node ids with a snapshot, per mesh (to drop those whose Dataplane is gone).
    nodes: BTreeMap<String, BTreeSet<String>>,
    metrics: Option<Arc<Metrics>>,
    /// When the first change of the batch being applied arrived.
    changed_at: Instant,
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
            manager,
            cache,
            generator,
            registry,
            debounce,
            nodes: BTreeMap::new(),
            metrics: None,
            changed_at: Instant::now(),
        }
    }

    /// Records generation times, and the snapshots waiting for delivery, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn all_meshes(&self) -> BTreeSet<String> {
        let mut meshes: BTreeSet<String> = self.nodes.keys().cloned().collect();
        if let Ok(page) = self.manager.list(&ListQuery::all(ResourceType::Mesh)).await {
            meshes.extend(page.items.into_iter().map(|m| m.meta.name));
        }
        meshes
    }

    /// Regenerates the snapshot of every Dataplane in `mesh`.
    pub async fn sync_mesh(&mut self, mesh: &str) {
        let dataplanes = match self
            .manager
            .list(&ListQuery::in_mesh(ResourceType::Dataplane, mesh))
            .await
        {
            Ok(page) => page.items,
            Err(e) => {
                tracing::warn!(mesh, error = %e, "cannot list dataplanes; keeping current snapshots");
                return;
            }
        };
        let policies = match self.manager.mesh_policies(mesh).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(mesh, error = %e, "cannot list policies; keeping current snapshots");
                return;
            }
        };
        let mesh_spec = match self
            .manager
            .get(&ResourceKey::global(ResourceType::Mesh, mesh))
            .await
        {
            Ok(r) => r.spec_as::<MeshSpec>().cloned().unwrap_or_default(),
            Err(_) => MeshSpec::default(),
        };
        let mut current = BTreeSet::new();
        let mesh_context = MeshContext::new(mesh, &dataplanes)
            .with_spec(&mesh_spec)
            .with_policies(&policies);
        for r in &dataplanes {
            let node = node_id(mesh, &r.meta.name);
            let Some(ctx) = ProxyContext::new(&mesh_context, r, self.registry.get(&node)) else {
                continue;
            };
            current.insert(node.clone());
            let started = Instant::now();
            let snapshot = match self.generator.generate(&ctx) {
                Ok(s) => s,
                Err(e) => {
                    // The proxy keeps the last configuration it accepted.
                    tracing::warn!(node, error = %e, "cannot generate config; keeping the current snapshot");
                    continue;
                }
            };
            if let Some(m) = &self.metrics {
                m.generation.observe(started.elapsed().as_secs_f64());
                let versions: Vec<(String, String)> = snapshot
                    .type_urls()
                    .map(|t| (t.to_string(), snapshot.version(t)))
                    .collect();
                if self.cache.set(&node, snapshot) {
                    m.snapshot_set(&node, self.changed_at, versions);
                }
            } else {
                self.cache.set(&node, snapshot);
            }
        }
        for gone in self
            .nodes
            .get(mesh)
            .map(|n| n.difference(&current).cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            self.cache.remove(&gone);
        }
        if current.is_empty() {
            self.nodes.remove(mesh);
        } else {
            self.nodes.insert(mesh.to_string(), current);
        }
    }

    /// Runs until the store's change stream closes.
    pub async fn run(mut self) {
        let mut events = self.manager.store().watch();
        self.changed_at = Instant::now();
        for mesh in self.all_meshes().await {
            self.sync_mesh(&mesh).await;
        }
        loop {
            let mut dirty = BTreeSet::new();
            let mut everything = false;
            match events.recv().await {
                Ok(e) => {
                    let mesh = mesh_of(&e.key);
                    if mesh.is_empty() {
                        continue; // nothing to regenerate: no need to wait for more
                    }
                    dirty.insert(mesh);
                }
                Err(RecvError::Lagged(_)) => everything = true,
                Err(RecvError::Closed) => return,
            }
            self.changed_at = Instant::now();
            tokio::time::sleep(self.debounce).await;
            loop {
                match events.try_recv() {
                    Ok(e) => {
                        dirty.insert(mesh_of(&e.key));
                    }
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        everything = true
                    }
                    Err(_) => break,
                }
            }
            if everything {
                dirty = self.all_meshes().await;
            }
            for mesh in dirty.into_iter().filter(|m| !m.is_empty()) {
                self.sync_mesh(&mesh).await;
            }
        }
    }
}

/// The mesh a change belongs to (a Mesh's own name for Mesh changes; empty for other global
/// types and for insights, which describe proxies and never feed config generation).
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
    use super::*;

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
}
