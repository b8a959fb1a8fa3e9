//! Scale harness for the xDS server: N simulated proxies (state-of-the-world and delta ADS
//! clients, multiplexed over 100 HTTP/2 connections) connect, receive their config and ACK it. Measured for N = 1,000
//! and 10,000 (override with `XDS_SCALE_N=...`):
//! - convergence: time from changing every proxy's snapshot (one store change reaching every
//!   proxy) to every proxy having received and ACKed it;
//! - memory: resident-set growth per connected idle stream;
//! - CPU: process CPU time per pushed update.
//!
//! Clients run in the same process, so memory and CPU include the client side: upper bounds.
//!
//! Run: `cargo bench -p kuma-benches --bench xds_scale`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use kuma_xds::cache::{Snapshot, SnapshotCache};
use kuma_xds::envoy::{any, eds_cluster};
use kuma_xds::server::{AdsServer, NoCallbacks};
use kuma_xds::types::CLUSTER;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

const CONNECTIONS: usize = 100;
const CLUSTERS: usize = 20;

fn snapshot(generation: usize) -> Snapshot {
    Snapshot::new((0..CLUSTERS).map(|i| {
        let name = format!("service-{i}-g{}", if i == 0 { generation } else { 0 });
        (name.clone(), any(&eds_cluster(&name)))
    }))
}

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

struct Progress {
    /// Clients that received (and ACKed) at least `generation` responses.
    received: Vec<AtomicUsize>,
    done: Notify,
}

async fn wait_for(progress: &Progress, generation: usize, n: usize) {
    loop {
        let notified = progress.done.notified();
        if progress.received[generation].load(Ordering::SeqCst) >= n {
            return;
        }
        notified.await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    Sotw,
    Delta,
}

/// One simulated proxy: subscribe to clusters, ACK every response, count them.
async fn proxy(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    i: usize,
    variant: Variant,
    progress: Arc<Progress>,
) {
    let node = Some(Node {
        id: format!("node-{i}"),
        ..Default::default()
    });
    let count = |progress: &Progress, count: usize| {
        if count < progress.received.len() {
            progress.received[count].fetch_add(1, Ordering::SeqCst);
            progress.done.notify_waiters();
        }
    };
    match variant {
        Variant::Sotw => {
            let (tx, rx) = mpsc::channel(4);
            tx.send(DiscoveryRequest {
                node,
                type_url: CLUSTER.to_string(),
                ..Default::default()
            })
            .await
            .expect("send");
            let mut responses = client
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            let mut n = 0;
            while let Ok(Some(r)) = responses.message().await {
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
                n += 1;
                count(&progress, n);
            }
        }
        Variant::Delta => {
            let (tx, rx) = mpsc::channel(4);
            tx.send(DeltaDiscoveryRequest {
                node,
                type_url: CLUSTER.to_string(),
                ..Default::default()
            })
            .await
            .expect("send");
            let mut responses = client
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            let mut n = 0;
            while let Ok(Some(r)) = responses.message().await {
                let ack = DeltaDiscoveryRequest {
                    type_url: r.type_url,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
                n += 1;
                count(&progress, n);
            }
        }
    }
}

async fn run(n: usize, variant: Variant) {
    let cache = Arc::new(SnapshotCache::new());
    for i in 0..n {
        cache.set(&format!("node-{i}"), snapshot(1));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = AdsServer::new(cache.clone(), Arc::new(NoCallbacks)).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    let progress = Arc::new(Progress {
        received: (0..4).map(|_| AtomicUsize::new(0)).collect(),
        done: Notify::new(),
    });
    let rss_before = rss_kib();
    let started = Instant::now();
    for i in 0..n {
        let client = AggregatedDiscoveryServiceClient::new(channels[i % CONNECTIONS].clone());
        tokio::spawn(proxy(client, i, variant, progress.clone()));
    }
    wait_for(&progress, 1, n).await;
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib();

    let cpu_before = cpu_time();
    let changed = Instant::now();
    for i in 0..n {
        cache.set(&format!("node-{i}"), snapshot(2));
    }
    wait_for(&progress, 2, n).await;
    let converge = changed.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);

    println!(
        "{variant:?} N={n:>6}  connect+initial config: {:>8.1} ms  convergence after a change: {:>8.1} ms  \
         memory per idle stream: {:>6.1} KiB  CPU per pushed update: {:>6.1} µs",
        connect_time.as_secs_f64() * 1e3,
        converge.as_secs_f64() * 1e3,
        (rss_connected.saturating_sub(rss_before)) as f64 / n as f64,
        cpu.as_secs_f64() * 1e6 / n as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let sizes: Vec<usize> = match std::env::var("XDS_SCALE_N") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for variant in [Variant::Sotw, Variant::Delta] {
        for &n in &sizes {
            rt.block_on(run(n, variant));
        }
    }
}
