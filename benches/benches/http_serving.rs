//! The cost of serving HTTP within connection limits: the same router (`GET /ready`) served by
//! `axum::serve` (no limits) and by `kuma_cp::serve::serve` (per-listener and per-client caps,
//! header, idle and body deadlines, request-in-progress tracking), over loopback:
//! - `keep-alive`: 32 connections, each sending 250 requests one after another (8,000 per
//!   iteration);
//! - `new connection`: 2,000 requests, each over a connection of its own, 16 at a time.
//!
//! The clients run in this process on a runtime of their own (two threads), the server on
//! another (two threads). Run: `cargo bench -p kuma-benches --bench http_serving`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: &[u8] = b"GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn router() -> axum::Router {
    axum::Router::new().route("/ready", get(|| async { "ok" }))
}

/// Reads one response (headers and a `content-length` body) from `stream`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

async fn keep_alive(addr: SocketAddr) {
    let clients: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let mut buf = Vec::new();
                for _ in 0..250 {
                    stream.write_all(REQUEST).await.expect("write");
                    read_response(&mut stream, &mut buf).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
}

async fn new_connections(addr: SocketAddr) {
    let clients: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..125 {
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    stream.write_all(REQUEST).await.expect("write");
                    read_response(&mut stream, &mut buf).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
}

/// Starts a server on its own two-thread runtime: `axum::serve`, or the limited one.
fn start(limited: bool) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        if limited {
            let limits = kuma_cp::serve::Limits {
                max_connections: 4096,
                handshake_timeout: Duration::from_secs(10),
                read_header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(120),
                read_timeout: Duration::from_secs(10),
                max_body: 4 << 20,
            };
            let (stop, rx) = tokio::sync::watch::channel(false);
            std::mem::forget(stop);
            tokio::spawn(kuma_cp::serve::serve(
                "bench",
                listener,
                None,
                router(),
                limits,
                kuma_cp::serve::ClientBudget::new(256),
                rx,
            ));
        } else {
            tokio::spawn(async move {
                let app = router().into_make_service_with_connect_info::<SocketAddr>();
                let _ = axum::serve(listener, app).await;
            });
        }
        addr
    });
    (runtime, addr)
}

fn bench(c: &mut Criterion) {
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("http_serving");
    group.sample_size(10);
    for (name, limited) in [("axum::serve", false), ("kuma_cp::serve", true)] {
        let (_server, addr) = start(limited);
        group.bench_function(format!("keep-alive 8000 requests/{name}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    clients.block_on(keep_alive(addr));
                }
                started.elapsed()
            })
        });
        group.bench_function(format!("new connection 2000 requests/{name}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    clients.block_on(new_connections(addr));
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
