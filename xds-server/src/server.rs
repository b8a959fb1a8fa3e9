//! The ADS server over a [`Cache`]: state of the world here, incremental in
//! the delta module.
//!
//! Each stream runs in its own task with a bounded outbox, so a slow or stuck proxy only delays
//! itself. Per type the stream tracks the subscription, the last nonce and version sent, and
//! the last version ACKed or NACKed:
//!
//! - a request whose `response_nonce` is not the last one sent is stale and ignored;
//! - a NACK (`error_detail` set) is reported to [`Callbacks::on_nack`]; the rejected version is
//!   not sent again, the proxy keeps its last good config, and the next different snapshot is
//!   pushed normally;
//! - a new snapshot is pushed type by type in [`crate::types::PUSH_ORDER`] (clusters before
//!   endpoints, listeners before routes), each only when its version changed;
//! - a proxy that opens a stream with the version it already applied (`version_info` of its
//!   first request of a type) is sent nothing for that type until the version changes, so a
//!   reconnect or a control-plane restart re-sends nothing.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::convert::Infallible;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::{mpsc, watch};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use crate::cache::{Cache, Snapshot};
use crate::names::NameSet;
use crate::stream::{Closed, Inbox, OUTBOX, Outbox, Protocol, StreamContext, drive};
use crate::types::{CLUSTER, LISTENER, in_push_order};
use crate::wire::{DeltaResponse, SotwResponse};

/// Stream ids, unique in the process: observers shared by several servers (an ADS and an SDS
/// server, say) never see two streams with one id.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// Observers of stream events (used, for example, to maintain DataplaneInsight). Every method
/// has an empty default.
pub trait Callbacks: Send + Sync + 'static {
    /// A stream identified its node.
    fn on_stream_open(&self, _stream_id: u64, _node_id: &str) {}
    /// A stream ended.
    fn on_stream_closed(&self, _stream_id: u64, _node_id: &str) {}
    /// A request arrived (before it is handled).
    fn on_request(&self, _stream_id: u64, _node_id: &str, _request: &DiscoveryRequest) {}
    /// A response is about to be sent.
    fn on_response(&self, _stream_id: u64, _node_id: &str, _response: &SotwResponse) {}
    /// An incremental request arrived (before it is handled).
    fn on_delta_request(&self, _stream_id: u64, _node_id: &str, _request: &DeltaDiscoveryRequest) {}
    /// An incremental response is about to be sent.
    fn on_delta_response(&self, _stream_id: u64, _node_id: &str, _response: &DeltaResponse) {}
    /// The proxy accepted `version` of `type_url`.
    fn on_ack(&self, _stream_id: u64, _node_id: &str, _type_url: &str, _version: &str) {}
    /// The proxy rejected `version` of `type_url`, saying `error`.
    fn on_nack(
        &self,
        _stream_id: u64,
        _node_id: &str,
        _type_url: &str,
        _version: &str,
        _error: &str,
    ) {
    }
}

/// Passes on what streams deliver (requests, responses, ACKs and NACKs) but not their opening
/// and closing: for streams that are not connections of a proxy in their own right, such as
/// the SDS streams of the split port layout, whose proxy is connected, and registered, by its
/// ADS stream.
pub struct DeliveriesOnly<C>(pub C);

impl<C: Callbacks> Callbacks for DeliveriesOnly<C> {
    fn on_request(&self, stream_id: u64, node_id: &str, request: &DiscoveryRequest) {
        self.0.on_request(stream_id, node_id, request);
    }
    fn on_response(&self, stream_id: u64, node_id: &str, response: &SotwResponse) {
        self.0.on_response(stream_id, node_id, response);
    }
    fn on_delta_request(&self, stream_id: u64, node_id: &str, request: &DeltaDiscoveryRequest) {
        self.0.on_delta_request(stream_id, node_id, request);
    }
    fn on_delta_response(&self, stream_id: u64, node_id: &str, response: &DeltaResponse) {
        self.0.on_delta_response(stream_id, node_id, response);
    }
    fn on_ack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str) {
        self.0.on_ack(stream_id, node_id, type_url, version);
    }
    fn on_nack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str, error: &str) {
        self.0.on_nack(stream_id, node_id, type_url, version, error);
    }
}

/// Two observers of the same streams: every event goes to the first, then the second.
impl<A: Callbacks, B: Callbacks> Callbacks for (A, B) {
    fn on_stream_open(&self, stream_id: u64, node_id: &str) {
        self.0.on_stream_open(stream_id, node_id);
        self.1.on_stream_open(stream_id, node_id);
    }
    fn on_stream_closed(&self, stream_id: u64, node_id: &str) {
        self.0.on_stream_closed(stream_id, node_id);
        self.1.on_stream_closed(stream_id, node_id);
    }
    fn on_request(&self, stream_id: u64, node_id: &str, request: &DiscoveryRequest) {
        self.0.on_request(stream_id, node_id, request);
        self.1.on_request(stream_id, node_id, request);
    }
    fn on_response(&self, stream_id: u64, node_id: &str, response: &SotwResponse) {
        self.0.on_response(stream_id, node_id, response);
        self.1.on_response(stream_id, node_id, response);
    }
    fn on_delta_request(&self, stream_id: u64, node_id: &str, request: &DeltaDiscoveryRequest) {
        self.0.on_delta_request(stream_id, node_id, request);
        self.1.on_delta_request(stream_id, node_id, request);
    }
    fn on_delta_response(&self, stream_id: u64, node_id: &str, response: &DeltaResponse) {
        self.0.on_delta_response(stream_id, node_id, response);
        self.1.on_delta_response(stream_id, node_id, response);
    }
    fn on_ack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str) {
        self.0.on_ack(stream_id, node_id, type_url, version);
        self.1.on_ack(stream_id, node_id, type_url, version);
    }
    fn on_nack(&self, stream_id: u64, node_id: &str, type_url: &str, version: &str, error: &str) {
        self.0.on_nack(stream_id, node_id, type_url, version, error);
        self.1.on_nack(stream_id, node_id, type_url, version, error);
    }
}

/// Decides, once per stream and before anything is sent, whether the proxy may be served: from
/// the stream's gRPC metadata (such as `authorization`) and the node of its first request. A
/// refusal ends the stream with the returned status (say `UNAUTHENTICATED` or
/// `PERMISSION_DENIED`, with the reason).
#[async_trait::async_trait]
pub trait StreamAuthenticator: Send + Sync + 'static {
    /// `Ok` to serve the stream.
    async fn authenticate(&self, metadata: &MetadataMap, node: &Node) -> Result<(), Status>;
}

/// Runs once per admitted stream, after authentication and before the stream reads its node's
/// snapshot: for instance until the snapshot reflects what the node's first request says
/// about the proxy, so that a proxy back after a control-plane restart is answered from the
/// same config it has rather than from one made before it said who it is.
#[async_trait::async_trait]
pub trait StreamPreparer: Send + Sync + 'static {
    /// Prepares the node of a stream about to be served.
    async fn prepare(&self, node: &Node);
}

/// Callbacks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {}

/// The ADS service.
pub struct AdsServer<C: Callbacks = NoCallbacks> {
    cache: Arc<dyn Cache>,
    callbacks: Arc<C>,
    shutdown: Option<watch::Receiver<bool>>,
    authenticator: Option<Arc<dyn StreamAuthenticator>>,
    preparer: Option<Arc<dyn StreamPreparer>>,
}

impl<C: Callbacks> AdsServer<C> {
    /// A server answering from `cache` (a [`SnapshotCache`](crate::SnapshotCache) or any
    /// [`Cache`]), reporting to `callbacks`.
    pub fn new(cache: Arc<dyn Cache>, callbacks: Arc<C>) -> Self {
        AdsServer {
            cache,
            callbacks,
            shutdown: None,
            authenticator: None,
            preparer: None,
        }
    }

    /// Lets `preparer` prepare each admitted stream's node before the stream is served.
    pub fn with_preparer(mut self, preparer: Arc<dyn StreamPreparer>) -> Self {
        self.preparer = Some(preparer);
        self
    }

    /// Serves only the streams `authenticator` admits.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn StreamAuthenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Ends every stream with `UNAVAILABLE` once `shutdown` turns true, so proxies reconnect
    /// elsewhere instead of holding the server's connections open.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The tonic service to add to a `tonic::transport::Server` (or to route with other
    /// services, as gRPC over HTTP/2 at `/envoy.service.discovery.v3.AggregatedDiscoveryService/*`).
    pub fn into_service(self) -> AdsService<C> {
        XdsService(Arc::new(self), PhantomData)
    }
}

impl<C: Callbacks> AdsServer<C> {
    /// Runs a new stream with the protocol `make` builds from the stream id and its outbox;
    /// returns where the stream's responses arrive.
    fn open<P: Protocol>(
        &self,
        metadata: MetadataMap,
        requests: Streaming<P::Request>,
        only: Option<&'static str>,
        make: impl FnOnce(u64, Outbox<P::Response>) -> P,
    ) -> mpsc::Receiver<Box<Result<P::Response, Status>>> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let protocol = make(id, tx.clone());
        let context = StreamContext {
            cache: self.cache.clone(),
            callbacks: self.callbacks.clone(),
            shutdown: self.shutdown.clone(),
            authenticator: self.authenticator.clone(),
            preparer: self.preparer.clone(),
            metadata,
            only,
        };
        tokio::spawn(drive(protocol, id, requests, tx, context));
        rx
    }
}

/// Which xDS gRPC service an [`XdsService`] is: its name, its two stream methods, and the one
/// type it serves (`None`: all).
pub trait ServiceKind: Send + Sync + 'static {
    /// The gRPC service name.
    const NAME: &'static str;
    /// The state-of-the-world stream method's path.
    const SOTW_PATH: &'static str;
    /// The delta stream method's path.
    const DELTA_PATH: &'static str;
    /// The only type served (`None`: every type).
    const ONLY: Option<&'static str>;
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`.
pub struct Ads;

impl ServiceKind for Ads {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
    const SOTW_PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    const DELTA_PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    const ONLY: Option<&'static str> = None;
}

/// `envoy.service.secret.v3.SecretDiscoveryService`: secrets only.
pub struct Sds;

impl ServiceKind for Sds {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
    const SOTW_PATH: &'static str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
    const DELTA_PATH: &'static str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";
    const ONLY: Option<&'static str> = Some(crate::types::SECRET);
}

/// An [`AdsServer`] as a tower service of kind `K`. Responses are written from the snapshots'
/// shared encoded resources (see [`crate::wire`]); on the wire they are Envoy's
/// `DiscoveryResponse` and `DeltaDiscoveryResponse`.
pub struct XdsService<C: Callbacks, K: ServiceKind>(Arc<AdsServer<C>>, PhantomData<K>);

/// The ADS service ([`AdsServer::into_service`]).
pub type AdsService<C = NoCallbacks> = XdsService<C, Ads>;

/// The SDS service over the same server ([`AdsService::sds`]), for proxies that fetch their
/// secrets from a port of its own (an SDS config source naming a cluster rather than ADS).
/// Requests for other types than secrets are refused.
pub type SdsService<C = NoCallbacks> = XdsService<C, Sds>;

impl<C: Callbacks> AdsService<C> {
    /// The same server as `envoy.service.secret.v3.SecretDiscoveryService`. Streams share this
    /// server's cache, callbacks, authentication and shutdown.
    pub fn sds(&self) -> SdsService<C> {
        XdsService(self.0.clone(), PhantomData)
    }
}

impl<C: Callbacks, K: ServiceKind> Clone for XdsService<C, K> {
    fn clone(&self) -> Self {
        XdsService(self.0.clone(), PhantomData)
    }
}

impl<C: Callbacks, K: ServiceKind> NamedService for XdsService<C, K> {
    const NAME: &'static str = K::NAME;
}

impl<C, K, B> Service<http::Request<B>> for XdsService<C, K>
where
    C: Callbacks,
    K: ServiceKind,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        let path = req.uri().path();
        if path == K::SOTW_PATH {
            Box::pin(async move {
                Ok(crate::respond::stream_response(
                    req,
                    |metadata, requests| {
                        server.open(metadata, requests, K::ONLY, |id, tx| SotwStream {
                            id,
                            node_id: String::new(),
                            callbacks: server.callbacks.clone(),
                            tx,
                            types: BTreeMap::new(),
                            snapshot: None,
                            nonce: 0,
                        })
                    },
                ))
            })
        } else if path == K::DELTA_PATH {
            Box::pin(async move {
                Ok(crate::respond::stream_response(
                    req,
                    |metadata, requests| {
                        server.open(metadata, requests, K::ONLY, |id, tx| {
                            crate::delta::DeltaStream::new(id, server.callbacks.clone(), tx)
                        })
                    },
                ))
            })
        } else {
            Box::pin(async move {
                Ok(Status::unimplemented(format!("no such method of {}", K::NAME)).into_http())
            })
        }
    }
}

/// What a stream knows about one resource type.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: NameSet,
    nonce: Option<String>,
    sent_version: Option<String>,
    /// The version the proxy says it applied (`version_info`) in its first request of this
    /// type on this stream, until something is sent or it asks for other resources.
    applied: Option<String>,
}

struct SotwStream<C: Callbacks> {
    id: u64,
    node_id: String,
    callbacks: Arc<C>,
    tx: Outbox<SotwResponse>,
    types: BTreeMap<String, TypeState>,
    snapshot: Option<Arc<Snapshot>>,
    nonce: u64,
}

/// Types where an empty subscription means "everything" (the others name what they want).
pub(crate) fn wildcard_capable(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

impl<C: Callbacks> Protocol for SotwStream<C> {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn start(&mut self, node_id: String, snapshot: Option<Arc<Snapshot>>) {
        self.node_id = node_id;
        self.snapshot = snapshot;
    }

    // A state-of-the-world push is one response per type: there is nothing to answer while
    // it waits, so requests are not read ahead.
    async fn handle(
        &mut self,
        req: DiscoveryRequest,
        _inbox: &mut Inbox<DiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.handle_request(req).await
    }

    async fn snapshot_changed(
        &mut self,
        snapshot: Option<Arc<Snapshot>>,
        _inbox: &mut Inbox<DiscoveryRequest>,
    ) -> Result<(), Closed> {
        self.snapshot = snapshot;
        self.push_all().await
    }
}

impl<C: Callbacks> SotwStream<C> {
    async fn handle_request(&mut self, req: DiscoveryRequest) -> Result<(), Closed> {
        self.callbacks.on_request(self.id, &self.node_id, &req);
        if req.type_url.is_empty() {
            return Ok(());
        }
        let first_for_type = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty()
            && state.nonce.as_deref() != Some(req.response_nonce.as_str())
        {
            return Ok(()); // stale: answers a response that has been superseded
        }
        if let Some(err) = &req.error_detail {
            let version = state.sent_version.clone().unwrap_or_default();
            self.callbacks.on_nack(
                self.id,
                &self.node_id,
                &req.type_url,
                &version,
                &err.message,
            );
        } else if !req.response_nonce.is_empty() {
            self.callbacks
                .on_ack(self.id, &self.node_id, &req.type_url, &req.version_info);
        }
        let names: NameSet = req.resource_names.iter().collect();
        let wildcard = names.contains("*") || (names.is_empty() && wildcard_capable(&req.type_url));
        let state = self.types.entry(req.type_url.clone()).or_default();
        let changed = wildcard != state.wildcard || names != state.names;
        state.wildcard = wildcard;
        state.names = names;
        if first_for_type && !req.version_info.is_empty() {
            state.applied = Some(req.version_info.clone());
        } else if changed {
            state.applied = None;
        }
        if first_for_type || changed {
            self.push(&req.type_url, true).await
        } else {
            Ok(())
        }
    }

    async fn push_all(&mut self) -> Result<(), Closed> {
        for t in in_push_order(self.types.keys()) {
            self.push(&t, false).await?;
        }
        Ok(())
    }

    /// Sends the current snapshot's resources of `type_url` when its version differs from what
    /// was last sent, or always when `force` (a new or changed subscription).
    async fn push(&mut self, type_url: &str, force: bool) -> Result<(), Closed> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let version = snapshot.version(type_url);
        if !force && state.sent_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        // A proxy back on a new stream (after a reconnect, or a restart of the control plane)
        // that already applied this version of every resource it asks for gets nothing: the
        // same bytes again would be work for both sides.
        let applied = state.applied.take();
        if state.sent_version.is_none()
            && applied.as_deref() == Some(version.as_str())
            && (state.wildcard
                || snapshot
                    .get(type_url)
                    .is_some_and(|t| state.names.iter().all(|n| t.contains(n))))
        {
            state.sent_version = Some(version);
            return Ok(());
        }
        let resources = match snapshot.get(type_url) {
            None => Vec::new(),
            Some(t) if state.wildcard => t.iter().map(|(_, r)| r.clone()).collect(),
            Some(t) => state
                .names
                .iter()
                .filter_map(|n| t.get(n).cloned())
                .collect(),
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.nonce = Some(nonce.clone());
        state.sent_version = Some(version.clone());
        let response = SotwResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce,
        };
        self.callbacks
            .on_response(self.id, &self.node_id, &response);
        self.tx
            .send(Box::new(Ok(response)))
            .await
            .map_err(|_| Closed)
    }
}
