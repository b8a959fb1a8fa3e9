//! The same workload on every store, in one run: create, get and list throughput of
//! `MemoryStore`, `SqliteStore` (a file in a temporary directory: WAL, `synchronous = FULL`)
//! and `PostgresStore` on a throwaway local PostgreSQL cluster twice, with `fsync = off` (as the
//! tests run it) and with `fsync = on` (PostgreSQL's default, durable; `synchronous_commit` is on
//! in both), with ratios against memory; and the event latency of PostgreSQL from a write on
//! one instance to a watcher on another (on the fsync-off cluster).
//!
//! `STORES_N=2000` sets the number of resources (default 1,000). Needs Debian's postgresql
//! (`scripts/test` installs it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kuma_core::conformance::dataplane;
use kuma_core::resource::{ResourceKey, ResourceType, parse_yaml};
use kuma_core::store::{ListQuery, ResourceStore};
use kuma_store::config::PostgresConfig;
use kuma_store::{MemoryStore, PostgresStore, SqliteStore, postgres};
use kuma_testkit::PgCluster;

/// Operations per second of each phase.
struct Throughput {
    create: f64,
    get: f64,
    list: f64,
}

async fn workload(store: &dyn ResourceStore, n: usize) -> Throughput {
    let mesh = parse_yaml("type: Mesh\nname: bench\n").expect("mesh");
    store.create(mesh, None).await.expect("create mesh");
    let started = Instant::now();
    for i in 0..n {
        let dp = dataplane("bench", &format!("dp-{i:05}"), &format!("svc-{}", i % 50));
        store.create(dp, None).await.expect("create");
    }
    let create = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..n {
        let key = ResourceKey::new(
            ResourceType::Dataplane,
            "bench",
            &format!("dp-{:05}", (i * 7919) % n),
        );
        store.get(&key).await.expect("get");
    }
    let get = n as f64 / started.elapsed().as_secs_f64();
    // Pages of 100 through the whole mesh, 10 times over.
    let started = Instant::now();
    let mut pages = 0usize;
    for _ in 0..10 {
        let mut query = ListQuery::in_mesh(ResourceType::Dataplane, "bench");
        query.size = Some(100);
        loop {
            let page = store.list(&query).await.expect("list");
            pages += 1;
            match page.next_offset {
                Some(next) => query.offset = Some(next),
                None => break,
            }
        }
    }
    let list = pages as f64 / started.elapsed().as_secs_f64();
    Throughput { create, get, list }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("stores: bench");
        return;
    }
    let n: usize = std::env::var("STORES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let memory = workload(&MemoryStore::new(), n).await;
        let sqlite_dir = std::env::temp_dir().join(format!("kuma-bench-sqlite-{}", std::process::id()));
        let sqlite = workload(
            &SqliteStore::open(&sqlite_dir.join("kuma.db")).expect("open sqlite"),
            n,
        )
        .await;
        let _ = std::fs::remove_dir_all(&sqlite_dir);
        let config = |port: u16| PostgresConfig {
            host: "127.0.0.1".into(),
            port,
            user: "kuma".into(),
            password: "kuma".into(),
            db_name: "kuma".into(),
            connection_timeout: 5,
            max_open_connections: 10,
            tls: Default::default(),
        };
        // The durable server first, then the one the latency run uses (the first stays up,
        // idle, so its store's connections have a server until the end).
        let durable = PgCluster::start_with_fsync(true).await;
        postgres::migrate(&config(durable.port)).await.expect("migrate");
        let pg_durable = workload(
            &PostgresStore::connect(&config(durable.port))
                .await
                .expect("connect"),
            n,
        )
        .await;
        let cluster = PgCluster::start().await;
        let config = config(cluster.port);
        postgres::migrate(&config).await.expect("migrate");
        let a = PostgresStore::connect(&config).await.expect("connect");
        let pg = workload(&a, n).await;
        println!("{n} Dataplanes, one writer (operations per second; list = pages of 100)");
        println!("| store | create/s | get/s | list pages/s |");
        println!("|---|---:|---:|---:|");
        for (name, t) in [
            ("memory", &memory),
            ("sqlite (WAL, synchronous = FULL)", &sqlite),
            ("postgres (fsync = off)", &pg),
            ("postgres (fsync = on)", &pg_durable),
        ] {
            println!(
                "| {name} | {:.0} ({:.3}x) | {:.0} ({:.3}x) | {:.0} ({:.3}x) |",
                t.create,
                t.create / memory.create,
                t.get,
                t.get / memory.get,
                t.list,
                t.list / memory.list
            );
        }

        // Event latency: a write on A, seen by a watcher on B (another store instance with
        // its own connections, as another control plane would have).
        let b = Arc::new(PostgresStore::connect(&config).await.expect("connect"));
        let mut watcher = b.watch();
        let mut latencies = Vec::new();
        for i in 0..200 {
            let dp = dataplane("bench", &format!("latency-{i}"), "lat");
            let started = Instant::now();
            a.create(dp, None).await.expect("create");
            loop {
                let e = tokio::time::timeout(Duration::from_secs(5), watcher.recv())
                    .await
                    .expect("B sees A's write")
                    .expect("event");
                if e.key.name == format!("latency-{i}") {
                    break;
                }
            }
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
        println!();
        println!(
            "write on A -> event on B (200 writes, including the write itself): p50 {:?}, p90 {:?}, p99 {:?}",
            pct(50),
            pct(90),
            pct(99)
        );
    });
}
