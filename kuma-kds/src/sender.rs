//! The sending end of a KDS stream (the xDS server's role): global on `GlobalToZoneSync`, a
//! zone on `ZoneToGlobalSync`.
//!
//! The peer subscribes per type (`*`); the first response of a type is its whole state, later
//! ones carry what changed and the names removed. One response per type is in flight at a
//! time: changes made meanwhile go out together once the peer has answered. A NACK is
//! recorded, its reason logged, and the rejected resources are not sent again until they
//! change. A response larger than the peer accepts is not sent: the error names the type and
//! its size, and the other types carry on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any as PbAny;
use kuma_core::resource::{ResourceKey, ResourceType};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use crate::feed::{Changes, Feed};
use crate::stats::StreamStats;

/// What the sending end needs to know of its peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The zone's name (the peer's on global; this zone's own on a zone).
    pub zone: String,
    /// Whether names get Kuma's hash suffix (the peer announced `hash-suffix`).
    pub hash_suffix: bool,
    /// The largest message the peer accepts, in bytes.
    pub max_msg_size: usize,
}

/// Why a sending stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer's side of the stream failed.
    #[error("receiving from the peer: {0}")]
    Peer(#[from] tonic::Status),
    /// The peer went away.
    #[error("the peer closed the stream")]
    Closed,
}

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    /// The nonce of the response awaiting the peer's answer.
    in_flight: Option<String>,
    /// The feed revision this stream has looked at (`None`: not yet, send everything).
    seen: Option<u64>,
    /// What the peer has: wire name -> (key, version).
    sent: HashMap<String, (ResourceKey, String)>,
    /// The last response was not sent (too large): the next one diffs the whole type.
    full: bool,
}

/// Serves one peer from `feed` until either side ends the stream: `requests` are the peer's
/// delta requests (subscriptions, ACKs, NACKs), `responses` takes what goes out.
pub async fn serve<S>(
    feed: Arc<Feed>,
    peer: Peer,
    mut requests: S,
    responses: mpsc::Sender<DeltaDiscoveryResponse>,
    stats: Arc<StreamStats>,
) -> Result<(), SendError>
where
    S: Stream<Item = Result<DeltaDiscoveryRequest, tonic::Status>> + Unpin,
{
    let mut changes = feed.subscribe();
    let mut types: BTreeMap<ResourceType, TypeState> = BTreeMap::new();
    let mut nonce: u64 = 0;
    loop {
        if feed.loaded() {
            for (rtype, state) in types.iter_mut() {
                if !state.subscribed || state.in_flight.is_some() {
                    continue;
                }
                let revision = feed.type_revision(*rtype);
                if state.seen.is_some_and(|seen| seen >= revision) {
                    continue;
                }
                let first = state.seen.is_none();
                let Some(response) = build(&feed, &peer, *rtype, state, revision, first, &stats)
                else {
                    continue;
                };
                nonce += 1;
                let response = DeltaDiscoveryResponse {
                    nonce: nonce.to_string(),
                    ..response
                };
                state.in_flight = Some(response.nonce.clone());
                stats.sent(rtype.name());
                if responses.send(response).await.is_err() {
                    return Err(SendError::Closed);
                }
            }
        }
        tokio::select! {
            request = requests.next() => {
                let request = match request {
                    Some(r) => r?,
                    None => return Ok(()),
                };
                handle_request(&mut types, request, &peer, &stats);
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn handle_request(
    types: &mut BTreeMap<ResourceType, TypeState>,
    request: DeltaDiscoveryRequest,
    peer: &Peer,
    stats: &StreamStats,
) {
    let Some(rtype) = ResourceType::from_name(&request.type_url) else {
        tracing::warn!(zone = %peer.zone, type_url = %request.type_url, "KDS: request for an unknown type ignored");
        return;
    };
    let state = types.entry(rtype).or_default();
    if !request.response_nonce.is_empty() {
        if state.in_flight.as_deref() == Some(request.response_nonce.as_str()) {
            state.in_flight = None;
        }
        match &request.error_detail {
            Some(status) => {
                stats.rejected(rtype.name());
                tracing::warn!(zone = %peer.zone, r#type = rtype.name(), reason = %status.message, "KDS: the peer rejected resources");
            }
            None => stats.acked(rtype.name()),
        }
    } else if request.resource_names_subscribe.iter().any(|n| n == "*") && !state.subscribed {
        state.subscribed = true;
        state.seen = None;
        state.in_flight = None;
    }
}

/// The response that brings the peer up to `revision` of `rtype`, or `None` when nothing
/// changed for it (a first response always goes out, empty or not).
fn build(
    feed: &Feed,
    peer: &Peer,
    rtype: ResourceType,
    state: &mut TypeState,
    revision: u64,
    first: bool,
    stats: &StreamStats,
) -> Option<DeltaDiscoveryResponse> {
    let mut added: Vec<(String, ResourceKey, Arc<crate::feed::Encoded>)> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let consider = |entry: &crate::feed::Entry, added: &mut Vec<_>| -> Option<String> {
        if !feed.sends(entry, &peer.zone) {
            return None;
        }
        match feed.encoded(entry, peer.hash_suffix) {
            Ok(e) => {
                let name = e.wire_name.clone();
                let current = state.sent.get(&name).map(|(_, v)| v.as_str());
                if current != Some(e.version.as_str()) {
                    added.push((name.clone(), entry.resource.key(), e));
                }
                Some(name)
            }
            Err(err) => {
                tracing::error!(zone = %peer.zone, error = %err, "KDS: a resource cannot be sent");
                None
            }
        }
    };
    let since = if first || state.full {
        None
    } else {
        state.seen
    };
    match feed.changes(rtype, since) {
        Changes::All(entries) => {
            let mut wanted = std::collections::HashSet::new();
            for entry in &entries {
                if let Some(name) = consider(entry, &mut added) {
                    wanted.insert(name);
                }
            }
            removed.extend(state.sent.keys().filter(|n| !wanted.contains(*n)).cloned());
        }
        Changes::Since {
            changed,
            removed: gone,
        } => {
            let mut changed_keys = std::collections::HashSet::new();
            for entry in &changed {
                changed_keys.insert(entry.resource.key());
                let wanted = consider(entry, &mut added);
                // A resource no longer sent (or renamed) leaves the peer.
                let key = entry.resource.key();
                removed.extend(
                    state
                        .sent
                        .iter()
                        .filter(|(n, (k, _))| *k == key && Some(*n) != wanted.as_ref())
                        .map(|(n, _)| n.clone()),
                );
            }
            removed.extend(
                state
                    .sent
                    .iter()
                    .filter(|(_, (k, _))| gone.contains(k) && !changed_keys.contains(k))
                    .map(|(n, _)| n.clone()),
            );
        }
    }
    state.seen = Some(revision);
    if added.is_empty() && removed.is_empty() && !first {
        return None;
    }
    let size: usize = added
        .iter()
        .map(|(n, _, e)| e.any.value.len() + n.len() + e.version.len() + 16)
        .sum::<usize>()
        + removed.iter().map(|n| n.len() + 2).sum::<usize>();
    if size > peer.max_msg_size {
        tracing::error!(
            zone = %peer.zone,
            r#type = rtype.name(),
            bytes = size,
            limit = peer.max_msg_size,
            "KDS: the {} response is {size} bytes, over the {} byte message limit; not sent (the other types carry on)",
            rtype.name(),
            peer.max_msg_size
        );
        stats.oversized(rtype.name(), size);
        state.full = true;
        return None;
    }
    state.full = false;
    for name in &removed {
        state.sent.remove(name);
    }
    let resources = added
        .into_iter()
        .map(|(name, key, e)| {
            state.sent.insert(name.clone(), (key, e.version.clone()));
            XdsResource {
                name,
                version: e.version.clone(),
                resource: Some(PbAny {
                    type_url: e.any.type_url.clone(),
                    value: e.any.value.clone(),
                }),
                ..Default::default()
            }
        })
        .collect();
    Some(DeltaDiscoveryResponse {
        type_url: rtype.name().to_string(),
        resources,
        removed_resources: removed,
        ..Default::default()
    })
}
