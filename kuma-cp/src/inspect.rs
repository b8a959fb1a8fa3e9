//! The API's view of what the snapshot cache serves each proxy.

use std::sync::Arc;

use kuma_api::inspect::ProxyConfigSource;
use kuma_xds::generate::node_id;
use serde_json::Value;
use xds_server::cache::SnapshotCache;

/// Renders the snapshot the cache holds for a Dataplane.
pub struct CacheInspector(pub Arc<SnapshotCache>);

impl ProxyConfigSource for CacheInspector {
    fn proxy_config(&self, mesh: &str, name: &str) -> Option<Result<Value, String>> {
        let snapshot = self.0.get(&node_id(mesh, name))?;
        Some(xds_server::inspect::snapshot_json(&snapshot))
    }
}
