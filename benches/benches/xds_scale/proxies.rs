//! The child process: simulated proxies, each an ADS client over TLS with its dataplane token,
//! subscribing and ACKing as Envoy does.
//!
//! On stdin, from the measuring process: `target TYPE NAME` lines (resources whose changes it
//! watches; a NAME ending in `:` is a prefix), `proxy NODE TOKEN` lines, an empty line; then the
//! commands `go`, `watch I` (report when every proxy holding target I ACKed a different
//! version of it) and `physical PORT CERT CONNS COPIES LEN`. On stdout: `loaded`, `initial`,
//! `watching N`, `converged`, `bytes N`, `physical-ready`, `physical-received`, or `error ...`.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use prost::bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};

use super::SHARED_CONNECTIONS;

const EXTENSION: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const SOURCE_TAGS: &str = "kuma:source-tags";
/// TLS handshakes in flight at once (a fleet's proxies do not all connect in the same
/// millisecond, and the listen backlog would drop the rest).
const CONNECTING: usize = 64;
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
type Client = tonic::client::Grpc<Channel>;

// What a proxy reads of the responses: the simulated proxies share the machine with the
// control plane, so they decode only these fields (the rest is skipped, and resources stay
// in the received buffer).

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `DiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<Any>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// `Resource` of a `DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResource {
    #[prost(message, optional, tag = "2")]
    resource: Option<Any>,
    #[prost(string, tag = "3")]
    name: String,
}

/// `DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

/// `Cluster`: its name and discovery type.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterType {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    discovery_type: i32,
}

/// Opens the ADS stream at `path` with `requests`, the token in its metadata.
async fn open<Req, Resp>(
    client: &mut Client,
    path: &'static str,
    requests: mpsc::Receiver<Req>,
    token: &str,
) -> Result<tonic::Streaming<Resp>, String>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    client.ready().await.map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    client
        .streaming(
            authorized(ReceiverStream::new(requests), token)?,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

/// Copies connection `j` of `parts` carries when `total` are spread over them.
pub fn share(total: usize, parts: usize, j: usize) -> usize {
    total / parts + usize::from(j < total % parts)
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A resource this process watches for changes.
struct Target {
    type_url: String,
    name: String,
}

impl Target {
    fn matches(&self, name: &[u8]) -> bool {
        let target = self.name.as_bytes();
        if self.name.ends_with(':') {
            name.starts_with(target)
        } else {
            name == target
        }
    }
}

/// What one proxy last received of each target, and its part in the current watch.
#[derive(Default)]
struct Watch {
    latest: Vec<Option<u64>>,
    /// The target watched, and what the proxy had when the watch started.
    watching: Option<(usize, Option<u64>)>,
    converged: bool,
}

/// State the proxies share with the command loop.
struct Fleet {
    targets: Vec<Target>,
    proxies: usize,
    ready: AtomicUsize,
    bytes: AtomicU64,
    watches: Vec<Mutex<Watch>>,
    converged: AtomicUsize,
    watchers: AtomicUsize,
}

impl Fleet {
    fn lock(&self, idx: usize) -> std::sync::MutexGuard<'_, Watch> {
        self.watches[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proxy `idx` received `resources` (name, encoded bytes) of `type_url`; `complete` when
    /// they are the type's whole state (SotW), `removed` names it no longer has (delta).
    fn received<'a>(
        self: &Arc<Self>,
        idx: usize,
        type_url: &str,
        resources: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        removed: &[String],
        complete: bool,
    ) {
        let mut seen: Vec<(usize, Option<u64>)> = Vec::new();
        let targets: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].type_url == type_url)
            .collect();
        if targets.is_empty() {
            return;
        }
        for (name, bytes) in resources {
            for &i in &targets {
                if self.targets[i].matches(name) {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    seen.push((i, Some(h.finish())));
                }
            }
        }
        for name in removed {
            for &i in &targets {
                if self.targets[i].matches(name.as_bytes()) {
                    seen.push((i, None));
                }
            }
        }
        if complete {
            for &i in &targets {
                if !seen.iter().any(|(j, _)| *j == i) {
                    seen.push((i, None));
                }
            }
        }
        if seen.is_empty() {
            return;
        }
        let mut w = self.lock(idx);
        if w.latest.is_empty() {
            w.latest = vec![None; self.targets.len()];
        }
        for (i, hash) in seen {
            w.latest[i] = hash;
        }
        if let Some((i, before)) = w.watching
            && !w.converged
            && w.latest[i] != before
        {
            w.converged = true;
            drop(w);
            if self.converged.fetch_add(1, Ordering::SeqCst) + 1
                == self.watchers.load(Ordering::SeqCst)
            {
                emit("converged");
                let fleet = self.clone();
                tokio::spawn(async move {
                    // Whatever else the change sends arrives within this.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    emit(&format!("bytes {}", fleet.bytes.load(Ordering::SeqCst)));
                });
            }
        }
    }

    /// Starts watching target `i`: the proxies holding it must each receive it changed.
    fn watch(&self, i: usize) {
        let holders = (0..self.proxies)
            .filter(|&p| self.lock(p).latest.get(i).is_some_and(|h| h.is_some()))
            .count();
        self.watchers.store(holders, Ordering::SeqCst);
        self.converged.store(0, Ordering::SeqCst);
        self.bytes.store(0, Ordering::SeqCst);
        for p in 0..self.proxies {
            let mut w = self.lock(p);
            let before = w.latest.get(i).copied().flatten();
            w.watching = before.is_some().then_some((i, before));
            w.converged = false;
        }
        emit(&format!("watching {holders}"));
    }

    fn count_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::SeqCst);
    }

    fn is_ready(&self) {
        if self.ready.fetch_add(1, Ordering::SeqCst) + 1 == self.proxies {
            emit("initial");
        }
    }
}

/// Reads the setup, says `loaded`, waits for `go`, connects and runs the proxies, then serves
/// the commands until stdin closes.
pub fn main(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [port, protocol, connections, ca_path] = parts[..] else {
        panic!("expected `PORT PROTOCOL CONNECTIONS CA`");
    };
    let (port, delta, shared) = (
        port.to_string(),
        protocol == "delta",
        connections == "shared",
    );
    let ca = std::fs::read_to_string(ca_path).expect("CA");
    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    super::runtime().block_on(async move {
        let mut targets = Vec::new();
        let mut proxies: Vec<(String, String)> = Vec::new();
        while let Some(line) = lines.recv().await {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("target"), Some(t), Some(n)) => targets.push(Target {
                    type_url: t.into(),
                    name: n.into(),
                }),
                (Some("proxy"), Some(node), Some(token)) => {
                    proxies.push((node.into(), token.into()));
                }
                _ => break,
            }
        }
        let fleet = Arc::new(Fleet {
            targets,
            proxies: proxies.len(),
            ready: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            watches: (0..proxies.len()).map(|_| Mutex::default()).collect(),
            converged: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
        });
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("uri")
            .tls_config(tls)
            .expect("TLS");
        emit("loaded");
        assert_eq!(lines.recv().await.as_deref(), Some("go"), "expected `go`");
        let connecting = Arc::new(Semaphore::new(CONNECTING));
        let shared_channels: Vec<Channel> = if shared {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..SHARED_CONNECTIONS.min(proxies.len()) {
                set.spawn(connect(endpoint.clone(), connecting.clone()));
            }
            set.join_all().await
        } else {
            Vec::new()
        };
        for (idx, (node, token)) in proxies.into_iter().enumerate() {
            let fleet = fleet.clone();
            let endpoint = endpoint.clone();
            let connecting = connecting.clone();
            let shared_channel = shared_channels.get(idx % SHARED_CONNECTIONS).cloned();
            tokio::spawn(async move {
                let channel = match shared_channel {
                    Some(c) => c,
                    None => connect(endpoint, connecting).await,
                };
                let client = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
                let result = if delta {
                    delta_proxy(fleet, idx, client, node.clone(), token).await
                } else {
                    sotw_proxy(fleet, idx, client, node.clone(), token).await
                };
                if let Err(e) = result {
                    emit(&format!("error {node}: {e}"));
                }
            });
        }
        while let Some(line) = lines.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["watch", i] => fleet.watch(i.parse().expect("target")),
                ["physical", port, cert, conns, copies, len] => {
                    physical(
                        port,
                        cert,
                        conns.parse().expect("conns"),
                        copies.parse().expect("copies"),
                        len.parse().expect("len"),
                    )
                    .await;
                }
                _ => emit(&format!("error unknown command `{line}`")),
            }
        }
    });
}

/// A TLS connection to the control plane, retried while the listener is saturated.
async fn connect(endpoint: Endpoint, connecting: Arc<Semaphore>) -> Channel {
    let _permit = connecting.acquire().await.expect("semaphore");
    let mut tries = 0;
    loop {
        match endpoint.connect().await {
            Ok(c) => return c,
            Err(_) if tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                emit(&format!("error connect: {}", kuma_cp::error_chain(&e)));
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }
}

/// The name of an Envoy resource, read from its encoding: field 1 (a string) of `Listener`,
/// `Cluster` and `ClusterLoadAssignment` alike, which prost writes first.
fn encoded_name(value: &[u8]) -> &[u8] {
    if value.first() != Some(&0x0a) {
        return &[];
    }
    let mut len = 0usize;
    for (i, b) in value[1..].iter().enumerate().take(5) {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            return value.get(start..start + len).unwrap_or(&[]);
        }
    }
    &[]
}

/// The EDS clusters among `resources`, by name.
fn eds_clusters<'a>(resources: impl Iterator<Item = &'a Any>) -> Vec<String> {
    resources
        .filter_map(|any| ClusterType::decode(any.value.clone()).ok())
        .filter(|c| c.discovery_type == DiscoveryType::Eds as i32)
        .map(|c| c.name)
        .collect()
}

/// Whether a proxy has its initial config: clusters and listeners ACKed, and every endpoint
/// set and the extension config they name received.
#[derive(Default)]
struct Initial {
    clusters: bool,
    listeners: bool,
    endpoints_wanted: bool,
    endpoints_pending: HashSet<String>,
    extension_pending: bool,
    done: bool,
}

impl Initial {
    fn acked(&mut self, type_url: &str) {
        match type_url {
            CLUSTER => self.clusters = true,
            LISTENER => self.listeners = true,
            EXTENSION => self.extension_pending = false,
            _ => {}
        }
    }

    /// Whether the config just became complete.
    fn completed(&mut self) -> bool {
        let complete = self.clusters
            && self.listeners
            && self.endpoints_wanted
            && self.endpoints_pending.is_empty()
            && !self.extension_pending;
        let now = complete && !self.done;
        self.done |= complete;
        now
    }
}

fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        token
            .parse()
            .map_err(|_| "token is not ASCII".to_string())?,
    );
    Ok(request)
}

/// A proxy's request channel, holding its first requests as Envoy sends them: clusters (with
/// the node) and listeners, both wildcard. `make` builds a request from the node (or none) and
/// the type.
async fn first_requests<Req>(
    node: String,
    make: impl Fn(Option<Node>, &str) -> Req,
) -> Result<(mpsc::Sender<Req>, mpsc::Receiver<Req>), String> {
    let (tx, rx) = mpsc::channel(16);
    let node = Node {
        id: node,
        ..Default::default()
    };
    tx.send(make(Some(node), CLUSTER))
        .await
        .map_err(|e| e.to_string())?;
    tx.send(make(None, LISTENER))
        .await
        .map_err(|e| e.to_string())?;
    Ok((tx, rx))
}

/// The next response; an error when the stream ends (the control plane never ends one).
async fn next<T>(responses: &mut tonic::Streaming<T>) -> Result<T, String> {
    match responses.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("the control plane ended the stream".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn delta_proxy(
    fleet: Arc<Fleet>,
    idx: usize,
    mut client: Client,
    node: String,
    token: String,
) -> Result<(), String> {
    let (tx, rx) = first_requests(node, |node, type_url| DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        ..Default::default()
    })
    .await?;
    let mut responses = open::<_, DeltaResponse>(&mut client, DELTA_PATH, rx, &token).await?;
    let mut endpoints: HashSet<String> = HashSet::new();
    let mut extension = false;
    let mut initial = Initial::default();
    loop {
        let r = next(&mut responses).await?;
        fleet.count_bytes(
            r.resources
                .iter()
                .filter_map(|res| res.resource.as_ref())
                .map(Message::encoded_len)
                .sum(),
        );
        let mut subscribe = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let names =
                    eds_clusters(r.resources.iter().filter_map(|res| res.resource.as_ref()));
                for n in names {
                    if endpoints.insert(n.clone()) {
                        initial.endpoints_wanted = true;
                        initial.endpoints_pending.insert(n.clone());
                        subscribe.push((ENDPOINT, n));
                    }
                }
            }
            LISTENER if !extension => {
                extension = true;
                initial.extension_pending = true;
                subscribe.push((EXTENSION, SOURCE_TAGS.to_string()));
            }
            ENDPOINT => {
                for res in &r.resources {
                    initial.endpoints_pending.remove(&res.name);
                }
            }
            _ => {}
        }
        fleet.received(
            idx,
            &r.type_url,
            r.resources.iter().filter_map(|res| {
                let any = res.resource.as_ref()?;
                Some((res.name.as_bytes(), any.value.as_ref()))
            }),
            &r.removed_resources,
            false,
        );
        initial.acked(&r.type_url);
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (t, n) in subscribe {
            by_type.entry(t).or_default().push(n);
        }
        for (t, names) in by_type {
            let request = DeltaDiscoveryRequest {
                type_url: t.to_string(),
                resource_names_subscribe: names,
                ..Default::default()
            };
            tx.send(request).await.map_err(|e| e.to_string())?;
        }
        if initial.completed() {
            fleet.is_ready();
        }
    }
}

async fn sotw_proxy(
    fleet: Arc<Fleet>,
    idx: usize,
    mut client: Client,
    node: String,
    token: String,
) -> Result<(), String> {
    let (tx, rx) = first_requests(node, |node, type_url| DiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        ..Default::default()
    })
    .await?;
    let mut responses = open::<_, SotwResponse>(&mut client, SOTW_PATH, rx, &token).await?;
    // Per named type: the names subscribed, and the last version and nonce received.
    let mut named: BTreeMap<&str, (Vec<String>, String, String)> = BTreeMap::new();
    let mut initial = Initial::default();
    loop {
        let r = next(&mut responses).await?;
        fleet.count_bytes(r.resources.iter().map(Message::encoded_len).sum());
        let names = |t: &str, named: &BTreeMap<&str, (Vec<String>, String, String)>| {
            named.get(t).map(|n| n.0.clone()).unwrap_or_default()
        };
        let mut resubscribe: Vec<(&str, Vec<String>)> = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let mut wanted = eds_clusters(r.resources.iter());
                wanted.sort();
                if wanted != names(ENDPOINT, &named) {
                    let known: HashSet<String> = names(ENDPOINT, &named).into_iter().collect();
                    for n in wanted.iter().filter(|n| !known.contains(*n)) {
                        initial.endpoints_wanted = true;
                        initial.endpoints_pending.insert(n.clone());
                    }
                    resubscribe.push((ENDPOINT, wanted));
                }
            }
            LISTENER if !named.contains_key(EXTENSION) => {
                initial.extension_pending = true;
                resubscribe.push((EXTENSION, vec![SOURCE_TAGS.to_string()]));
            }
            ENDPOINT | EXTENSION => {
                let t = if r.type_url == ENDPOINT {
                    for any in &r.resources {
                        let name = String::from_utf8_lossy(encoded_name(&any.value));
                        initial.endpoints_pending.remove(name.as_ref());
                    }
                    ENDPOINT
                } else {
                    EXTENSION
                };
                let entry = named.entry(t).or_default();
                entry.1 = r.version_info.clone();
                entry.2 = r.nonce.clone();
            }
            _ => {}
        }
        fleet.received(
            idx,
            &r.type_url,
            r.resources
                .iter()
                .map(|any| (encoded_name(&any.value), any.value.as_ref())),
            &[],
            true,
        );
        initial.acked(&r.type_url);
        let ack = DiscoveryRequest {
            resource_names: names(&r.type_url, &named),
            type_url: r.type_url,
            version_info: r.version_info,
            response_nonce: r.nonce,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        for (t, wanted) in resubscribe {
            let entry = named.entry(t).or_default();
            entry.0 = wanted.clone();
            let request = DiscoveryRequest {
                type_url: t.to_string(),
                resource_names: wanted,
                version_info: entry.1.clone(),
                response_nonce: entry.2.clone(),
                ..Default::default()
            };
            tx.send(request).await.map_err(|e| e.to_string())?;
        }
        if initial.completed() {
            fleet.is_ready();
        }
    }
}

/// The physical-limit measurement's receiving side: `conns` TLS connections to `port`
/// (trusting `cert`), then every byte of `copies` messages of `len` bytes spread over them.
async fn physical(port: &str, cert: &str, conns: usize, copies: usize, len: usize) {
    let pem = std::fs::read(cert).expect("certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("certificate")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let connector = connector.clone();
        let connecting = connecting.clone();
        let addr = format!("127.0.0.1:{port}");
        set.spawn(async move {
            let _permit = connecting.acquire().await.expect("semaphore");
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            ((), connector.connect(name, tcp).await.expect("TLS"))
        });
    }
    let streams = set.join_all().await;
    emit("physical-ready");
    // Counted over all connections: which connection the sender gives which share is its
    // business.
    let remaining = Arc::new(AtomicUsize::new(copies * len));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut readers = tokio::task::JoinSet::new();
    for (_, mut stream) in streams {
        let (remaining, done) = (remaining.clone(), done.clone());
        readers.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed early");
                if remaining.fetch_sub(n, Ordering::SeqCst) == n {
                    done.notify_one();
                }
            }
        });
    }
    done.notified().await;
    readers.abort_all();
    emit("physical-received");
}
