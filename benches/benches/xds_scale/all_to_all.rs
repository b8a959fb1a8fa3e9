//! The realistic scenario: S services x K instances, every proxy a transparent proxy reaching
//! every service by its VIP (no `reachableServices`), HTTP everywhere, a MeshTrafficPermission
//! allowing all and one MeshTimeout, one MeshRetry and one MeshHTTPRoute per 10 services.
//!
//! The simulated proxies (a child process) behave as Envoy does: wildcard clusters and
//! listeners, then the endpoints of every EDS cluster they received, and the extension config
//! their HTTP listeners name; they ACK every response. Figures, one JSON object per line:
//! - `initial_ack_s`: from the first subscription to every proxy having ACKed clusters,
//!   listeners and endpoints;
//! - `cp_rss_bytes`, `cp_rss_bytes_per_proxy`: the control plane's resident set with every
//!   proxy connected, and its growth over the populated store, per proxy;
//! - `endpoint_change_converge_s`, `endpoint_change_bytes`, `endpoint_change_min_bytes`: a
//!   new instance of one service until every proxy ACKed endpoints again; the resource bytes
//!   the control plane sent meanwhile, and the encoded size of that service's endpoints times
//!   the proxies (what a perfect server sends);
//! - `policy_change_converge_s`: a MeshTimeout change for one service until every proxy ACKed
//!   listeners again;
//! - `cp_cpu_s_idle`: the control plane's CPU time over `idle_window_s` with nothing changing.
//!
//! Knobs: `XDS_SCALE_SERVICES` (S, 100), `XDS_SCALE_PROXIES` (S x K, 500),
//! `XDS_SCALE_PROTOCOL` (`delta`, `sotw` or `both`, the default), `XDS_SCALE_IDLE_SECS`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::resource::{Resource, ResourceKey, parse_yaml};
use kuma_store::MemoryStore;
use kuma_xds::generate::{GeneratorList, node_id};
use kuma_xds::lifecycle::ProxyRegistry;
use kuma_xds::sync::{Reconciler, Vips};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use xds_server::cache::SnapshotCache;
use xds_server::server::{AdsServer, Callbacks};
use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};
use xds_server::wire::{DeltaResponse, SotwResponse};

use super::{CONNECTIONS, cpu_time, idle_window, ip, rss_kib};

pub const CLIENTS_ENV: &str = "XDS_SCALE_ALL_TO_ALL_CLIENTS";
const EXTENSION: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const SOURCE_TAGS: &str = "kuma:source-tags";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs the scenario in a process of its own per protocol.
pub fn main() {
    let services = env_usize("XDS_SCALE_SERVICES", 100).max(1);
    let proxies = env_usize("XDS_SCALE_PROXIES", 5 * services).max(services);
    let protocols: Vec<&str> = match std::env::var("XDS_SCALE_PROTOCOL").as_deref() {
        Ok("delta") => vec!["delta"],
        Ok("sotw") => vec!["sotw"],
        _ => vec!["delta", "sotw"],
    };
    let exe = std::env::current_exe().expect("own executable");
    for protocol in protocols {
        let status = Command::new(&exe)
            .env(
                super::ALL_TO_ALL_RUN_ENV,
                format!("{services} {proxies} {protocol}"),
            )
            .status()
            .expect("run");
        assert!(status.success(), "all-to-all {protocol} failed");
    }
}

/// Instance `k` of service `s`: its Dataplane name.
fn name(s: usize, k: usize) -> String {
    format!("svc-{s}-{k}")
}

fn dataplane(s: usize, k: usize, address: &str) -> Resource {
    parse_yaml(&format!(
        "type: Dataplane\nmesh: default\nname: {}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: svc-{s}, kuma.io/protocol: http}}\n  transparentProxying: {{redirectPortInbound: 15006, redirectPortOutbound: 15001}}\n",
        name(s, k)
    ))
    .expect("dataplane")
}

fn policies(services: usize) -> Vec<Resource> {
    let mut out = vec![parse_yaml(
        "type: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
    )
    .expect("policy")];
    for t in (0..services).step_by(10) {
        out.push(timeout(t, "5s"));
        out.push(
            parse_yaml(&format!(
                "type: MeshRetry\nmesh: default\nname: bench-retry-{t}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    default: {{http: {{numRetries: 3}}}}\n"
            ))
            .expect("policy"),
        );
        out.push(
            parse_yaml(&format!(
                "type: MeshHTTPRoute\nmesh: default\nname: bench-route-{t}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    rules:\n    - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n      default: {{backendRefs: [{{kind: MeshService, name: svc-{}}}]}}\n",
                (t + 1) % services
            ))
            .expect("policy"),
        );
    }
    out
}

/// Named to sort before Kuma's default policies, which would otherwise override them (of two
/// policies with the same top-level target, the one whose name sorts first wins).
fn timeout(t: usize, request: &str) -> Resource {
    parse_yaml(&format!(
        "type: MeshTimeout\nmesh: default\nname: bench-timeout-{t}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    default: {{http: {{requestTimeout: {request}}}}}\n"
    ))
    .expect("policy")
}

/// One VIP per service, fixed.
struct FixedVips(BTreeMap<String, std::net::Ipv4Addr>);

#[async_trait::async_trait]
impl Vips for FixedVips {
    async fn service_vips(&self, _: &str) -> BTreeMap<String, std::net::Ipv4Addr> {
        self.0.clone()
    }

    fn changed_mesh(&self, _: &ResourceKey) -> Option<String> {
        None
    }
}

/// Which proxies ACKed which types since the last reset, and the resource bytes sent.
#[derive(Default)]
struct Deliveries {
    acked: Mutex<HashMap<String, HashSet<String>>>,
    bytes: AtomicU64,
    changed: Notify,
}

impl Callbacks for Deliveries {
    fn on_ack(&self, _: u64, node: &str, type_url: &str, _: &str) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(type_url.to_string())
            .or_default()
            .insert(node.to_string());
        self.changed.notify_waiters();
    }

    fn on_response(&self, _: u64, _: &str, response: &SotwResponse) {
        let bytes: usize = response
            .resources
            .iter()
            .map(|r| r.encoded_any().len())
            .sum();
        self.bytes.fetch_add(bytes as u64, Ordering::SeqCst);
    }

    fn on_delta_response(&self, _: u64, _: &str, response: &DeltaResponse) {
        let bytes: usize = response
            .resources
            .iter()
            .map(|r| r.resource.encoded_any().len())
            .sum();
        self.bytes.fetch_add(bytes as u64, Ordering::SeqCst);
    }
}

impl Deliveries {
    fn reset(&self) {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn count(&self, type_url: &str) -> usize {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(type_url)
            .map_or(0, HashSet::len)
    }

    /// Until `n` proxies ACKed each of `types` since the last reset.
    async fn wait(&self, types: &[&str], n: usize) {
        loop {
            let notified = self.changed.notified();
            if types.iter().all(|t| self.count(t) >= n) {
                return;
            }
            notified.await;
        }
    }
}

/// One run: `SERVICES PROXIES PROTOCOL`.
pub async fn run(spec: &str) {
    let mut parts = spec.split_whitespace();
    let (Some(services), Some(proxies), Some(protocol)) =
        (parts.next(), parts.next(), parts.next())
    else {
        panic!("expected `SERVICES PROXIES PROTOCOL`");
    };
    let services: usize = services.parse().expect("services");
    let proxies: usize = proxies.parse().expect("proxies");
    let instances = proxies.div_ceil(services);
    let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
    manager.ensure_default_mesh().await.expect("mesh");
    for p in policies(services) {
        manager.create(p).await.expect("policy");
    }
    let mut nodes = Vec::with_capacity(proxies);
    for i in 0..proxies {
        let (s, k) = (i % services, i / services);
        manager
            .create(dataplane(s, k, &ip(i + 10)))
            .await
            .expect("dataplane");
        nodes.push(node_id("default", &name(s, k)));
    }
    let vips = (0..services)
        .map(|s| {
            let s32 = u32::try_from(s).expect("services fit u32");
            (
                format!("svc-{s}"),
                std::net::Ipv4Addr::from(0xF000_0001u32 + s32),
            )
        })
        .collect();
    let rss_start = rss_kib();

    let cache = Arc::new(SnapshotCache::new());
    let registry = Arc::new(ProxyRegistry::default());
    for node in &nodes {
        registry.stream_opened(node);
    }
    let reconciler = Reconciler::new(
        manager.clone(),
        cache.clone(),
        Arc::new(GeneratorList::kuma_profile()),
        registry,
        kuma_cp::DEBOUNCE,
    )
    .with_vips(Arc::new(FixedVips(vips)));
    let deliveries = Arc::new(Deliveries::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = AdsServer::new(cache.clone(), deliveries.clone()).into_service();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // The clock starts before the reconciler: generation is part of the initial config.
    let mut clients = spawn_clients(addr, &nodes, protocol);
    let started = Instant::now();
    writeln!(clients.stdin.as_mut().expect("stdin"), "go").expect("go");
    let reconciler = tokio::spawn(reconciler.run());
    deliveries
        .wait(&[CLUSTER, LISTENER, ENDPOINT], proxies)
        .await;
    let initial = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib();
    let config_bytes: usize = cache
        .get(&nodes[0])
        .map(|snapshot| {
            snapshot
                .type_urls()
                .filter_map(|t| snapshot.get(t))
                .flat_map(|t| t.iter().map(|(_, r)| r))
                .map(|r| r.encoded_any().len())
                .sum()
        })
        .unwrap_or(0);

    // One new instance of svc-0.
    deliveries.reset();
    let bytes_before = deliveries.bytes.load(Ordering::SeqCst);
    let changed = Instant::now();
    manager
        .create(dataplane(0, instances, &ip(proxies + 10)))
        .await
        .expect("create");
    deliveries.wait(&[ENDPOINT], proxies).await;
    let endpoint_converge = changed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let endpoint_bytes = deliveries.bytes.load(Ordering::SeqCst) - bytes_before;
    let cla = cache
        .get(&nodes[0])
        .and_then(|s| s.get(ENDPOINT)?.get("svc-0").map(|r| r.encoded_any().len()))
        .unwrap_or(0);
    let endpoint_min_bytes = cla * proxies;

    // A MeshTimeout change for svc-0.
    deliveries.reset();
    let changed = Instant::now();
    manager
        .apply(timeout(0, "6s"))
        .await
        .expect("update the timeout");
    deliveries.wait(&[LISTENER], proxies).await;
    let policy_converge = changed.elapsed();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time();
    tokio::time::sleep(idle_window()).await;
    let idle = cpu_time().saturating_sub(before);

    let line = serde_json::json!({
        "scenario": "all-to-all",
        "protocol": protocol,
        "services": services,
        "proxies": proxies,
        "connections": CONNECTIONS.min(proxies),
        "initial_ack_s": initial.as_secs_f64(),
        "cp_rss_bytes": rss_connected * 1024,
        "cp_rss_bytes_per_proxy": rss_connected.saturating_sub(rss_start) * 1024 / proxies as u64,
        "config_bytes_per_proxy": config_bytes,
        "endpoint_change_converge_s": endpoint_converge.as_secs_f64(),
        "endpoint_change_bytes": endpoint_bytes,
        "endpoint_change_min_bytes": endpoint_min_bytes,
        "policy_change_converge_s": policy_converge.as_secs_f64(),
        "idle_window_s": idle_window().as_secs_f64(),
        "cp_cpu_s_idle": idle.as_secs_f64(),
    });
    println!("{line}");
    drop(clients.stdin.take());
    let _ = clients.kill();
    let _ = clients.wait();
    server.abort();
    reconciler.abort();
}

fn spawn_clients(
    addr: std::net::SocketAddr,
    nodes: &[String],
    protocol: &str,
) -> std::process::Child {
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .env(CLIENTS_ENV, format!("{addr} {protocol}"))
        // A profiler preloaded into the control plane stays out of the clients.
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let stdin = child.stdin.as_mut().expect("stdin");
    for node in nodes {
        writeln!(stdin, "{node}").expect("node");
    }
    writeln!(stdin).expect("end of nodes");
    super::await_connected(&mut child);
    child
}

// ---- the client process ----

/// Reads the node ids (one per line, then an empty line), connects, says `connected`, waits
/// for `go`, then runs one simulated proxy per node until stdin closes.
pub fn client_main(spec: &str) {
    let (addr, protocol) = spec.split_once(' ').expect("`ADDR PROTOCOL`");
    let delta = protocol == "delta";
    let stdin = std::io::stdin();
    let mut nodes = Vec::new();
    loop {
        let mut line = String::new();
        if stdin.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        nodes.push(line.trim().to_string());
    }
    super::runtime().block_on(async move {
        let channels = super::connect_and_announce(addr, CONNECTIONS.min(nodes.len())).await;
        let mut go = String::new();
        let _ = std::io::stdin().read_line(&mut go);
        for (i, node) in nodes.into_iter().enumerate() {
            let client =
                AggregatedDiscoveryServiceClient::new(channels[i % channels.len()].clone());
            if delta {
                tokio::spawn(delta_proxy(client, node));
            } else {
                tokio::spawn(sotw_proxy(client, node));
            }
        }
        super::until_stdin_closes().await;
    });
}

/// The EDS clusters among `resources`, by name.
fn eds_clusters<'a>(resources: impl Iterator<Item = &'a Any>) -> Vec<String> {
    use prost::Message;
    resources
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .filter(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|c| c.name)
        .collect()
}

async fn delta_proxy(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: String,
) {
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: node,
        ..Default::default()
    });
    for (i, type_url) in [CLUSTER, LISTENER].into_iter().enumerate() {
        let request = DeltaDiscoveryRequest {
            node: if i == 0 { node.clone() } else { None },
            type_url: type_url.to_string(),
            ..Default::default()
        };
        tx.send(request).await.expect("send");
    }
    let Ok(responses) = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut responses = responses.into_inner();
    let mut endpoints: HashSet<String> = HashSet::new();
    let mut extension = false;
    while let Ok(Some(r)) = responses.message().await {
        let mut subscribe = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let names =
                    eds_clusters(r.resources.iter().filter_map(|res| res.resource.as_ref()));
                subscribe = names
                    .into_iter()
                    .filter(|n| endpoints.insert(n.clone()))
                    .map(|n| (ENDPOINT, n))
                    .collect();
            }
            LISTENER if !extension => {
                extension = true;
                subscribe.push((EXTENSION, SOURCE_TAGS.to_string()));
            }
            _ => {}
        }
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
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
            if tx.send(request).await.is_err() {
                return;
            }
        }
    }
}

async fn sotw_proxy(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: String,
) {
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: node,
        ..Default::default()
    });
    for (i, type_url) in [CLUSTER, LISTENER].into_iter().enumerate() {
        let request = DiscoveryRequest {
            node: if i == 0 { node.clone() } else { None },
            type_url: type_url.to_string(),
            ..Default::default()
        };
        tx.send(request).await.expect("send");
    }
    let Ok(responses) = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut responses = responses.into_inner();
    // Per named type: the names subscribed, and the last version and nonce received.
    let mut named: HashMap<&str, (Vec<String>, String, String)> = HashMap::new();
    while let Ok(Some(r)) = responses.message().await {
        let names = |t: &str, named: &HashMap<&str, (Vec<String>, String, String)>| {
            named.get(t).map(|n| n.0.clone()).unwrap_or_default()
        };
        let mut resubscribe: Vec<(&str, Vec<String>)> = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let mut wanted = eds_clusters(r.resources.iter());
                wanted.sort();
                if wanted != names(ENDPOINT, &named) {
                    resubscribe.push((ENDPOINT, wanted));
                }
            }
            LISTENER if !named.contains_key(EXTENSION) => {
                resubscribe.push((EXTENSION, vec![SOURCE_TAGS.to_string()]));
            }
            ENDPOINT | EXTENSION => {
                let t = if r.type_url == ENDPOINT {
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
        let ack = DiscoveryRequest {
            resource_names: names(&r.type_url, &named),
            type_url: r.type_url,
            version_info: r.version_info,
            response_nonce: r.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
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
            if tx.send(request).await.is_err() {
                return;
            }
        }
    }
}
