//! Scale harness for config distribution: simulated proxies against the control plane as the
//! binaries assemble it ([`kuma_cp::ControlPlane::builder`]: memory store, reconciler, ADS
//! server with its callbacks for registration, insights and metrics, the dp-server's TLS and
//! dataplane tokens, Mesh mTLS with the builtin CA).
//!
//! Two scenarios, each measured for delta and SotW:
//! - `all-to-all`: S services x K instances, every proxy a transparent proxy reaching every
//!   service by its VIP (no `reachableServices`);
//! - `ten-outbound`: the same mesh, every proxy with 10 explicit outbounds and no transparent
//!   proxying.
//!
//! Both run HTTP everywhere, a MeshTrafficPermission allowing all, Kuma's default policies and
//! one MeshTimeout, one MeshRetry and one MeshHTTPRoute per 10 services.
//!
//! The simulated proxies run in a child process (this binary, re-executed), so the control
//! plane's process measures the control plane alone. They behave as Envoy does: one TLS
//! connection each (or, for the shared-connection figure, 100 HTTP/2 connections for all),
//! the dataplane token in the stream's `authorization` metadata, wildcard clusters and
//! listeners, then the endpoints of every EDS cluster and the extension config their HTTP
//! listeners name; they ACK every response. Figures, one JSON object per line:
//! - `initial_ack_s`: from the first connection to every proxy having ACKed its clusters and
//!   listeners and received the endpoints and extension config they name; `cp_cpu_s_initial`,
//!   the control plane's CPU time meanwhile (the proxies' process shares the machine);
//! - `cp_rss_bytes`, `cp_rss_bytes_per_proxy`: the control plane's resident set with every
//!   proxy connected, and its growth over the started, populated control plane, per proxy
//!   (`cp_rss_peak_bytes`: the largest resident set; `cp_rss_settled_bytes_per_proxy`: the
//!   growth again after the idle window; `cp_heap_settled_bytes_per_proxy`: the growth of the
//!   allocated heap then, so the allocator's own overhead is the difference);
//! - `endpoint_change_converge_s`, `endpoint_change_bytes`, `endpoint_change_min_bytes`: a new
//!   instance of one service until every proxy that reaches it ACKed endpoints that differ from
//!   what it had; the resource bytes the proxies received meanwhile; and the encoded size of
//!   that service's endpoints times those proxies (what a perfect server sends);
//! - `physical_limit_s`: encoding that service's endpoints once and writing
//!   `endpoint_change_min_bytes` through TLS connections like the proxies' (one per proxy, or
//!   the shared ones) to the same client process, with `endpoint_change_physical_ratio`;
//! - `policy_change_converge_s`: a MeshTimeout change for one service until every proxy that
//!   reaches it ACKed a changed listener for it;
//! - `cp_cpu_s_idle_30s`: the control plane's CPU time over the idle window
//!   (`XDS_SCALE_IDLE_SECS`, 30 s) with nothing changing.
//!
//! Knobs: `XDS_SCALE_SCENARIO` (`all-to-all`, `ten-outbound`, or both by default),
//! `XDS_SCALE_SERVICES` (S, 100), `XDS_SCALE_PROXIES` (S x K, 500), `XDS_SCALE_PROTOCOL`
//! (`delta`, `sotw`), `XDS_SCALE_KEY_TYPE` (`ecdsaP256`, `rsa2048`), `XDS_SCALE_CONNECTIONS`
//! (`per-proxy`, `shared`), `XDS_SCALE_AUTO_REACHABLE` (`1`: `experimental.autoReachableServices`
//! on, and instead of the permission allowing all, one per service admitting the 10 services
//! before it, so that each proxy may reach 10). Without the last four, each scenario runs
//! delta and SotW with ECDSA and a connection per proxy, then delta with shared connections
//! and delta with RSA, and all-to-all also delta with automatic reachable services.
//!
//! Run: `cargo bench -p kuma-benches --bench xds_scale`

use std::process::Command;
use std::time::Duration;

pub use kuma_benches::process::{cpu_time, heap_bytes, peak_rss_kib, rss_kib};

#[path = "xds_scale/control_plane.rs"]
mod control_plane;
#[path = "xds_scale/proxies.rs"]
mod proxies;

/// The allocator the control-plane binaries use (see `examples/src/bin/standalone.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Set in the child process: what the simulated proxies connect to.
const PROXIES_ENV: &str = "XDS_SCALE_PROXIES_OF";
/// Set in each measured run's process: one run per process, so one run's freed memory does not
/// hide the next one's growth.
const RUN_ENV: &str = "XDS_SCALE_RUN";
/// HTTP/2 connections the proxies share in the shared-connection runs.
const SHARED_CONNECTIONS: usize = 100;

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    scenario: String,
    services: usize,
    proxies: usize,
    protocol: String,
    key_type: String,
    shared: bool,
    /// `experimental.autoReachableServices` on, with permissions that let each service be
    /// reached from 10 others only.
    auto_reachable: bool,
}

impl Run {
    fn encode(&self) -> String {
        let connections = if self.shared { "shared" } else { "per-proxy" };
        let reach = if self.auto_reachable { "auto" } else { "all" };
        format!(
            "{} {} {} {} {} {connections} {reach}",
            self.scenario, self.services, self.proxies, self.protocol, self.key_type
        )
    }

    fn decode(spec: &str) -> Run {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let [
            scenario,
            services,
            proxies,
            protocol,
            key_type,
            connections,
            reach,
        ] = parts[..]
        else {
            panic!(
                "expected `SCENARIO SERVICES PROXIES PROTOCOL KEY_TYPE CONNECTIONS REACH`: {spec}"
            );
        };
        Run {
            scenario: scenario.into(),
            services: services.parse().expect("services"),
            proxies: proxies.parse().expect("proxies"),
            protocol: protocol.into(),
            key_type: key_type.into(),
            shared: connections == "shared",
            auto_reachable: reach == "auto",
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The runs the environment asks for.
fn runs() -> Vec<Run> {
    let services = env_usize("XDS_SCALE_SERVICES", 100).max(1);
    let proxies = env_usize("XDS_SCALE_PROXIES", 5 * services).max(services);
    let chosen = |name: &str, all: &[&str]| -> Option<Vec<String>> {
        let value = std::env::var(name).ok()?;
        let picked: Vec<String> = all
            .iter()
            .filter(|v| value.split(',').any(|w| w.trim() == **v))
            .map(|v| v.to_string())
            .collect();
        assert!(!picked.is_empty(), "{name}: expected one of {all:?}");
        Some(picked)
    };
    let scenarios = chosen("XDS_SCALE_SCENARIO", &["all-to-all", "ten-outbound"])
        .unwrap_or_else(|| vec!["all-to-all".into(), "ten-outbound".into()]);
    let protocols = chosen("XDS_SCALE_PROTOCOL", &["delta", "sotw"]);
    let keys = chosen("XDS_SCALE_KEY_TYPE", &["ecdsaP256", "rsa2048"]);
    let connections = chosen("XDS_SCALE_CONNECTIONS", &["per-proxy", "shared"]);
    let auto = std::env::var("XDS_SCALE_AUTO_REACHABLE").ok();
    let explicit = protocols.is_some() || keys.is_some() || connections.is_some() || auto.is_some();
    let auto = auto.is_some_and(|v| v == "1" || v == "true");
    let mut combos: Vec<(String, String, bool, bool)> = Vec::new();
    if explicit {
        let protocols = protocols.unwrap_or_else(|| vec!["delta".into(), "sotw".into()]);
        let keys = keys.unwrap_or_else(|| vec!["ecdsaP256".into()]);
        let connections = connections.unwrap_or_else(|| vec!["per-proxy".into()]);
        for p in &protocols {
            for k in &keys {
                for c in &connections {
                    combos.push((p.clone(), k.clone(), c == "shared", auto));
                }
            }
        }
    } else {
        combos = vec![
            ("delta".into(), "ecdsaP256".into(), false, false),
            ("sotw".into(), "ecdsaP256".into(), false, false),
            ("delta".into(), "ecdsaP256".into(), true, false),
            ("delta".into(), "rsa2048".into(), false, false),
        ];
    }
    let mut out = Vec::new();
    for scenario in scenarios {
        let mut combos = combos.clone();
        // Trimming concerns transparent proxies: all-to-all shows it beside the others.
        if !explicit && scenario == "all-to-all" {
            combos.push(("delta".into(), "ecdsaP256".into(), false, true));
        }
        for (protocol, key_type, shared, auto_reachable) in combos {
            out.push(Run {
                scenario: scenario.clone(),
                services,
                proxies,
                protocol,
                key_type,
                shared,
                auto_reachable,
            });
        }
    }
    out
}

fn main() {
    if let Ok(spec) = std::env::var(PROXIES_ENV) {
        return proxies::main(&spec);
    }
    if let Ok(spec) = std::env::var(RUN_ENV) {
        // As the binaries do: freed memory goes back to the system while idle.
        tikv_jemalloc_ctl::background_thread::write(true).expect("jemalloc background threads");
        return runtime().block_on(control_plane::run(Run::decode(&spec)));
    }
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let exe = std::env::current_exe().expect("own executable");
    for run in runs() {
        let status = Command::new(&exe)
            .env(RUN_ENV, run.encode())
            .status()
            .expect("run");
        assert!(status.success(), "{run:?} failed");
    }
}

/// The runtime each process of the harness runs on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// How long the idle figure watches (`XDS_SCALE_IDLE_SECS`, 30 s by default).
fn idle_window() -> Duration {
    Duration::from_secs(env_usize("XDS_SCALE_IDLE_SECS", 30) as u64)
}
