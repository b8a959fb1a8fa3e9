//! Scale harness for multi-zone sync: a global control plane as the `global` binary assembles
//! it ([`kuma_cp::ControlPlane::builder`] in global mode: memory store, KDS over TLS, zone
//! insights) and simulated zones in a child process (this binary, re-executed): each a KDS
//! client as the `zone` binary runs it (`kuma_kds::zone::run`) over a store of its own holding
//! its Dataplanes.
//!
//! Per run (Z zones x D Dataplanes each, P policies), one JSON object:
//! - `initial_sync_s`: from the zones dialing until global holds every zone's Dataplanes;
//!   `cp_cpu_s_initial`, global's CPU time meanwhile;
//! - `cp_rss_bytes_per_dataplane`, `cp_heap_bytes_per_dataplane`: global's growth in resident
//!   set and allocated heap over the started, empty control plane, per synced Dataplane, once
//!   settled;
//! - `propagation_p50_s`, `propagation_p99_s`, `propagation_max_s`: P MeshTimeouts created on
//!   global at once; for each (zone, policy), from its creation on global until the zone's
//!   store has it;
//! - `cp_cpu_s_idle`: global's CPU time over the idle window (`KDS_SCALE_IDLE_SECS`, 30 s)
//!   with every zone connected and nothing changing.
//!
//! Knobs: `KDS_SCALE_RUNS` (`Z:D:P` comma-separated; default `2:1000:1000,20:1000:1000`).
//!
//! Run: `cargo bench -p kuma-benches --bench kds_scale`

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kuma_benches::process::{cpu_time, heap_bytes, rss_kib};
use kuma_core::resource::{Resource, ResourceType, parse_yaml};
use kuma_core::store::{EventKind, ListQuery, ResourceStore};
use kuma_cp::ControlPlane;
use kuma_cp::config::{Config, Mode};
use kuma_kds::feed::{Feed, Side};
use kuma_kds::zone::{ZoneSettings, tls_client_config};
use kuma_store::MemoryStore;

/// The allocator the control-plane binaries use.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Set in the child process: `<kds port> <zones> <dataplanes per zone> <CA file>`.
const ZONES_ENV: &str = "KDS_SCALE_ZONES_OF";
/// Set in each measured run's process: `<zones> <dataplanes per zone> <policies>`.
const RUN_ENV: &str = "KDS_SCALE_RUN";

fn main() {
    if let Ok(spec) = std::env::var(ZONES_ENV) {
        return runtime().block_on(zones(&spec));
    }
    if let Ok(spec) = std::env::var(RUN_ENV) {
        tikv_jemalloc_ctl::background_thread::write(true).expect("jemalloc background threads");
        return runtime().block_on(global(&spec));
    }
    let runs =
        std::env::var("KDS_SCALE_RUNS").unwrap_or_else(|_| "2:1000:1000,20:1000:1000".into());
    let exe = std::env::current_exe().expect("own executable");
    for run in runs.split(',') {
        let spec = run.trim().replace(':', " ");
        let status = Command::new(&exe)
            .env(RUN_ENV, &spec)
            .status()
            .expect("run");
        assert!(status.success(), "run {spec} failed");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

fn policy(i: usize) -> Resource {
    parse_yaml(&format!(
        "type: MeshTimeout\nmesh: default\nname: p-{i:05}\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: svc-{i}\n    default:\n      idleTimeout: 1h\n      http:\n        requestTimeout: 15s\n"
    ))
    .expect("policy parses")
}

/// The simulated zones (child process): stores filled, then connected on `go`; on `report N`
/// they wait until each has N of the benchmark's policies and print when each arrived.
async fn zones(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [port, zones, dps, ca] = parts[..] else {
        panic!("{ZONES_ENV}: {spec}")
    };
    let (zones, dps): (usize, usize) = (zones.parse().expect("zones"), dps.parse().expect("dps"));
    let ca = std::fs::read(ca).expect("CA file");
    let tls = tls_client_config(Some(&ca), false).expect("TLS");
    // (zone, display name) -> arrival, unix nanoseconds.
    let arrivals: Arc<Mutex<HashMap<(usize, String), u128>>> = Arc::default();
    let mut stores = Vec::new();
    for z in 0..zones {
        let store: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
        for i in 0..dps {
            store
                .create(kuma_benches::dataplane("default", i), None)
                .await
                .expect("dataplane");
        }
        let mut events = store.watch();
        let (watched, arrivals) = (store.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if event.kind != EventKind::Create || event.key.rtype != ResourceType::MeshTimeout {
                    continue;
                }
                let now = unix_nanos();
                if let Ok(r) = watched.get(&event.key).await
                    && let Some(name) = r.meta.labels.get("kuma.io/display-name")
                    && name.starts_with("p-")
                {
                    arrivals
                        .lock()
                        .expect("arrivals")
                        .insert((z, name.clone()), now);
                }
            }
        });
        stores.push(store);
    }
    println!("ready");
    let mut lines = std::io::stdin().lock().lines();
    let mut stops = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["go"] => {
                for (z, store) in stores.iter().enumerate() {
                    let name = format!("zone-{z}");
                    let feed = Feed::new(Side::Zone(name.clone()));
                    tokio::spawn(feed.clone().run(store.clone()));
                    let settings = ZoneSettings {
                        zone: name.clone(),
                        global_address: format!("grpcs://127.0.0.1:{port}"),
                        tls: Some(tls.clone()),
                        max_msg_size: 10 * 1024 * 1024,
                        instance_id: format!("{name}-sim"),
                        version: "bench".into(),
                        config_json: "{}".into(),
                        backoff: Duration::from_millis(500),
                        max_backoff: Duration::from_secs(5),
                    };
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    stops.push(stop);
                    tokio::spawn(kuma_kds::zone::run(settings, store.clone(), feed, stopped));
                }
            }
            ["report", count] => {
                let count: usize = count.parse().expect("count");
                loop {
                    if arrivals.lock().expect("arrivals").len() >= count * zones {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let out = std::io::stdout();
                let mut out = out.lock();
                for ((z, name), at) in arrivals.lock().expect("arrivals").iter() {
                    writeln!(out, "arrival {z} {name} {at}").expect("stdout");
                }
                writeln!(out, "done").expect("stdout");
                out.flush().expect("stdout");
            }
            ["exit"] => return,
            _ => panic!("unknown command {line:?}"),
        }
    }
}

/// One measured run (the global control plane's process).
async fn global(spec: &str) {
    let parts: Vec<usize> = spec
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    let [zones, dps, policies] = parts[..] else {
        panic!("{RUN_ENV}: {spec}")
    };
    kuma_cp::process::raise_open_file_limit();
    let mut config = Config {
        mode: Mode::Global,
        ..Config::default()
    };
    config.api_server.http.enabled = false;
    config.api_server.https.enabled = false;
    config.diagnostics.server_port = kuma_testkit::free_port().await;
    config.multizone.global.kds.grpc_port = kuma_testkit::free_port().await;
    let port = config.multizone.global.kds.grpc_port;
    let cp = ControlPlane::start(config)
        .await
        .expect("global control plane");
    let store = cp.manager().store().clone();
    let ca = std::env::temp_dir().join(format!("kds-scale-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, cp.ca_pem()).expect("CA file");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_start, heap_start) = (rss_kib(), heap_bytes());

    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .env(ZONES_ENV, format!("{port} {zones} {dps} {}", ca.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zones");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut expect = |word: &str| {
        let line = from_child.next().expect("a line").expect("UTF-8");
        assert_eq!(line, word);
    };
    expect("ready");

    // The zones dial; global takes in every Dataplane.
    let mut events = store.watch();
    let (started, cpu_before) = (Instant::now(), cpu_time());
    writeln!(to_child, "go").expect("go");
    let total = zones * dps;
    let mut seen = 0;
    while seen < total {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Ok(e)) if e.kind == EventKind::Create && e.key.rtype == ResourceType::Dataplane => {
                seen += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                seen = store
                    .list(&ListQuery::all(ResourceType::Dataplane))
                    .await
                    .expect("list")
                    .total;
            }
            other => panic!("global never got every Dataplane: {other:?} ({seen} of {total})"),
        }
    }
    let initial = started.elapsed();
    let initial_cpu = cpu_time().saturating_sub(cpu_before);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_synced, heap_synced) = (rss_kib(), heap_bytes());

    // P policies at once on global.
    let manager = cp.manager().clone();
    let mut created: BTreeMap<String, u128> = BTreeMap::new();
    for i in 0..policies {
        let p = policy(i);
        let name = p.meta.name.clone();
        manager.create(p).await.expect("policy");
        created.insert(name, unix_nanos());
    }
    writeln!(to_child, "report {policies}").expect("report");
    let mut latencies = Vec::with_capacity(zones * policies);
    loop {
        let line = from_child.next().expect("a line").expect("UTF-8");
        if line == "done" {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["arrival", _zone, name, at] = words[..] else {
            panic!("{line}")
        };
        let at: u128 = at.parse().expect("nanos");
        let from = created[name];
        latencies.push(Duration::from_nanos(
            u64::try_from(at.saturating_sub(from)).unwrap_or(u64::MAX),
        ));
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];

    // Idle: every zone connected, nothing changing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_window = Duration::from_secs(
        std::env::var("KDS_SCALE_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let before = cpu_time();
    tokio::time::sleep(idle_window).await;
    let idle = cpu_time().saturating_sub(before);
    let (rss_settled, heap_settled) = (rss_kib(), heap_bytes());
    writeln!(to_child, "exit").expect("exit");
    let _ = child.wait();

    let per_dp = |now: u64, start: u64| now.saturating_sub(start) as f64 / total as f64;
    println!(
        "{}",
        serde_json::json!({
            "zones": zones,
            "dataplanes_per_zone": dps,
            "policies": policies,
            "initial_sync_s": initial.as_secs_f64(),
            "cp_cpu_s_initial": initial_cpu.as_secs_f64(),
            "cp_rss_bytes_per_dataplane": per_dp(rss_synced * 1024, rss_start * 1024),
            "cp_heap_bytes_per_dataplane": per_dp(heap_synced, heap_start),
            "cp_rss_settled_bytes_per_dataplane": per_dp(rss_settled * 1024, rss_start * 1024),
            "cp_heap_settled_bytes_per_dataplane": per_dp(heap_settled, heap_start),
            "propagation_p50_s": pick(0.5).as_secs_f64(),
            "propagation_p99_s": pick(0.99).as_secs_f64(),
            "propagation_max_s": pick(1.0).as_secs_f64(),
            "propagation_samples": latencies.len(),
            "cp_cpu_s_idle": idle.as_secs_f64(),
            "idle_window_s": idle_window.as_secs_f64(),
        })
    );
    cp.shutdown().await;
}
