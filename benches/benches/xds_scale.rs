//! Scale harness for config distribution: N simulated proxies (state-of-the-world and delta
//! ADS clients) connect to the control plane's xDS server, receive their config and ACK it.
//! Measured for N = 1,000 and 10,000 (override with `XDS_SCALE_N=...`).
//!
//! The control-plane side is the real pipeline: a memory store holding N Dataplanes (each with
//! one inbound and an outbound to `backend`) plus two `backend` Dataplanes, the reconciler that
//! turns store changes into snapshots, and the ADS server. The simulated proxies run in a
//! child process (this same binary, re-executed), so every figure below is the control plane's
//! alone:
//! - initial: time from the first connection to every proxy having ACKed its whole config;
//! - convergence: time from one store change (a third `backend` Dataplane is created) to every
//!   proxy having ACKed the new endpoints. It includes the reconciler's debounce
//!   ([`kuma_cp::DEBOUNCE`]) and the regeneration of every snapshot of the mesh;
//! - memory: the control plane's resident-set growth per connected idle stream, and per
//!   generated snapshot;
//! - CPU: the control plane's CPU time (user + system) for that change, per proxy;
//! - idle CPU: its CPU time over 30 s (`XDS_SCALE_IDLE_SECS`) of nothing happening, before any
//!   proxy connected and with all of them connected.
//!
//! Run: `cargo bench -p kuma-benches --bench xds_scale`

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::resource::parse_yaml;
use kuma_store::MemoryStore;
use kuma_xds::generate::{GeneratorList, node_id};
use kuma_xds::lifecycle::ProxyRegistry;
use kuma_xds::sync::Reconciler;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use xds_server::cache::SnapshotCache;
use xds_server::server::{AdsServer, Callbacks};
use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};

/// HTTP/2 connections the simulated proxies share (Envoys each have their own; the server's
/// per-stream cost is what is measured, and 10,000 sockets would only measure the kernel).
const CONNECTIONS: usize = 100;
const CLIENTS_ENV: &str = "XDS_SCALE_CLIENTS";
/// Each measured run is its own process, so one run's freed memory does not hide the next
/// one's growth.
const RUN_ENV: &str = "XDS_SCALE_RUN";
const ALL_TO_ALL_RUN_ENV: &str = "XDS_SCALE_ALL_TO_ALL_RUN";

#[path = "xds_scale/all_to_all.rs"]
mod all_to_all;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// How long the idle figures watch (`XDS_SCALE_IDLE_SECS`, 30 s by default).
fn idle_window() -> Duration {
    let secs = std::env::var("XDS_SCALE_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// The control plane's CPU time over [`idle_window`] while nothing happens.
async fn idle_cpu() -> Duration {
    let before = cpu_time();
    tokio::time::sleep(idle_window()).await;
    cpu_time().saturating_sub(before)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// ACKs the server received, per type.
#[derive(Default)]
struct AckCounter {
    endpoints: AtomicUsize,
    listeners: AtomicUsize,
    changed: Notify,
}

impl Callbacks for AckCounter {
    fn on_ack(&self, _: u64, _: &str, type_url: &str, _: &str) {
        let counter = match type_url {
            ENDPOINT => &self.endpoints,
            LISTENER => &self.listeners,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl AckCounter {
    async fn wait(&self, done: impl Fn(&AckCounter) -> bool) {
        loop {
            let notified = self.changed.notified();
            if done(self) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Sotw,
    Delta,
}

fn dataplane(name: &str, ip: &str, service: &str, outbound: bool) -> kuma_core::resource::Resource {
    let outbound = if outbound {
        "  outbound:\n  - port: 33033\n    tags: {kuma.io/service: backend}\n"
    } else {
        ""
    };
    parse_yaml(&format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  \
         - port: 8080\n    servicePort: 18080\n    tags: {{kuma.io/service: {service}}}\n{outbound}"
    ))
    .expect("dataplane")
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

async fn run(n: usize, variant: Variant) {
    let manager = ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
    manager.ensure_default_mesh().await.expect("mesh");
    for i in 0..n {
        let dp = dataplane(&format!("dp-{i}"), &ip(i + 10), &format!("svc-{i}"), true);
        manager.create(dp).await.expect("create");
    }
    for b in 0..2 {
        let dp = dataplane(&format!("backend-{b}"), &ip(b + 1), "backend", false);
        manager.create(dp).await.expect("create");
    }

    let rss_start = rss_kib();
    let cache = Arc::new(SnapshotCache::new());
    // Every simulated proxy counts as connected (the reconciler generates connected ones only).
    let registry = Arc::new(ProxyRegistry::default());
    for i in 0..n {
        registry.stream_opened(&format!("default.dp-{i}"));
    }
    for b in 0..2 {
        registry.stream_opened(&format!("default.backend-{b}"));
    }
    let reconciler = Reconciler::new(
        manager.clone(),
        cache.clone(),
        Arc::new(GeneratorList::kuma_profile()),
        registry,
        kuma_cp::DEBOUNCE,
    );
    let reconciler = tokio::spawn(reconciler.run());
    while cache.node_ids().len() < n + 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_snapshots = rss_kib();

    let acks = Arc::new(AckCounter::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = AdsServer::new(cache.clone(), acks.clone()).into_service();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // Idle, with no proxy connected: the reconciler and the server wait for something to do.
    let idle_empty = idle_cpu().await;

    let started = Instant::now();
    let mut clients = spawn_clients(addr, n, variant);
    acks.wait(|a| {
        a.endpoints.load(Ordering::SeqCst) >= n && a.listeners.load(Ordering::SeqCst) >= n
    })
    .await;
    let initial = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib();

    let before = acks.endpoints.load(Ordering::SeqCst);
    let cpu_before = cpu_time();
    let changed = Instant::now();
    let dp = dataplane("backend-2", &ip(3), "backend", false);
    manager.create(dp).await.expect("create");
    acks.wait(|a| a.endpoints.load(Ordering::SeqCst) >= before + n)
        .await;
    let converge = changed.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    // Idle, with every proxy connected and nothing changing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_connected = idle_cpu().await;

    println!(
        "{variant:?} N={n:>6}  initial config: {:>8.1} ms  convergence after a change: {:>7.1} ms  \
         memory per idle stream: {:>5.1} KiB  per snapshot: {:>5.1} KiB  CPU per proxy per change: {:>5.1} µs",
        initial.as_secs_f64() * 1e3,
        converge.as_secs_f64() * 1e3,
        rss_connected.saturating_sub(rss_snapshots) as f64 / n as f64,
        rss_snapshots.saturating_sub(rss_start) as f64 / (n + 2) as f64,
        cpu.as_secs_f64() * 1e6 / n as f64,
    );
    let window = idle_window().as_secs_f64();
    println!(
        "{variant:?} N={n:>6}  idle CPU over {window:.0} s: no proxy {:.3} s ({:.2} % of a core), {n} proxies connected {:.3} s ({:.2} % of a core)",
        idle_empty.as_secs_f64(),
        idle_empty.as_secs_f64() * 100.0 / window,
        idle_connected.as_secs_f64(),
        idle_connected.as_secs_f64() * 100.0 / window,
    );
    let _ = clients.kill();
    let _ = clients.wait();
    server.abort();
    reconciler.abort();
}

fn spawn_clients(addr: std::net::SocketAddr, n: usize, variant: Variant) -> Child {
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .env(CLIENTS_ENV, format!("{addr} {n} {variant:?}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    await_connected(&mut child);
    child
}

// ---- the client process ----

fn client_main(spec: &str) {
    let mut parts = spec.split_whitespace();
    let (Some(addr), Some(n), Some(variant)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CLIENTS_ENV} must be `ADDR N VARIANT`");
    };
    let n: usize = n.parse().expect("N");
    let variant = if variant == "Delta" {
        Variant::Delta
    } else {
        Variant::Sotw
    };
    runtime().block_on(async move {
        let channels = connect_and_announce(addr, CONNECTIONS).await;
        for i in 0..n {
            let client = AggregatedDiscoveryServiceClient::new(channels[i % CONNECTIONS].clone());
            tokio::spawn(proxy(
                client,
                node_id("default", &format!("dp-{i}")),
                variant,
            ));
        }
        until_stdin_closes().await;
    });
}

/// The runtime each process of the harness runs on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// In a client process: opens `count` HTTP/2 connections to `addr`, then tells the parent
/// (`connected` on stdout) so that connection setup is not timed.
async fn connect_and_announce(addr: &str, count: usize) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    println!("connected");
    std::io::stdout().flush().expect("stdout");
    channels
}

/// In the parent: waits until the client process says its connections are open.
fn await_connected(child: &mut Child) {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("client process ready");
    assert_eq!(line.trim(), "connected", "client process failed");
}

/// In a client process: runs until the parent closes stdin (or kills it).
async fn until_stdin_closes() {
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    })
    .await
    .ok();
}

/// One simulated proxy: subscribe to clusters, listeners and the `backend` endpoints, ACK
/// every response.
async fn proxy(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: String,
    variant: Variant,
) {
    let node = Some(Node {
        id: node,
        ..Default::default()
    });
    let subscriptions = [
        (CLUSTER, vec![]),
        (LISTENER, vec![]),
        (ENDPOINT, vec!["backend".to_string()]),
    ];
    match variant {
        Variant::Sotw => {
            let (tx, rx) = mpsc::channel(8);
            for (i, (type_url, names)) in subscriptions.into_iter().enumerate() {
                let request = DiscoveryRequest {
                    node: if i == 0 { node.clone() } else { None },
                    type_url: type_url.to_string(),
                    resource_names: names,
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
            while let Ok(Some(r)) = responses.message().await {
                // An ACK repeats the subscription; only endpoints are subscribed by name.
                let resource_names = if r.type_url == ENDPOINT {
                    vec!["backend".to_string()]
                } else {
                    vec![]
                };
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    resource_names,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }
        Variant::Delta => {
            let (tx, rx) = mpsc::channel(8);
            for (i, (type_url, names)) in subscriptions.into_iter().enumerate() {
                let request = DeltaDiscoveryRequest {
                    node: if i == 0 { node.clone() } else { None },
                    type_url: type_url.to_string(),
                    resource_names_subscribe: names,
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
            while let Ok(Some(r)) = responses.message().await {
                let ack = DeltaDiscoveryRequest {
                    type_url: r.type_url,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENTS_ENV) {
        return client_main(&spec);
    }
    if let Ok(spec) = std::env::var(all_to_all::CLIENTS_ENV) {
        return all_to_all::client_main(&spec);
    }
    if let Ok(spec) = std::env::var(RUN_ENV) {
        let (n, variant) = spec.split_once(' ').expect("N VARIANT");
        let variant = if variant == "Delta" {
            Variant::Delta
        } else {
            Variant::Sotw
        };
        return runtime().block_on(run(n.parse().expect("N"), variant));
    }
    if let Ok(spec) = std::env::var(ALL_TO_ALL_RUN_ENV) {
        return runtime().block_on(all_to_all::run(&spec));
    }
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let scenario = std::env::var("XDS_SCALE_SCENARIO").unwrap_or_else(|_| "both".into());
    if scenario == "all-to-all" || scenario == "both" {
        all_to_all::main();
    }
    if scenario == "all-to-all" {
        return;
    }
    let sizes: Vec<usize> = match std::env::var("XDS_SCALE_N") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000],
    };
    let exe = std::env::current_exe().expect("own executable");
    for variant in [Variant::Sotw, Variant::Delta] {
        for &n in &sizes {
            let status = Command::new(&exe)
                .env(RUN_ENV, format!("{n} {variant:?}"))
                .status()
                .expect("run");
            assert!(status.success(), "{variant:?} N={n} failed");
        }
    }
}
