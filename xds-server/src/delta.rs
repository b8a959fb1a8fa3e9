//! Incremental (delta) ADS streams.
//!
//! Per type the stream tracks the subscribed names (or wildcard) and what the proxy has: the
//! type's resources as last pushed, held by reference, plus the few names a subscription
//! change or a reconnect made different. A push sends only resources whose version differs and
//! lists as removed those the proxy has that are gone (or that it subscribed to and do not
//! exist). Against what was pushed last only the names whose resource differs are looked at,
//! with the few a subscription change made different: the snapshot's own resources, and those
//! of its shared layer that are not the very ones pushed (a layer pushed before costs
//! nothing), so a proxy subscribing to its endpoints in many small steps costs each step only
//! its names. What was sent counts as known, so a NACKed version is not sent again; ACKs and
//! NACKs are recognised by nonce (an answer to an older response counts too), and subscription
//! changes apply whatever the nonce. A first request that names nothing subscribes to the whole type.
//!
//! A push larger than [`MAX_RESPONSE_BYTES`] of resources goes out as several responses, each
//! answered on its own; only the answer to the last one reports the type's version as ACKed.
//! A response is encoded when the proxy can take it, so a stream holds at most a few of them
//! encoded at a time, not its proxy's whole config (thousands of proxies connecting at once
//! would otherwise hold every config twice). While a push waits for the proxy, the stream keeps
//! reading: answers are taken on the spot, and subscription changes update the stream's state
//! and are pushed once the push is over. Unread requests would wait in the connection's
//! receive queue instead, which keeps its largest size for the connection's life.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::cache::{EncodedResource, Snapshot, TypeResources, format_resource_version};
use crate::names::NameSet;
use crate::server::Callbacks;
use crate::stream::{Closed, Inbox, Outbox, Protocol};
use crate::types::{in_push_order, push_rank};
use crate::wire::{DeltaResource, DeltaResponse};
use envoy_types::pb::envoy::config::core::v3::Node;

/// Responses per type whose answer is still awaited, at most.
const MAX_UNANSWERED: usize = 256;

/// Resource bytes in one response, at most (a larger resource goes alone).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024;

/// A response whose answer is awaited.
#[derive(Debug)]
struct Unanswered {
    nonce: u64,
    /// The type's snapshot version when it was sent (one string for every response of a push).
    version: Arc<str>,
    /// It completed a push: its ACK accepts `version`.
    last: bool,
}

#[derive(Debug, Default)]
struct DeltaTypeState {
    wildcard: bool,
    names: NameSet,
    /// What the proxy has: the type's resources as last pushed (those it wanted then and
    /// still wants), held by reference, so a stream costs no copy of its proxy's config.
    base: Option<TypeResources>,
    /// Exceptions to `base`: names whose version the proxy has is not base's (`None`: it has
    /// none), from unsubscriptions and from the versions a reconnecting proxy reports. Empty
    /// after every push.
    overrides: NameMap<Option<String>>,
    /// Responses not yet ACKed or NACKed, oldest first. A delta proxy answers each response,
    /// so an answer to an older one still counts once a newer one went out.
    unanswered: std::collections::VecDeque<Unanswered>,
    /// Names subscribed to since the last push: they are answered even if they do not exist.
    /// `true`: the proxy did not want the name before, so it has none of it (whatever `base`
    /// holds). Empty after every push.
    pending: NameMap<bool>,
}

/// Names to something, for a stream's short-lived bookkeeping: a hash table is one allocation
/// however many names a subscription brings (a tree is one per few names), and the names come
/// from the proxy's own requests, so only its own stream would pay for collisions.
type NameMap<V> = HashMap<String, V, BuildHasherDefault<DefaultHasher>>;

impl DeltaTypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether what the proxy has of `name`, a name it wants, is what `base` says (neither an
    /// exception nor a fresh subscription says otherwise).
    fn has_base_version(&self, name: &str) -> bool {
        !self.overrides.contains_key(name) && self.pending.get(name) != Some(&true)
    }

    /// Whether the proxy has a version of `name`, `base` being what was pushed last.
    fn knows(&self, name: &str, base: Option<&TypeResources>) -> bool {
        match self.overrides.get(name) {
            Some(known) => known.is_some(),
            None => {
                self.wants(name)
                    && self.has_base_version(name)
                    && base.is_some_and(|b| b.contains(name))
            }
        }
    }

    /// Whether the proxy has version `hash` of `name`, a name it wants, `base` being what was
    /// pushed last.
    fn knows_version(&self, name: &str, hash: u64, base: Option<&TypeResources>) -> bool {
        match self.overrides.get(name) {
            Some(known) => known
                .as_ref()
                .is_some_and(|v| *v == format_resource_version(hash)),
            None => {
                self.has_base_version(name)
                    && base.and_then(|b| b.resource_version_hash(name)) == Some(hash)
            }
        }
    }

    /// The names the proxy has a version of, `base` being what was pushed last.
    fn known_names<'a>(&'a self, base: Option<&'a TypeResources>) -> BTreeSet<&'a str> {
        let mut names: BTreeSet<&str> = base
            .iter()
            .flat_map(|b| b.names())
            .filter(|n| self.wants(n) && self.has_base_version(n))
            .collect();
        names.extend(
            self.overrides
                .iter()
                .filter(|(_, k)| k.is_some())
                .map(|(n, _)| n.as_str()),
        );
        names
    }
}

pub(crate) struct DeltaStream<C: Callbacks> {
    id: u64,
    node_id: String,
    callbacks: Arc<C>,
    tx: Outbox<DeltaResponse>,
    types: BTreeMap<String, DeltaTypeState>,
    /// Types whose subscription changed since their last push.
    due: BTreeSet<String>,
    snapshot: Option<Arc<Snapshot>>,
    nonce: u64,
}

impl<C: Callbacks> DeltaStream<C> {
    pub(crate) fn new(id: u64, callbacks: Arc<C>, tx: Outbox<DeltaResponse>) -> Self {
        DeltaStream {
            id,
            node_id: String::new(),
            callbacks,
            tx,
            types: BTreeMap::new(),
            due: BTreeSet::new(),
            snapshot: None,
            nonce: 0,
        }
    }

    async fn handle_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        inbox: &mut Inbox<DeltaDiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.take(req);
        self.push_due(inbox).await
    }

    /// Takes a request: its answer to an earlier response, and its changes to what the proxy
    /// subscribes to; a type whose subscription changed is then due a push. The request's
    /// names are kept, not copied.
    fn take(&mut self, req: DeltaDiscoveryRequest) {
        let first = !req.type_url.is_empty() && !self.types.contains_key(&req.type_url);
        self.answer(&req);
        if req.type_url.is_empty() {
            return;
        }
        let DeltaDiscoveryRequest {
            type_url,
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions,
            ..
        } = req;
        let state = self.types.entry(type_url.clone()).or_default();
        if first {
            state.overrides = initial_resource_versions
                .into_iter()
                .map(|(name, version)| (name, Some(version)))
                .collect();
            // As go-control-plane: a first request that names nothing subscribes to every
            // resource of its type, whatever the type.
            state.wildcard = subscribe.is_empty();
        }
        let mut changed = first;
        for name in subscribe {
            if name == "*" {
                if !state.wildcard {
                    // What was not wanted was not sent: the proxy does not have it.
                    let unsent: Vec<String> = state
                        .base
                        .iter()
                        .flat_map(|b| b.names())
                        .filter(|n| !state.names.contains(n) && !state.overrides.contains_key(*n))
                        .map(str::to_string)
                        .collect();
                    for n in unsent {
                        state.overrides.insert(n, None);
                    }
                    changed = true;
                }
                state.wildcard = true;
            } else if state.names.insert(&name) {
                // A proxy that names what it wants has nothing of a name it did not want
                // (unless it said otherwise when it reconnected).
                let fresh = !state.wildcard && !state.overrides.contains_key(&name);
                state.pending.insert(name, fresh);
                changed = true;
            }
        }
        for name in unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
                state.pending.remove(&name);
                // The proxy drops what it unsubscribed from; forget its version so a
                // re-subscription is answered.
                state.overrides.insert(name, None);
            }
        }
        if changed {
            self.due.insert(type_url);
        }
    }

    /// Hears the request and takes its answer (ACK or NACK) to the response its nonce names.
    fn answer(&mut self, req: &DeltaDiscoveryRequest) {
        self.callbacks.on_delta_request(self.id, &self.node_id, req);
        let Some(state) = self.types.get_mut(&req.type_url) else {
            return;
        };
        let nonce = req.response_nonce.parse::<u64>().ok();
        let answered = state
            .unanswered
            .iter()
            .position(|u| Some(u.nonce) == nonce)
            .and_then(|at| state.unanswered.remove(at));
        // A large push leaves a long queue behind: an idle stream does not keep its room.
        if state.unanswered.is_empty() && state.unanswered.capacity() > 4 {
            state.unanswered = std::collections::VecDeque::new();
        }
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
    }

    /// Hands `response` to the proxy. While the proxy has no room for it, requests are read
    /// and taken; the pushes they make due wait until this one is over.
    async fn send(
        &mut self,
        response: DeltaResponse,
        inbox: &mut Inbox<DeltaDiscoveryRequest>,
    ) -> Result<(), Closed> {
        loop {
            let request = tokio::select! {
                biased;
                permit = self.tx.reserve() => {
                    permit.map_err(|_| Closed)?.send(Box::new(Ok(response)));
                    return Ok(());
                }
                request = inbox.read_ahead() => request,
            };
            self.take(request);
        }
    }

    /// Pushes every type, then those that requests taken meanwhile made due.
    async fn push_all(&mut self, inbox: &mut Inbox<DeltaDiscoveryRequest>) -> Result<(), Closed> {
        for t in in_push_order(self.types.keys()) {
            self.push(&t, inbox).await?;
        }
        self.push_due(inbox).await
    }

    /// Pushes the types due a push, in push order, until none is (a push may take requests
    /// that make more due).
    async fn push_due(&mut self, inbox: &mut Inbox<DeltaDiscoveryRequest>) -> Result<(), Closed> {
        while let Some(t) = self
            .due
            .iter()
            .min_by_key(|t| (push_rank(t), t.as_str()))
            .cloned()
        {
            self.push(&t, inbox).await?;
        }
        Ok(())
    }

    /// Sends what changed for `type_url` since the proxy's known versions; nothing when nothing
    /// changed.
    async fn push(
        &mut self,
        type_url: &str,
        inbox: &mut Inbox<DeltaDiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.due.remove(type_url);
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let current = snapshot.get(type_url);
        // Whatever goes out, the proxy then has what is current.
        let base = std::mem::replace(&mut state.base, current.cloned());
        let base = base.as_ref();
        // What goes out, by reference: the responses are built one at a time as they are
        // sent, so a push holds no copy of the proxy's config while it waits for the proxy.
        let mut sending: Vec<(&str, &EncodedResource, u64)> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        // Against what was pushed last: only the names whose resource differs, and those
        // whose version the proxy has is not base's (a subscription change or a reconnect
        // made them exceptions). Everything else the proxy has at the current version.
        let changed = match (current, base) {
            (Some(t), Some(base)) => t.changed_since(base).map(|mut names| {
                if !state.overrides.is_empty() || !state.pending.is_empty() {
                    names.extend(state.overrides.keys().map(String::as_str));
                    names.extend(state.pending.keys().map(String::as_str));
                    names.sort_unstable();
                    names.dedup();
                }
                names
            }),
            _ => None,
        };
        let present = |name: &str| state.wants(name) && current.is_some_and(|t| t.contains(name));
        match (current, changed) {
            (Some(t), Some(changed)) => {
                for name in changed.into_iter().filter(|n| state.wants(n)) {
                    match t.get_key_value(name) {
                        Some((name, r)) => {
                            let hash = t.version_hash_of(r);
                            if !state.knows_version(name, hash, base) {
                                sending.push((name, r, hash));
                            }
                        }
                        None => {
                            if state.knows(name, base) {
                                removed.push(name.to_string());
                            }
                        }
                    }
                }
            }
            _ => {
                if let Some(t) = current {
                    for (name, r) in t.iter().filter(|(n, _)| state.wants(n)) {
                        let hash = t.version_hash_of(r);
                        if !state.knows_version(name, hash, base) {
                            sending.push((name, r, hash));
                        }
                    }
                }
                removed.extend(
                    state
                        .known_names(base)
                        .into_iter()
                        .filter(|n| !present(n))
                        .map(str::to_string),
                );
            }
        }
        removed.extend(
            state
                .pending
                .keys()
                .filter(|n| !present(n) && !state.knows(n, base))
                .cloned(),
        );
        removed.sort();
        removed.dedup();
        // Emptied, not cleared: a large subscription leaves no room behind.
        state.pending = NameMap::default();
        state.overrides = NameMap::default();
        if sending.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let version: Arc<str> = snapshot.version(type_url).into();
        let mut sending = sending.into_iter().peekable();
        let mut removed = Some(removed);
        loop {
            let resources = next_chunk(&mut sending);
            let last = sending.peek().is_none();
            self.nonce += 1;
            let Some(state) = self.types.get_mut(type_url) else {
                return Ok(());
            };
            state.unanswered.push_back(Unanswered {
                nonce: self.nonce,
                version: version.clone(),
                last,
            });
            // A proxy that never answers does not grow the list without end.
            if state.unanswered.len() > MAX_UNANSWERED {
                state.unanswered.pop_front();
            }
            let response = DeltaResponse {
                system_version_info: version.to_string(),
                resources,
                type_url: type_url.to_string(),
                // Removals go with the last response, after everything that replaces them.
                removed_resources: if last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce: self.nonce.to_string(),
            };
            self.callbacks
                .on_delta_response(self.id, &self.node_id, &response);
            self.send(response, inbox).await?;
            if last {
                return Ok(());
            }
        }
    }
}

/// The next response's resources from `sending`: at most [`MAX_RESPONSE_BYTES`] of them (a
/// larger resource alone); none when nothing is left (a push of removals only).
fn next_chunk<'a>(
    sending: &mut std::iter::Peekable<impl Iterator<Item = (&'a str, &'a EncodedResource, u64)>>,
) -> Vec<DeltaResource> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while let Some((_, r, _)) = sending.peek() {
        let size = r.encoded_any().len();
        if !chunk.is_empty() && bytes + size > MAX_RESPONSE_BYTES {
            break;
        }
        bytes += size;
        let Some((name, resource, hash)) = sending.next() else {
            break;
        };
        chunk.push(DeltaResource {
            name: name.to_string(),
            version: format_resource_version(hash),
            resource: resource.clone(),
        });
    }
    chunk
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

    async fn handle(
        &mut self,
        req: DeltaDiscoveryRequest,
        inbox: &mut Inbox<DeltaDiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.handle_request(req, inbox).await
    }

    async fn snapshot_changed(
        &mut self,
        snapshot: Option<Arc<Snapshot>>,
        inbox: &mut Inbox<DeltaDiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.snapshot = snapshot;
        self.push_all(inbox).await
    }
}
