//! The life of one ADS stream, shared by state-of-the-world and delta: learn the node from the
//! first request, follow the node's snapshots, hand requests and snapshot changes to the
//! protocol, and report open/close to the callbacks.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use crate::cache::{Cache, Snapshot};
use crate::server::{Callbacks, StreamAuthenticator, StreamPreparer};

/// Responses buffered before the stream waits for the proxy to take them: few, so a stream
/// pushing a large config in many responses holds only a little of it at a time.
pub(crate) const OUTBOX: usize = 2;

/// Where a stream's responses wait for the proxy. Items are boxed: a channel keeps room for a
/// block of 32 items whatever its bound, and a pointer-sized item keeps that small for every
/// idle stream.
pub(crate) type Outbox<R> = mpsc::Sender<Box<Result<R, Status>>>;

/// The proxy went away; the stream ends.
pub(crate) struct Closed;

/// One xDS protocol variant's handling of a stream.
pub(crate) trait Protocol: Send + 'static {
    /// Requests of this variant.
    type Request: Send + 'static;
    /// Responses of this variant.
    type Response: Send + 'static;

    /// The node a request carries.
    fn node(request: &Self::Request) -> Option<&Node>;
    /// The type a request is about.
    fn type_url(request: &Self::Request) -> &str;

    /// The stream identified its node; `snapshot` is the node's current one.
    fn start(&mut self, node_id: String, snapshot: Option<Arc<Snapshot>>);

    /// Handles one request. While a response waits for the proxy, the protocol may read on
    /// from `inbox`.
    fn handle(
        &mut self,
        request: Self::Request,
        inbox: &mut Inbox<Self::Request>,
    ) -> impl Future<Output = Result<(), Closed>> + Send;

    /// The node's snapshot changed.
    fn snapshot_changed(
        &mut self,
        snapshot: Option<Arc<Snapshot>>,
        inbox: &mut Inbox<Self::Request>,
    ) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// What the request stream delivered: a request, its end (`None`), or a request that did not
/// decode.
type Arrival<R> = Result<Option<Box<R>>, Box<Status>>;

/// A stream's requests, readable while the stream pushes.
///
/// A push waiting for the proxy to take a response can read on (see [`Inbox::read_ahead`]), so
/// the proxy's requests do not wait as frames in the connection's receive queue, which keeps
/// its largest size for the connection's life: a proxy answering every response of a long
/// first push would leave dozens of slots behind. Only the stream's end, or a request that
/// does not decode, waits for its turn.
pub(crate) struct Inbox<R> {
    requests: Streaming<R>,
    /// The stream ended, or a request did not decode, while a push read ahead.
    held: Option<Arrival<R>>,
}

impl<R> Inbox<R> {
    fn new(requests: Streaming<R>) -> Self {
        Inbox {
            requests,
            held: None,
        }
    }

    /// The next request in turn (the stream's end or failure kept by a read ahead first).
    /// Cancel-safe.
    async fn next(&mut self) -> Arrival<R> {
        if let Some(held) = self.held.take() {
            return held;
        }
        arrival(self.requests.message().await)
    }

    /// The next request, read while a push waits; never resolves once the stream ended or a
    /// request failed to decode (that waits for the stream's loop). Cancel-safe.
    pub(crate) async fn read_ahead(&mut self) -> R {
        if self.held.is_none() {
            match self.requests.message().await {
                Ok(Some(request)) => return request,
                other => self.held = Some(arrival(other)),
            }
        }
        std::future::pending().await
    }
}

fn arrival<R>(read: Result<Option<R>, Status>) -> Arrival<R> {
    match read {
        Ok(request) => Ok(request.map(Box::new)),
        Err(status) => Err(Box::new(status)),
    }
}

/// What a stream shares with its server, and what it arrived with.
pub(crate) struct StreamContext<C> {
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) callbacks: Arc<C>,
    pub(crate) shutdown: Option<watch::Receiver<bool>>,
    pub(crate) authenticator: Option<Arc<dyn StreamAuthenticator>>,
    pub(crate) preparer: Option<Arc<dyn StreamPreparer>>,
    /// The stream's gRPC metadata (request headers).
    pub(crate) metadata: MetadataMap,
    /// The only type the stream serves (`None`: any).
    pub(crate) only: Option<&'static str>,
}

/// Runs one stream to its end.
pub(crate) async fn drive<P: Protocol, C: Callbacks>(
    mut protocol: P,
    id: u64,
    requests: Streaming<P::Request>,
    // Carries the stream-ending status (missing node id, malformed request, refused
    // authentication, shutdown) to the proxy.
    refuse: Outbox<P::Response>,
    context: StreamContext<C>,
) {
    let StreamContext {
        cache,
        callbacks,
        mut shutdown,
        authenticator,
        preparer,
        metadata,
        only,
    } = context;
    // Admission is boxed and over once the proxy is in: its state (the first request, the
    // authentication) is not part of every idle stream's task.
    let mut inbox = Inbox::new(requests);
    let admission = admit::<P>(
        &mut inbox.requests,
        &refuse,
        metadata,
        authenticator,
        preparer,
    );
    let (node_id, first) = match Box::pin(admission).await {
        Some(admitted) => admitted,
        None => return,
    };
    callbacks.on_stream_open(id, &node_id);
    let mut snapshots = cache.subscribe(&node_id);
    protocol.start(node_id.clone(), snapshots.borrow_and_update().clone());
    // The protocol's futures are boxed: inline, their largest state would be part of every
    // idle stream's task.
    let mut outcome = Box::pin(handle_admitted(
        &mut protocol,
        first,
        &mut inbox,
        only,
        &refuse,
    ))
    .await;
    // Requests are read in the stream's own task: `Streaming::message` keeps its state in the
    // stream, so waiting for it is cancel-safe, and a task and channel per stream would cost
    // an idle stream more than its protocol state does.
    while outcome.is_ok() {
        // What woke the stream, small: the futures that handle it are boxed, so nothing large
        // is held while the stream waits.
        let event = tokio::select! {
            arrival = inbox.next() => Event::Request(arrival),
            () = shutting_down(&mut shutdown) => Event::ShuttingDown,
            changed = snapshots.changed() => Event::Snapshot(changed.is_ok()),
        };
        outcome = match event {
            Event::Request(Ok(Some(req))) => {
                Box::pin(handle_admitted(
                    &mut protocol,
                    *req,
                    &mut inbox,
                    only,
                    &refuse,
                ))
                .await
            }
            // A request that does not decode ends the stream with the reason.
            Event::Request(Err(status)) => {
                Box::pin(end(&refuse, *status)).await;
                Err(Closed)
            }
            Event::Request(Ok(None)) => Err(Closed),
            Event::ShuttingDown => {
                let status = Status::unavailable("the control plane is shutting down");
                Box::pin(end(&refuse, status)).await;
                Err(Closed)
            }
            Event::Snapshot(true) => {
                let snapshot = snapshots.borrow_and_update().clone();
                Box::pin(protocol.snapshot_changed(snapshot, &mut inbox)).await
            }
            // The cache forgot the node: keep serving the last snapshot.
            Event::Snapshot(false) => {
                snapshots = cache.subscribe(&node_id);
                Ok(())
            }
        };
    }
    callbacks.on_stream_closed(id, &node_id);
}

/// What woke an admitted stream.
enum Event<R> {
    /// A request arrived (or the request stream ended, or a request did not decode).
    Request(Arrival<R>),
    /// The control plane is shutting down.
    ShuttingDown,
    /// The node's snapshot changed (`false`: the cache forgot the node).
    Snapshot(bool),
}

/// Reads a stream's first request and admits its proxy: the node id and the first request,
/// or `None` when the stream ended (with the reason told to the proxy).
async fn admit<P: Protocol>(
    requests: &mut Streaming<P::Request>,
    refuse: &Outbox<P::Response>,
    metadata: MetadataMap,
    authenticator: Option<Arc<dyn StreamAuthenticator>>,
    preparer: Option<Arc<dyn StreamPreparer>>,
) -> Option<(String, P::Request)> {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Err(status) => {
            end(refuse, status).await;
            return None;
        }
        Ok(None) => return None,
    };
    let node_id = P::node(&first).map(|n| n.id.clone()).unwrap_or_default();
    if node_id.is_empty() {
        let status = Status::invalid_argument("the first request must carry node.id");
        end(refuse, status).await;
        return None;
    }
    // Nothing is sent, and no callback hears of the stream, before the proxy is admitted.
    if let (Some(authenticator), Some(node)) = (authenticator, P::node(&first))
        && let Err(status) = authenticator.authenticate(&metadata, node).await
    {
        tracing::warn!(node_id, reason = status.message(), "refused an xDS stream");
        end(refuse, status).await;
        return None;
    }
    if let (Some(preparer), Some(node)) = (preparer, P::node(&first)) {
        preparer.prepare(node).await;
    }
    Some((node_id, first))
}

/// Handles `request`, unless the stream serves `only` one type and the request is about
/// another: then the stream ends with INVALID_ARGUMENT.
async fn handle_admitted<P: Protocol>(
    protocol: &mut P,
    request: P::Request,
    inbox: &mut Inbox<P::Request>,
    only: Option<&'static str>,
    refuse: &Outbox<P::Response>,
) -> Result<(), Closed> {
    let type_url = P::type_url(&request);
    match only {
        Some(only) if type_url != only => {
            let status = Status::invalid_argument(format!(
                "this service serves only {only}, not {type_url:?}"
            ));
            end(refuse, status).await;
            Err(Closed)
        }
        _ => protocol.handle(request, inbox).await,
    }
}

/// Ends the stream with `status` (the proxy may be gone already: nothing then to tell).
async fn end<R>(outbox: &Outbox<R>, status: Status) {
    let _ = outbox.send(Box::new(Err(status))).await;
}

/// Resolves once `shutdown` says so; never without a shutdown signal.
pub(crate) async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
