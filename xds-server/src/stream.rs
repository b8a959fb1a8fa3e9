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

/// Requests buffered per stream.
pub(crate) const INBOX: usize = 16;

/// Responses buffered before the stream waits for the proxy to take them: few, so a stream
/// pushing a large config in many responses holds only a little of it at a time.
pub(crate) const OUTBOX: usize = 2;

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

    /// Handles one request.
    fn handle(&mut self, request: Self::Request)
    -> impl Future<Output = Result<(), Closed>> + Send;

    /// The node's snapshot changed.
    fn snapshot_changed(
        &mut self,
        snapshot: Option<Arc<Snapshot>>,
    ) -> impl Future<Output = Result<(), Closed>> + Send;
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
    refuse: mpsc::Sender<Result<P::Response, Status>>,
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
    // Requests are read by their own task so that waiting for them stays cancel-safe.
    let (req_tx, mut req_rx) = mpsc::channel::<Result<P::Request, Status>>(INBOX);
    let reader = tokio::spawn(read_requests(requests, req_tx));
    let first = match req_rx.recv().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => {
            let _ = refuse.send(Err(status)).await;
            return;
        }
        None => return,
    };
    let node_id = P::node(&first).map(|n| n.id.clone()).unwrap_or_default();
    if node_id.is_empty() {
        let _ = refuse
            .send(Err(Status::invalid_argument(
                "the first request must carry node.id",
            )))
            .await;
        reader.abort();
        return;
    }
    // Nothing is sent, and no callback hears of the stream, before the proxy is admitted.
    if let (Some(authenticator), Some(node)) = (&authenticator, P::node(&first))
        && let Err(status) = authenticator.authenticate(&metadata, node).await
    {
        tracing::warn!(node_id, reason = status.message(), "refused an xDS stream");
        let _ = refuse.send(Err(status)).await;
        reader.abort();
        return;
    }
    if let (Some(preparer), Some(node)) = (&preparer, P::node(&first)) {
        preparer.prepare(node).await;
    }
    callbacks.on_stream_open(id, &node_id);
    let mut snapshots = cache.subscribe(&node_id);
    protocol.start(node_id.clone(), snapshots.borrow_and_update().clone());
    let mut outcome = handle_admitted(&mut protocol, first, only, &refuse).await;
    while outcome.is_ok() {
        outcome = tokio::select! {
            req = req_rx.recv() => match req {
                Some(Ok(req)) => handle_admitted(&mut protocol, req, only, &refuse).await,
                // A request that does not decode ends the stream with the reason.
                Some(Err(status)) => {
                    let _ = refuse.send(Err(status)).await;
                    Err(Closed)
                }
                None => Err(Closed),
            },
            () = shutting_down(&mut shutdown) => {
                let _ = refuse.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                Err(Closed)
            }
            changed = snapshots.changed() => match changed {
                Ok(()) => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    protocol.snapshot_changed(snapshot).await
                }
                // The cache forgot the node: keep serving the last snapshot.
                Err(_) => {
                    snapshots = cache.subscribe(&node_id);
                    Ok(())
                }
            },
        };
    }
    reader.abort();
    callbacks.on_stream_closed(id, &node_id);
}

/// Handles `request`, unless the stream serves `only` one type and the request is about
/// another: then the stream ends with INVALID_ARGUMENT.
async fn handle_admitted<P: Protocol>(
    protocol: &mut P,
    request: P::Request,
    only: Option<&'static str>,
    refuse: &mpsc::Sender<Result<P::Response, Status>>,
) -> Result<(), Closed> {
    let type_url = P::type_url(&request);
    match only {
        Some(only) if type_url != only => {
            let _ = refuse
                .send(Err(Status::invalid_argument(format!(
                    "this service serves only {only}, not {type_url:?}"
                ))))
                .await;
            Err(Closed)
        }
        _ => protocol.handle(request).await,
    }
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

/// Forwards requests until the proxy closes its side or sends something that does not decode
/// (that error is forwarded too, and ends the stream).
async fn read_requests<T: Send + 'static>(
    mut requests: Streaming<T>,
    tx: mpsc::Sender<Result<T, Status>>,
) {
    loop {
        let next = match requests.message().await {
            Ok(Some(req)) => Ok(req),
            Ok(None) => return,
            Err(status) => Err(status),
        };
        let failed = next.is_err();
        if tx.send(next).await.is_err() || failed {
            return;
        }
    }
}
