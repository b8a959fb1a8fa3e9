//! The receiving end of a KDS stream (the xDS client's role): a zone on `GlobalToZoneSync`,
//! global on `ZoneToGlobalSync`.
//!
//! It subscribes to every type the other side sends, writes each response into the store
//! ([`StoreSync`]), and answers: an ACK, or a NACK naming each rejected resource and why. A
//! rejected resource is skipped; the rest of the response is applied and the stream goes on.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use kuma_core::model::common::ZONE_TAG;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::rules::ORIGIN_LABEL;
use kuma_core::store::{ListQuery, ResourceStore, StoreError};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use crate::message;
use crate::stats::StreamStats;

/// Why a receiving stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The other side's stream failed.
    #[error("receiving from the peer: {0}")]
    Peer(#[from] tonic::Status),
    /// The other side went away.
    #[error("the peer closed the stream")]
    Closed,
    /// The store refused a write; the stream ends so that a new one starts from a full state.
    #[error("writing {rtype} to the store: {source}")]
    Store {
        /// The type being written.
        rtype: ResourceType,
        /// The store's error.
        source: StoreError,
    },
}

/// Which side receives, and so which of its resources a sync may replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiving {
    /// A zone receiving from global: it manages the resources global gave it (for the types
    /// zones also write, those labelled `kuma.io/origin: global`; what the zone made itself,
    /// labelled or not, is never replaced).
    Zone,
    /// Global receiving from zone `zone`: it manages that zone's resources (`kuma.io/zone`),
    /// owned by the zone's Zone resource so that deleting the zone removes them.
    Global {
        /// The sending zone.
        zone: String,
    },
}

/// Writes received resources into a store.
pub struct StoreSync {
    store: Arc<dyn ResourceStore>,
    receiving: Receiving,
}

impl StoreSync {
    /// Syncs into `store` as `receiving` says.
    pub fn new(store: Arc<dyn ResourceStore>, receiving: Receiving) -> Self {
        StoreSync { store, receiving }
    }

    /// Whether a resource in the local store is one this sync manages.
    fn manages(&self, r: &Resource) -> bool {
        let origin = r.meta.labels.get(ORIGIN_LABEL).map(String::as_str);
        match &self.receiving {
            Receiving::Zone => {
                !r.spec
                    .rtype()
                    .kds_flags()
                    .has(kuma_core::resource::KdsFlags::PROVIDED_BY_ZONE)
                    || origin != Some("zone")
            }
            Receiving::Global { zone } => {
                r.meta.labels.get(ZONE_TAG) == Some(zone) && origin == Some("zone")
            }
        }
    }

    /// Stamps what the receiver knows better than the sender.
    fn stamp(&self, r: &mut Resource) {
        if let Receiving::Global { zone } = &self.receiving {
            r.meta.labels.insert(ZONE_TAG.into(), zone.clone());
            r.meta.labels.insert(ORIGIN_LABEL.into(), "zone".into());
            // A zone speaks for itself only: its proxies' zone tags say so.
            if let Spec::Dataplane(dp) = &mut r.spec
                && let Some(net) = dp.networking.as_mut()
            {
                for inbound in &mut net.inbound {
                    if inbound.tags.contains_key(ZONE_TAG) {
                        inbound.tags.insert(ZONE_TAG.into(), zone.clone());
                    }
                }
                if let Some(gw) = net.gateway.as_mut()
                    && gw.tags.contains_key(ZONE_TAG)
                {
                    gw.tags.insert(ZONE_TAG.into(), zone.clone());
                }
            }
            match &mut r.spec {
                Spec::ZoneIngress(zi) => zi.zone = Some(zone.clone()),
                Spec::ZoneEgress(ze) => ze.zone = Some(zone.clone()),
                _ => {}
            }
        }
    }

    /// Applies one response: `initial` replaces every managed resource of `rtype`; otherwise
    /// `upserts` are written and `removed` deleted. Returns how many writes it made.
    pub async fn apply(
        &self,
        rtype: ResourceType,
        initial: bool,
        upserts: Vec<Resource>,
        removed: Vec<ResourceKey>,
    ) -> Result<usize, StoreError> {
        let mut current: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        if initial {
            let mut query = ListQuery::all(rtype);
            if let Receiving::Global { zone } = &self.receiving {
                // What this zone sent before; stores skip the other zones' without decoding.
                query.labels = BTreeMap::from([
                    (ZONE_TAG.to_string(), zone.clone()),
                    (ORIGIN_LABEL.to_string(), "zone".to_string()),
                ]);
            }
            let page = self.store.list(&query).await?;
            current.extend(
                page.items
                    .into_iter()
                    .filter(|r| self.manages(r))
                    .map(|r| (r.key(), r)),
            );
        } else {
            for key in upserts
                .iter()
                .map(Resource::key)
                .chain(removed.iter().cloned())
            {
                match self.store.get(&key).await {
                    Ok(r) if self.manages(&r) => {
                        current.insert(key, r);
                    }
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut writes = 0;
        let mut incoming_keys = std::collections::BTreeSet::new();
        for mut r in upserts {
            self.stamp(&mut r);
            let key = r.key();
            incoming_keys.insert(key.clone());
            match current.get(&key) {
                Some(existing) => {
                    if existing.spec == r.spec && existing.meta.labels == r.meta.labels {
                        continue;
                    }
                    let mut updated = existing.clone();
                    updated.spec = r.spec;
                    updated.meta.labels = r.meta.labels;
                    self.store.update(updated).await?;
                }
                None => {
                    let owner = match &self.receiving {
                        Receiving::Global { zone } => {
                            Some(ResourceKey::new(ResourceType::Zone, "", zone))
                        }
                        Receiving::Zone => None,
                    };
                    match self.store.create(r.clone(), owner).await {
                        Ok(_) => {}
                        // Written locally under the same name (not ours to replace).
                        Err(StoreError::AlreadyExists(_)) => {
                            tracing::warn!(key = %key, "KDS: a local resource has the name of a received one; kept the local one");
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            writes += 1;
        }
        let gone: Vec<ResourceKey> = if initial {
            current
                .keys()
                .filter(|k| !incoming_keys.contains(*k))
                .cloned()
                .collect()
        } else {
            removed
                .into_iter()
                .filter(|k| current.contains_key(k) && !incoming_keys.contains(k))
                .collect()
        };
        for key in gone {
            match self.store.delete(&key, None).await {
                Ok(()) | Err(StoreError::NotFound(_)) => writes += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(writes)
    }
}

/// What the receiving end says about itself in its first request of each type.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node id (the zone's name, as Kuma's zones send it).
    pub id: String,
    /// The node metadata (`version`, `config`, `control-plane-id`, `features`).
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// Receives `types` over one stream until it ends: sends the subscriptions on `requests`, reads
/// `responses`, syncs them with `sync`, and answers each.
pub async fn receive<S>(
    types: Vec<ResourceType>,
    node: NodeInfo,
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    mut responses: S,
    sync: StoreSync,
    stats: Arc<StreamStats>,
) -> Result<(), ReceiveError>
where
    S: Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Unpin,
{
    let short_node = || {
        Some(Node {
            id: node.id.clone(),
            ..Default::default()
        })
    };
    for rtype in &types {
        let subscribe = DeltaDiscoveryRequest {
            node: Some(Node {
                id: node.id.clone(),
                metadata: node.metadata.clone(),
                ..Default::default()
            }),
            type_url: rtype.name().to_string(),
            resource_names_subscribe: vec!["*".to_string()],
            ..Default::default()
        };
        requests
            .send(subscribe)
            .await
            .map_err(|_| ReceiveError::Closed)?;
    }
    let mut initial_done: std::collections::HashSet<ResourceType> = Default::default();
    while let Some(response) = responses.next().await {
        let response = response?;
        let Some(rtype) = ResourceType::from_name(&response.type_url).filter(|t| types.contains(t))
        else {
            let reason = format!("type {:?} is not one this side receives", response.type_url);
            let nack = DeltaDiscoveryRequest {
                node: short_node(),
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: reason,
                    details: Vec::new(),
                }),
                ..Default::default()
            };
            requests
                .send(nack)
                .await
                .map_err(|_| ReceiveError::Closed)?;
            continue;
        };
        stats.sent(rtype.name());
        let mut upserts = Vec::with_capacity(response.resources.len());
        let mut rejected = Vec::new();
        for resource in &response.resources {
            let any = resource.resource.as_ref().map(|a| message::Any {
                type_url: a.type_url.clone(),
                value: a.value.clone(),
            });
            let decoded = match any {
                Some(any) => message::decode(rtype.name(), &any).map_err(|e| e.to_string()),
                None => Err(format!("{}: resource is missing", resource.name)),
            };
            match decoded {
                Ok(r)
                    if r.spec.rtype().scope() == kuma_core::resource::Scope::Mesh
                        && r.meta.mesh.is_empty() =>
                {
                    rejected.push(format!("{rtype} {:?}: meta.mesh: must be set", r.meta.name));
                }
                Ok(r) => upserts.push(r),
                Err(reason) => rejected.push(reason),
            }
        }
        let removed: Vec<ResourceKey> = response
            .removed_resources
            .iter()
            .map(|name| removed_key(rtype, name))
            .collect();
        let initial = initial_done.insert(rtype);
        let writes = sync
            .apply(rtype, initial, upserts, removed)
            .await
            .map_err(|source| ReceiveError::Store { rtype, source })?;
        tracing::debug!(
            r#type = rtype.name(),
            writes,
            initial,
            "KDS: response applied"
        );
        let error_detail = (!rejected.is_empty()).then(|| {
            stats.rejected(rtype.name());
            let message = rejected.join("; ");
            tracing::warn!(r#type = rtype.name(), reason = %message, "KDS: rejected resources");
            RpcStatus {
                code: 3,
                message,
                details: Vec::new(),
            }
        });
        if error_detail.is_none() {
            stats.acked(rtype.name());
        }
        let answer = DeltaDiscoveryRequest {
            node: short_node(),
            type_url: rtype.name().to_string(),
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        };
        requests
            .send(answer)
            .await
            .map_err(|_| ReceiveError::Closed)?;
    }
    Ok(())
}

/// The key of a removed resource's wire name, `<name>.<mesh>` (the mesh after the last dot).
fn removed_key(rtype: ResourceType, wire_name: &str) -> ResourceKey {
    match wire_name.rsplit_once('.') {
        Some((name, mesh)) => ResourceKey::new(rtype, mesh, name),
        None => ResourceKey::new(rtype, "", wire_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_names_split_at_the_last_dot() {
        let k = removed_key(ResourceType::MeshTimeout, "t.v1-abc.default");
        assert_eq!((k.name.as_str(), k.mesh.as_str()), ("t.v1-abc", "default"));
        let k = removed_key(ResourceType::Mesh, "default.");
        assert_eq!((k.name.as_str(), k.mesh.as_str()), ("default", ""));
    }
}
