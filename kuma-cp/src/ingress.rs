//! Keeps this zone's ZoneIngresses' `availableServices` current: what other zones may reach
//! through them ([`kuma_xds::generate::zone_ingress::available_services`]).
//!
//! Event-driven, not polled: it holds the zone's Dataplanes and ZoneIngresses, takes in each
//! change (one store read per changed resource), and at most once per
//! `multizone.zone.ingressUpdateInterval` writes the ingresses whose list differs. An idle
//! zone reads and writes nothing. Only the leader writes.

use std::collections::BTreeMap;
use std::time::Duration;

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::zone::ZoneIngressSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::{ListQuery, StoreError};
use kuma_core::watch::StoreWatch;
use kuma_xds::generate::zone_ingress::available_services;
use tokio::sync::watch;

/// What the updater holds between changes.
struct Updater {
    manager: ResourceManager,
    /// This zone's name: only its own ingresses are updated.
    zone: String,
    tag_filters: Vec<String>,
    dataplanes: BTreeMap<ResourceKey, Resource>,
    ingresses: BTreeMap<ResourceKey, Resource>,
}

impl Updater {
    /// Lists every Dataplane and ZoneIngress.
    async fn load(&mut self) -> Result<(), ManagerError> {
        for (rtype, into) in [
            (ResourceType::Dataplane, &mut self.dataplanes),
            (ResourceType::ZoneIngress, &mut self.ingresses),
        ] {
            let page = self.manager.list(&ListQuery::all(rtype)).await?;
            *into = page.items.into_iter().map(|r| (r.key(), r)).collect();
        }
        Ok(())
    }

    /// Reads the changed resources again.
    async fn take(&mut self, keys: Vec<ResourceKey>) -> Result<(), ManagerError> {
        for key in keys {
            let into = if key.rtype == ResourceType::Dataplane {
                &mut self.dataplanes
            } else {
                &mut self.ingresses
            };
            match self.manager.get(&key).await {
                Ok(r) => {
                    into.insert(key, r);
                }
                Err(ManagerError::Store(StoreError::NotFound(_))) => {
                    into.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes the list to each of this zone's ingresses that lists something else; returns
    /// how many were written.
    async fn update(&mut self) -> usize {
        let services = available_services(self.dataplanes.values(), &self.tag_filters);
        let mut written = 0;
        for ingress in self.ingresses.values_mut() {
            let Spec::ZoneIngress(spec) = &ingress.spec else {
                continue;
            };
            if !is_local(spec, &self.zone) || spec.available_services == services {
                continue;
            }
            let mut updated = ingress.clone();
            if let Spec::ZoneIngress(spec) = &mut updated.spec {
                spec.available_services = services.clone();
            }
            match self.manager.update(updated).await {
                Ok(stored) => {
                    *ingress = stored;
                    written += 1;
                }
                // Changed meanwhile: its change event brings it back, and the next update.
                Err(e) => {
                    tracing::debug!(ingress = %ingress.meta.name, error = %kuma_core::errors::Chain(&e), "availableServices not written");
                }
            }
        }
        written
    }
}

/// Whether the ingress is this zone's (a local one, or one that names no zone).
fn is_local(spec: &ZoneIngressSpec, zone: &str) -> bool {
    spec.zone
        .as_deref()
        .is_none_or(|z| z.is_empty() || z == zone)
}

/// Runs the updater until the store's change stream closes; writes only while `leader`.
pub(crate) async fn keep_available_services(
    manager: ResourceManager,
    zone: String,
    interval: Duration,
    tag_filters: Vec<String>,
    leader: watch::Receiver<bool>,
) {
    let mut changes = StoreWatch::new(manager.store().as_ref(), |e| {
        matches!(
            e.key.rtype,
            ResourceType::Dataplane | ResourceType::ZoneIngress
        )
        .then(|| e.key.clone())
    })
    .with_debounce(interval);
    let mut updater = Updater {
        manager,
        zone,
        tag_filters,
        dataplanes: BTreeMap::new(),
        ingresses: BTreeMap::new(),
    };
    let mut loaded = updater.load().await.is_ok();
    if loaded && *leader.borrow() {
        updater.update().await;
    }
    while let Some(batch) = changes.next().await {
        let mut keys = batch.items;
        keys.sort();
        keys.dedup();
        let read = if batch.resync || !loaded {
            updater.load().await
        } else {
            updater.take(keys).await
        };
        loaded = match read {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %kuma_core::errors::Chain(&e), "cannot read Dataplanes for the zone ingresses; listing them again at the next change");
                false
            }
        };
        if loaded && *leader.borrow() {
            updater.update().await;
        }
        // At most one update per interval.
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kuma_core::manager::ManagerOptions;
    use kuma_core::resource::parse_yaml;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_zones_ingresses_list_its_ready_services_and_are_written_only_on_change() {
        let manager = ResourceManager::new(
            Arc::new(kuma_store::MemoryStore::new()),
            ManagerOptions {
                zone: Some("zone-1".into()),
                ..ManagerOptions::default()
            },
        );
        manager.ensure_default_mesh().await.unwrap();
        let ingress = parse_yaml(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 10.0.0.9\n  port: 10001\n",
        )
        .unwrap();
        manager.apply(ingress).await.unwrap();
        let remote = parse_yaml(
            "type: ZoneIngress\nname: zone-2.ingress\nzone: zone-2\nnetworking:\n  address: 10.0.1.9\n  port: 10001\n",
        )
        .unwrap();
        manager.apply(remote).await.unwrap();
        let dp = parse_yaml(
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: backend}\n",
        )
        .unwrap();
        manager.apply(dp).await.unwrap();
        let (_tx, leader) = watch::channel(true);
        let task = tokio::spawn(keep_available_services(
            manager.clone(),
            "zone-1".into(),
            Duration::from_millis(10),
            vec![],
            leader,
        ));
        let listed = |name: &'static str| {
            let manager = manager.clone();
            async move {
                let r = manager
                    .get(&ResourceKey::global(ResourceType::ZoneIngress, name))
                    .await
                    .unwrap();
                r.spec_as::<ZoneIngressSpec>()
                    .unwrap()
                    .available_services
                    .clone()
            }
        };
        kuma_testkit::eventually("the ingress lists backend", || async {
            listed("ingress-1").await.len() == 1
        })
        .await;
        let first = listed("ingress-1").await;
        assert_eq!(first[0].instances, Some(1));
        assert_eq!(first[0].mesh.as_deref(), Some("default"));
        assert_eq!(
            first[0].tags.get("kuma.io/zone").map(String::as_str),
            Some("zone-1")
        );
        assert!(
            listed("zone-2.ingress").await.is_empty(),
            "another zone's is not ours"
        );

        // A second instance: written again with 2.
        let dp2 = parse_yaml(
            "type: Dataplane\nmesh: default\nname: b-2\nnetworking:\n  address: 10.0.0.2\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: backend}\n",
        )
        .unwrap();
        manager.apply(dp2).await.unwrap();
        kuma_testkit::eventually("the ingress counts two instances", || async {
            listed("ingress-1").await[0].instances == Some(2)
        })
        .await;
        let version = manager
            .get(&ResourceKey::global(ResourceType::ZoneIngress, "ingress-1"))
            .await
            .unwrap()
            .meta
            .version;
        // A change that moves nothing it lists writes nothing.
        let mut dp2 = manager
            .get(&ResourceKey::new(ResourceType::Dataplane, "default", "b-2"))
            .await
            .unwrap();
        dp2.meta.labels.insert("team".into(), "a".into());
        manager.apply(dp2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = manager
            .get(&ResourceKey::global(ResourceType::ZoneIngress, "ingress-1"))
            .await
            .unwrap()
            .meta
            .version;
        assert_eq!(version, after);
        task.abort();
    }
}
