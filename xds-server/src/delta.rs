//! Incremental (delta) ADS streams.
//!
//! Per type the stream tracks the subscribed names (or wildcard) and the version of each
//! resource the proxy has. A push sends only resources whose version differs and lists as
//! removed those the proxy has that are gone (or that it subscribed to and do not exist). What
//! was sent counts as known, so a NACKed version is not sent again; ACKs and NACKs are
//! recognised by nonce (an answer to an older response counts too), and subscription changes
//! apply whatever the nonce. A first request that names nothing subscribes to the whole type.
//!
//! A push larger than [`MAX_RESPONSE_BYTES`] of resources goes out as several responses, each
//! answered on its own; only the answer to the last one reports the type's version as ACKed.
//! The stream's send buffer then stays small: the gRPC layer keeps a stream's encoding buffer
//! as large as the largest message it encoded, and a proxy's whole config in one message would
//! keep megabytes per stream for the stream's life.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cache::{Snapshot, format_resource_version};
use crate::server::Callbacks;
use crate::stream::{Closed, Protocol};
use crate::types::in_push_order;
use crate::wire::{DeltaResource, DeltaResponse};
use envoy_types::pb::envoy::config::core::v3::Node;

/// Responses per type whose answer is still awaited, at most.
const MAX_UNANSWERED: usize = 256;

/// Resource bytes in one response, at most (a larger resource goes alone).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024;

/// A response whose answer is awaited.
#[derive(Debug)]
struct Unanswered {
    nonce: String,
    /// The type's snapshot version when it was sent.
    version: String,
    /// It completed a push: its ACK accepts `version`.
    last: bool,
}

/// A version a proxy has of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// One this server sent (its hash, see
    /// [`TypeResources::resource_version_hash`](crate::cache::TypeResources::resource_version_hash)).
    Sent(u64),
    /// One the proxy says it has (from `initial_resource_versions`, when it reconnects).
    Told(String),
}

impl Known {
    /// Whether this is version `hash`.
    fn is(&self, hash: u64) -> bool {
        match self {
            Known::Sent(h) => *h == hash,
            Known::Told(v) => *v == format_resource_version(hash),
        }
    }
}

#[derive(Debug, Default)]
struct DeltaTypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name -> version the proxy has (or was last sent).
    known: BTreeMap<String, Known>,
    /// Responses not yet ACKed or NACKed, oldest first. A delta proxy answers each response,
    /// so an answer to an older one still counts once a newer one went out.
    unanswered: std::collections::VecDeque<Unanswered>,
    /// Names subscribed to that must be answered even if they do not exist.
    pending: BTreeSet<String>,
}

pub(crate) struct DeltaStream<C: Callbacks> {
    id: u64,
    node_id: String,
    callbacks: Arc<C>,
    tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    types: BTreeMap<String, DeltaTypeState>,
    snapshot: Option<Arc<Snapshot>>,
    nonce: u64,
}

impl<C: Callbacks> DeltaStream<C> {
    pub(crate) fn new(
        id: u64,
        callbacks: Arc<C>,
        tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    ) -> Self {
        DeltaStream {
            id,
            node_id: String::new(),
            callbacks,
            tx,
            types: BTreeMap::new(),
            snapshot: None,
            nonce: 0,
        }
    }

    async fn handle_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        self.callbacks
            .on_delta_request(self.id, &self.node_id, &req);
        if req.type_url.is_empty() {
            return Ok(());
        }
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();
        let answered = state
            .unanswered
            .iter()
            .position(|u| !req.response_nonce.is_empty() && u.nonce == req.response_nonce)
            .and_then(|at| state.unanswered.remove(at));
        if let Some(answered) = answered {
            match &req.error_detail {
                Some(err) => self.callbacks.on_nack(
                    self.id,
                    &self.node_id,
                    &req.type_url,
                    &answered.version,
                    &err.message,
                ),
                None if answered.last => {
                    self.callbacks
                        .on_ack(self.id, &self.node_id, &req.type_url, &answered.version)
                }
                None => {}
            }
        }
        let state = self.types.entry(req.type_url.clone()).or_default();
        if first {
            state.known = req
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (name.clone(), Known::Told(version.clone())))
                .collect();
            // As go-control-plane: a first request that names nothing subscribes to every
            // resource of its type, whatever the type.
            state.wildcard = req.resource_names_subscribe.is_empty();
        }
        let mut changed = first;
        for name in &req.resource_names_subscribe {
            if name == "*" {
                changed |= !state.wildcard;
                state.wildcard = true;
            } else if state.names.insert(name.clone()) {
                state.pending.insert(name.clone());
                changed = true;
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.pending.remove(name);
            }
            // The proxy drops what it unsubscribed from; forget its version so a
            // re-subscription is answered.
            state.known.remove(name);
        }
        if changed {
            self.push(&req.type_url).await
        } else {
            Ok(())
        }
    }

    async fn push_all(&mut self) -> Result<(), Closed> {
        for t in in_push_order(self.types.keys()) {
            self.push(&t).await?;
        }
        Ok(())
    }

    /// Sends what changed for `type_url` since the proxy's known versions; nothing when nothing
    /// changed.
    async fn push(&mut self, type_url: &str) -> Result<(), Closed> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let current = snapshot.get(type_url);
        let wanted = |name: &str| state.wildcard || state.names.contains(name);
        let mut resources = Vec::new();
        let mut sent = Vec::new();
        if let Some(t) = current {
            for (name, any) in t.iter().filter(|(n, _)| wanted(n)) {
                let hash = t.version_hash_of(any);
                if !state.known.get(name).is_some_and(|k| k.is(hash)) {
                    sent.push((name.to_string(), hash));
                    resources.push(DeltaResource {
                        name: name.to_string(),
                        version: format_resource_version(hash),
                        resource: any.clone(),
                    });
                }
            }
        }
        let present = |name: &str| wanted(name) && current.is_some_and(|t| t.contains(name));
        let mut removed: Vec<String> = state
            .known
            .keys()
            .filter(|n| !present(n))
            .cloned()
            .collect();
        removed.extend(
            state
                .pending
                .iter()
                .filter(|n| !present(n) && !state.known.contains_key(*n))
                .cloned(),
        );
        removed.sort();
        removed.dedup();
        state.pending.clear();
        if resources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        for (name, hash) in sent {
            state.known.insert(name, Known::Sent(hash));
        }
        for name in &removed {
            state.known.remove(name);
        }
        let version = snapshot.version(type_url);
        let mut chunks = chunked(resources).peekable();
        let mut removed = Some(removed);
        while let Some(resources) = chunks.next() {
            let last = chunks.peek().is_none();
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            let Some(state) = self.types.get_mut(type_url) else {
                return Ok(());
            };
            state.unanswered.push_back(Unanswered {
                nonce: nonce.clone(),
                version: version.clone(),
                last,
            });
            // A proxy that never answers does not grow the list without end.
            if state.unanswered.len() > MAX_UNANSWERED {
                state.unanswered.pop_front();
            }
            let response = DeltaResponse {
                system_version_info: version.clone(),
                resources,
                type_url: type_url.to_string(),
                // Removals go with the last response, after everything that replaces them.
                removed_resources: if last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce,
            };
            self.callbacks
                .on_delta_response(self.id, &self.node_id, &response);
            self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// `resources` in runs of at most [`MAX_RESPONSE_BYTES`] (a larger resource alone); one empty
/// run when there are none (a push of removals only).
fn chunked(resources: Vec<DeltaResource>) -> impl Iterator<Item = Vec<DeltaResource>> {
    let mut runs: Vec<Vec<DeltaResource>> = vec![Vec::new()];
    let mut bytes = 0;
    for r in resources {
        let size = r.resource.encoded_any().len();
        if bytes + size > MAX_RESPONSE_BYTES && runs.last().is_some_and(|run| !run.is_empty()) {
            runs.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(run) = runs.last_mut() {
            run.push(r);
        }
    }
    runs.into_iter()
}

impl<C: Callbacks> Protocol for DeltaStream<C> {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn start(&mut self, node_id: String, snapshot: Option<Arc<Snapshot>>) {
        self.node_id = node_id;
        self.snapshot = snapshot;
    }

    async fn handle(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        self.handle_request(req).await
    }

    async fn snapshot_changed(&mut self, snapshot: Option<Arc<Snapshot>>) -> Result<(), Closed> {
        self.snapshot = snapshot;
        self.push_all().await
    }
}
