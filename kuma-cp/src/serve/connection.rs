//! Serving one listener's connections within limits, so that no client can hold the control
//! plane's sockets:
//!
//! - at most [`Limits::max_connections`] connections per listener, and at most
//!   [`ClientBudget`]'s share per client address over all listeners together; a connection
//!   beyond either is closed as soon as it is accepted;
//! - a TLS handshake must finish within [`Limits::handshake_timeout`];
//! - a connection must send its first request within [`Limits::read_header_timeout`], and a
//!   request that has started arriving must have its headers in within the same time;
//! - a connection with no request in progress (HTTP/1 keep-alive, HTTP/2 without streams) is
//!   closed after [`Limits::idle_timeout`], or after `read_header_timeout` while the listener
//!   is under pressure (more than three quarters of its connections taken);
//! - a request body (except gRPC streams, whose body is the stream) must arrive within
//!   [`Limits::read_timeout`], and a request whose `Content-Length` is over
//!   [`Limits::max_body`] gets 413 before its body is read (so `Expect: 100-continue` never
//!   gets `100 Continue`).
//!
//! "In progress" is counted in the service: a request is in progress from the moment hyper
//! hands it over until its response body has been sent or dropped, so a long poll or an ADS
//! stream keeps its connection, and an idle connection costs no timer wake-ups beyond its one
//! deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

/// Bytes an HTTP/2 stream buffers for sending, at most (the xDS server's responses are at most
/// 32 KiB of resources each).
const MAX_SEND_BUFFER: usize = 64 * 1024;

/// What one listener's connections may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections the listener holds at once.
    pub max_connections: usize,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send the first request, and a request's headers once it has started.
    pub read_header_timeout: Duration,
    /// Time a connection with no request in progress stays open.
    pub idle_timeout: Duration,
    /// Time to send a request body (gRPC streams excepted).
    pub read_timeout: Duration,
    /// Largest `Content-Length` accepted (gRPC streams excepted).
    pub max_body: u64,
}

/// Connections per client address, over every listener that shares the budget.
#[derive(Debug)]
pub struct ClientBudget {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientBudget {
    /// At most `max` connections per client address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ClientBudget {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One listener's count of open connections, and whether it is under pressure.
struct Occupancy {
    open: AtomicUsize,
    max: usize,
    pressure: watch::Sender<bool>,
}

impl Occupancy {
    fn update_pressure(&self) {
        let busy = self.open.load(Ordering::Relaxed) * 4 > self.max * 3;
        self.pressure
            .send_if_modified(|p| std::mem::replace(p, busy) != busy);
    }
}

/// A connection's place in its listener and in its client's budget; given back on drop.
struct Slot {
    listener: Arc<Occupancy>,
    budget: Arc<ClientBudget>,
    client: IpAddr,
}

impl Slot {
    fn take(listener: &Arc<Occupancy>, budget: &Arc<ClientBudget>, client: IpAddr) -> Option<Slot> {
        let mut held = budget.held();
        let count = held.entry(client).or_default();
        if *count >= budget.max || listener.open.load(Ordering::Relaxed) >= listener.max {
            if *count == 0 {
                held.remove(&client);
            }
            return None;
        }
        *count += 1;
        listener.open.fetch_add(1, Ordering::Relaxed);
        drop(held);
        listener.update_pressure();
        Some(Slot {
            listener: listener.clone(),
            budget: budget.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.budget.held();
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
        drop(held);
        self.listener.open.fetch_sub(1, Ordering::Relaxed);
        self.listener.update_pressure();
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) within `limits`, each client's
/// connections counted against `budget` (share one budget between listeners to cap a client
/// over all of them), until `stop` turns true; then asks every connection to finish and waits
/// for them. Handlers see the caller's address as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: axum::Router,
    limits: Limits,
    budget: Arc<ClientBudget>,
    mut stop: watch::Receiver<bool>,
) {
    let occupancy = Arc::new(Occupancy {
        open: AtomicUsize::new(0),
        max: limits.max_connections,
        pressure: watch::channel(false).0,
    });
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = JoinSet::new();
    let mut refused = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
                    tracing::warn!(server = what, error = %kuma_core::errors::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(slot) = Slot::take(&occupancy, &budget, peer.ip()) else {
            refused += 1;
            // Say so once per thousand, not per connection: a flood must not flood the log.
            if refused % 1000 == 1 {
                tracing::warn!(server = what, client = %peer.ip(), refused, "connection limit reached: closing new connections");
            }
            continue;
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            limits,
            pressure: occupancy.pressure.subscribe(),
            stop: stop.clone(),
            _slot: slot,
        };
        let tls = tls.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = tls else {
                return connection.run(tcp).await;
            };
            // Boxed, and over before serving starts: the handshake's state is not part of the
            // connection's task.
            let handshake = acceptor.accept(tcp);
            let handshake = Box::pin(tokio::time::timeout(limits.handshake_timeout, handshake));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %kuma_core::errors::Chain(&e), "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            connection.run(stream).await;
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` reads true (never if its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    router: axum::Router,
    limits: Limits,
    pressure: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    _slot: Slot,
}

impl Connection {
    /// Serves `stream` until it ends. The connection is set up before the returned future is
    /// made, so that the future holds only what serving needs (an idle connection's task is
    /// most of what it costs).
    fn run<S>(self, stream: S) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            router,
            limits,
            mut pressure,
            mut stop,
            _slot: slot,
        } = self;
        let activity = Arc::new(Activity::new());
        let io = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(
                router.clone(),
                peer,
                limits,
                service_activity.begin(),
                request,
            )
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        // A stream buffers at most two of the xDS server's largest responses: the default
        // (about 400 KB a stream) let thousands of proxies receiving their first config
        // hold gigabytes at once.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_send_buf_size(MAX_SEND_BUFFER);
        // On the heap once, not moved about as the future is built.
        let mut conn = Box::pin(
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        );
        async move {
            let _slot = slot;
            let mut closing = false;
            let grace = tokio::time::sleep(Duration::MAX);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %kuma_core::errors::Chain(e.as_ref()), "connection ended");
                        }
                        return;
                    }
                    () = activity.expired(&limits, &mut pressure), if !closing => {
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        // A client that does not take the hint is cut off.
                        grace.as_mut().reset(Instant::now() + limits.read_header_timeout);
                    }
                    () = stopping(&mut stop), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = &mut grace => return,
                }
            }
        }
    }
}

/// Serves one request: the caller's address as axum's [`ConnectInfo`], the body limits, and
/// `guard` held until the response body is done.
async fn handle(
    router: axum::Router,
    peer: SocketAddr,
    limits: Limits,
    guard: InProgress,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let request = if is_grpc {
        request.map(Body::new)
    } else {
        let length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|l| l > limits.max_body) {
            let body = format!(
                "{{\"status\":413,\"title\":\"Payload Too Large\",\"detail\":\"the request body is larger than the limit of {} bytes\"}}",
                limits.max_body
            );
            let response = Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap_or_default();
            return Ok(response);
        }
        if hyper::body::Body::is_end_stream(request.body()) {
            request.map(Body::new)
        } else {
            let deadline = Instant::now() + limits.read_timeout;
            request.map(|body| {
                Body::new(DeadlineBody {
                    inner: body,
                    deadline,
                    sleep: None,
                    timeout: limits.read_timeout,
                })
            })
        }
    };
    let response = router.oneshot(request).await?;
    Ok(response.map(|body| Body::new(GuardedBody { inner: body, guard })))
}

/// A request body that fails once `deadline` passes before it has all arrived. Its timer is
/// set only when the body has to be waited for.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(format!(
                "the request body did not arrive within {timeout:?} (apiServer.readTimeout)"
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in progress until it is done or dropped.
struct GuardedBody {
    inner: Body,
    guard: InProgress,
}

impl hyper::body::Body for GuardedBody {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let _ = &self.guard;
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is doing: requests in progress, and when it last went idle.
struct Activity {
    state: Mutex<ActivityState>,
    /// Set when the connection goes idle; the next read takes it and records its time.
    armed: AtomicBool,
    changed: Notify,
}

struct ActivityState {
    in_progress: usize,
    /// Since when no request has been in progress.
    idle_since: Instant,
    /// When bytes first arrived after `idle_since` (a request is on its way).
    arriving_since: Option<Instant>,
    /// Whether a request has been served yet.
    served: bool,
    /// Whether the watchdog waits for the requests in progress to end (it is woken then).
    watched: bool,
    /// Whether the watchdog sleeps until the idle timeout (bytes that arrive then wake it).
    sleeping_long: bool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                idle_since: Instant::now(),
                arriving_since: None,
                served: false,
                watched: false,
                sleeping_long: false,
            }),
            armed: AtomicBool::new(true),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts; it is in progress until the returned guard drops. The watchdog is
    /// not woken: when its deadline comes it finds the request and waits for it to end.
    fn begin(self: &Arc<Self>) -> InProgress {
        {
            let mut state = self.state();
            state.in_progress += 1;
            state.served = true;
        }
        self.armed.store(false, Ordering::Relaxed);
        InProgress(self.clone())
    }

    /// Bytes arrived. The watchdog is woken only if it sleeps until the idle timeout: before
    /// that it looks again at the read-header time anyway (so a client that sends requests
    /// back to back costs it no wake-ups).
    fn read(&self) {
        if self.armed.swap(false, Ordering::Relaxed) {
            let mut state = self.state();
            let mut wake = false;
            if state.in_progress == 0 && state.arriving_since.is_none() {
                state.arriving_since = Some(Instant::now());
                wake = std::mem::take(&mut state.sleeping_long);
            }
            drop(state);
            if wake {
                self.changed.notify_one();
            }
        }
    }

    /// When the connection is to be closed, as things stand (`None`: a request is in
    /// progress; the watchdog is then woken when the last one ends).
    fn deadline(&self, limits: &Limits, pressure: bool) -> Option<Instant> {
        let mut state = self.state();
        if state.in_progress > 0 {
            state.watched = true;
            return None;
        }
        let checkpoint = state.idle_since + limits.read_header_timeout;
        Some(match state.arriving_since {
            Some(t) => t + limits.read_header_timeout,
            None if !state.served || pressure => checkpoint,
            // Until the read-header time has passed, look again then: a request arriving
            // before it needs no wake-up to be timed.
            None if Instant::now() < checkpoint => checkpoint,
            None => {
                state.sleeping_long = true;
                state.idle_since + limits.idle_timeout
            }
        })
    }

    /// Resolves once the connection has been idle past its deadline.
    async fn expired(&self, limits: &Limits, pressure: &mut watch::Receiver<bool>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let busy = *pressure.borrow_and_update();
            let deadline = self.deadline(limits, busy);
            tokio::select! {
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Still due? (A request may have begun at the same moment.)
                    if self.deadline(limits, *pressure.borrow()).is_some_and(|d| d <= Instant::now()) {
                        return;
                    }
                }
                () = &mut changed => {}
                Ok(()) = pressure.changed() => {}
            }
        }
    }
}

/// A request in progress on a connection.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_progress -= 1;
        let mut wake = false;
        if state.in_progress == 0 {
            state.idle_since = Instant::now();
            state.arriving_since = None;
            state.sleeping_long = false;
            wake = std::mem::take(&mut state.watched);
            self.0.armed.store(true, Ordering::Relaxed);
        }
        drop(state);
        if wake {
            self.0.changed.notify_one();
        }
    }
}

/// A stream that tells its [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const SHORT: Duration = Duration::from_millis(300);

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            handshake_timeout: SHORT,
            read_header_timeout: SHORT,
            idle_timeout: SHORT * 4,
            read_timeout: SHORT,
            max_body: 1024,
        }
    }

    /// Serves a small router within `limits` (and 3 connections per client) on a free port.
    async fn server(limits: Limits) -> SocketAddr {
        use axum::routing::{get, post};
        let router = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(SHORT * 6).await;
                    "slow"
                }),
            )
            .route("/echo", post(|body: String| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        std::mem::forget(stop);
        tokio::spawn(serve(
            "test",
            listener,
            None,
            router,
            limits,
            ClientBudget::new(3),
            rx,
        ));
        addr
    }

    /// Reads until the server closes the connection or `within` passes; `None` if still open.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&all).into_owned()),
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_client_gets_its_share_and_no_more() {
        let addr = server(limits()).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let refused = read_to_close(&mut held[3], SHORT / 3).await;
        assert_eq!(
            refused.as_deref(),
            Some(""),
            "the 4th connection is closed at once"
        );
        // The three accepted ones are served.
        held[0]
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = held[0].read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn silent_and_slow_clients_are_cut_off() {
        let addr = server(limits()).await;
        // Sends nothing: closed after the read-header time, without an answer.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            read_to_close(&mut silent, SHORT * 3).await.as_deref(),
            Some("")
        );
        assert!(started.elapsed() >= SHORT);
        // Sends half a request and stops.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        assert!(read_to_close(&mut half, SHORT * 3).await.is_some());
        // Sends headers, then a body too slowly: refused after the read time.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
            .await
            .unwrap();
        let answer = read_to_close(&mut slow, SHORT * 4).await.expect("closed");
        assert!(!answer.contains("200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn keep_alive_lasts_the_idle_time_and_requests_in_progress_are_not_idle() {
        let addr = server(limits()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("ok"));
        // Idle longer than the read-header time, shorter than the idle time: still open.
        assert!(read_to_close(&mut client, SHORT * 2).await.is_none());
        // A request that takes longer than the idle time is not cut short.
        client
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(SHORT * 10, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..answer]).contains("slow"));
        // And idle past the idle time, it is closed.
        assert!(read_to_close(&mut client, SHORT * 8).await.is_some());
    }

    #[tokio::test]
    async fn an_oversized_body_gets_413_before_100_continue() {
        let addr = server(limits()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = client.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn under_pressure_idle_connections_go_sooner() {
        // Three clients (loopback addresses) take 7 of 8 slots: more than three quarters.
        let addr = server(limits()).await;
        let mut crowd = Vec::new();
        for (i, n) in [3, 3, 1].into_iter().enumerate() {
            for _ in 0..n {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind(format!("127.0.0.{}:0", i + 2).parse().unwrap())
                    .unwrap();
                let mut s = socket.connect(addr).await.unwrap();
                // Each has served a request, so only pressure shortens its idle time.
                s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await.unwrap();
                crowd.push(s);
            }
        }
        // Idle connections are closed after the read-header time until no more than three
        // quarters are taken (6 of 8), well before the idle time.
        let started = Instant::now();
        let budget = SHORT * 3;
        let mut closed = 0;
        for s in &mut crowd {
            let left = budget.saturating_sub(started.elapsed());
            if read_to_close(s, left).await.is_some() {
                closed += 1;
            }
        }
        // (Those that expire at the same moment may all go before the pressure lifts.)
        assert!(
            (1..crowd.len()).contains(&closed),
            "7 of 8 taken: some go, not all ({closed})"
        );
        assert!(budget < limits().idle_timeout);
    }
}
