//! The multi-zone parts of a control plane: global's KDS server (every instance serves the
//! zones that dial it), and a federated zone's KDS client (the leader alone keeps the
//! connection to global; another instance takes over when it stops leading).

use std::sync::Arc;
use std::time::Duration;

use kuma_core::store::ResourceStore;
use kuma_kds::feed::{Feed, Side};
use kuma_kds::global::{GlobalKds, GlobalSettings};
use kuma_kds::zone::{ZoneSettings, tls_client_config};
use tokio::sync::watch;

use crate::config::Config;
use crate::{StartError, serve};

/// Starts global's feed and zone insights; the returned server is routed on the KDS port.
pub(crate) fn start_global(
    config: &Config,
    store: &Arc<dyn ResourceStore>,
    instance_id: &str,
    background: &mut serve::Servers,
) -> GlobalKds {
    let kds = &config.multizone.global.kds;
    let feed = Feed::new(Side::Global);
    background
        .0
        .push(tokio::spawn(run_feed(feed.clone(), store.clone())));
    let health = &kds.zone_health_check;
    let on = !health.timeout.get().is_zero();
    let server = GlobalKds::new(
        store.clone(),
        feed,
        GlobalSettings {
            instance_id: instance_id.to_string(),
            max_msg_size: kds.max_msg_size as usize,
            insight_flush_interval: kds.zone_insight_flush_interval.get(),
            health_poll_interval: on.then(|| health.poll_interval.get()),
            health_timeout: on.then(|| health.timeout.get()),
        },
    );
    background
        .0
        .push(tokio::spawn(server.clone().run_insights()));
    server
}

async fn run_feed(feed: Arc<Feed>, store: Arc<dyn ResourceStore>) {
    // The store's change stream ends only with the store; an error is a store read failing.
    if let Err(e) = feed.run(store).await {
        tracing::error!(error = %e, "KDS: following the store failed; no more changes are sent");
    }
}

/// The zone's KDS client settings from `config`; `None` when the zone is not federated.
pub(crate) fn zone_settings(
    config: &Config,
    instance_id: &str,
) -> Result<Option<ZoneSettings>, StartError> {
    let zone = &config.multizone.zone;
    if zone.global_address.is_empty() {
        return Ok(None);
    }
    let tls = if zone.global_address.starts_with("grpcs://") {
        let ca = match zone.kds.root_ca_file.as_str() {
            "" => None,
            path => Some(std::fs::read(path).map_err(|e| {
                StartError::Tls(format!("multizone.zone.kds.rootCaFile {path}: {e}").into())
            })?),
        };
        Some(
            tls_client_config(ca.as_deref(), zone.kds.tls_skip_verify)
                .map_err(|e| StartError::Tls(e.into()))?,
        )
    } else {
        None
    };
    Ok(Some(ZoneSettings {
        zone: zone.name.clone(),
        global_address: zone.global_address.clone(),
        tls,
        max_msg_size: zone.kds.max_msg_size as usize,
        instance_id: instance_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_json: crate::masked_config(config).to_string(),
        backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(10),
    }))
}

/// Keeps the zone connected to global while this instance leads.
pub(crate) async fn zone_while_leading(
    settings: ZoneSettings,
    store: Arc<dyn ResourceStore>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!(zone = %settings.zone, global = %settings.global_address, "KDS: leading; connecting to global");
        let feed = Feed::new(Side::Zone(settings.zone.clone()));
        // Aborted when this task is (the control plane stops) or leadership ends.
        let _following = serve::Servers(vec![tokio::spawn(run_feed(feed.clone(), store.clone()))]);
        let (stop, stopped) = watch::channel(false);
        let client = kuma_kds::zone::run(settings.clone(), store.clone(), feed, stopped);
        tokio::pin!(client);
        let lost = tokio::select! {
            () = &mut client => false,
            changed = async { leader.wait_for(|l| !*l).await.is_ok() } => changed,
        };
        if !lost {
            // Leadership can no longer change: a single instance leads for good.
            client.await;
            return;
        }
        let _ = stop.send(true);
        client.await;
        tracing::info!(zone = %settings.zone, "KDS: no longer leading; disconnected from global");
    }
}

/// On global: makes the builtin CA of every builtin mTLS backend of every Mesh as the Mesh is
/// written, so that KDS sends the same CA (the mesh's secrets) to every zone, whose proxies
/// then trust each other; federated zones never make one (see
/// [`kuma_ca::mesh_ca::CaManagers::federated`]). Runs on the leader; reads a Mesh only when it
/// changes.
pub(crate) async fn keep_builtin_cas(
    manager: kuma_core::manager::ResourceManager,
    key_type: kuma_ca::KeyType,
    leader: watch::Receiver<bool>,
) {
    use kuma_core::model::mesh::MeshSpec;
    use kuma_core::resource::{ResourceKey, ResourceType};
    use kuma_core::watch::StoreWatch;
    let mut changes = StoreWatch::new(manager.store().as_ref(), |e| {
        (e.key.rtype == ResourceType::Mesh).then(|| e.key.name.clone())
    });
    let mut pending: std::collections::BTreeSet<String> = match manager
        .list(&kuma_core::store::ListQuery::all(ResourceType::Mesh))
        .await
    {
        Ok(page) => page.items.into_iter().map(|m| m.meta.name).collect(),
        Err(_) => Default::default(),
    };
    loop {
        if *leader.borrow() {
            for mesh in std::mem::take(&mut pending) {
                let Ok(resource) = manager
                    .get(&ResourceKey::global(ResourceType::Mesh, &mesh))
                    .await
                else {
                    continue;
                };
                let Some(mtls) = resource.spec_as::<MeshSpec>().and_then(|s| s.mtls.as_ref())
                else {
                    continue;
                };
                for backend in mtls.backends.iter().filter(|b| b.kind == "builtin") {
                    if let Err(e) =
                        kuma_ca::mesh_ca::ensure_builtin(&manager, &mesh, &backend.name, key_type)
                            .await
                    {
                        tracing::warn!(mesh, backend = %backend.name, error = %kuma_core::errors::Chain(&e), "cannot make the mesh's builtin CA; retried at the mesh's next change");
                    }
                }
            }
        }
        let Some(batch) = changes.next().await else {
            return;
        };
        if batch.resync
            && let Ok(page) = manager
                .list(&kuma_core::store::ListQuery::all(ResourceType::Mesh))
                .await
        {
            pending.extend(page.items.into_iter().map(|m| m.meta.name));
        }
        pending.extend(batch.items);
    }
}
