//! Config generation cost: one proxy, and every proxy of a mesh after a mesh-wide policy
//! change, for meshes of 100, 1,000 and 5,000 services (one proxy each, 10 explicit outbounds
//! per proxy, 5 policies of each of the 10 applied policy types), plus the encoded snapshot
//! size per proxy. `GENERATION_N=100,1000` picks other sizes.
//!
//! Prints a table (single-threaded CPU time, as the reconciler runs one mesh on one task).
//!
//! A second table goes through the control plane's reconciler (memory store): regenerating
//! the whole mesh, against one changed Dataplane, which regenerates only itself and the 10
//! proxies that call its service.
//!
//! A third table is the realistic mesh: every proxy a transparent proxy reaching every service
//! through its VIP (no `reachableServices`), HTTP everywhere, a MeshTrafficPermission allowing
//! all and one MeshTimeout, MeshRetry and MeshHTTPRoute per 10 services. It reports the
//! encoded bytes per proxy and how many of them are distinct across the mesh (what sharing
//! identical resources would keep). `GENERATION_ALL_TO_ALL_N=100,500` picks its sizes.

use std::time::Instant;

use kuma_core::resource::{Resource, parse_yaml};
use kuma_xds::generate::{
    GeneratorList, MeshContext, ProxyContext, ProxyMetadata, SnapshotGenerator,
};

fn dataplanes(n: usize) -> Vec<Resource> {
    (0..n)
        .map(|i| {
            let mut yaml = format!(
                "type: Dataplane\nmesh: default\nname: svc-{i}\nnetworking:\n  address: 10.{}.{}.{}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: svc-{i}, kuma.io/protocol: http, version: v{}}}\n  outbound:\n",
                i / 65536 % 256,
                i / 256 % 256,
                i % 256,
                i % 2
            );
            for k in 1..=10 {
                yaml.push_str(&format!(
                    "  - port: {}\n    tags: {{kuma.io/service: svc-{}}}\n",
                    20000 + k,
                    (i + k) % n
                ));
            }
            parse_yaml(&yaml).expect("valid dataplane")
        })
        .collect()
}

fn policies(n: usize, change: usize) -> Vec<Resource> {
    let mut out = Vec::new();
    for p in 0..5 {
        let target = format!("svc-{}", (p * 7) % n);
        let docs = [
            format!(
                "type: MeshTimeout\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    default: {{connectionTimeout: {}s, http: {{requestTimeout: 5s}}}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: 1h}}",
                change + 1
            ),
            format!(
                "type: MeshRetry\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{http: {{numRetries: {}}}, tcp: {{maxConnectAttempt: 3}}}}",
                p + 1
            ),
            format!(
                "type: MeshCircuitBreaker\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    default: {{connectionLimits: {{maxConnections: 100}}, outlierDetection: {{detectors: {{totalFailures: {{consecutive: 5}}}}}}}}"
            ),
            format!(
                "type: MeshHealthCheck\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    default: {{interval: 10s, http: {{path: /health}}}}"
            ),
            format!(
                "type: MeshLoadBalancingStrategy\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    default: {{loadBalancer: {{type: LeastRequest}}}}"
            ),
            format!(
                "type: MeshHTTPRoute\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    rules:\n    - matches: [{{path: {{type: PathPrefix, value: /v{p}}}}}]\n      default: {{backendRefs: [{{kind: MeshServiceSubset, name: {target}, tags: {{version: v1}}, weight: 90}}, {{kind: MeshServiceSubset, name: {target}, tags: {{version: v0}}, weight: 10}}]}}"
            ),
            format!(
                "type: MeshTCPRoute\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    rules:\n    - default: {{backendRefs: [{{kind: MeshService, name: {target}}}]}}"
            ),
            format!(
                "type: MeshRateLimit\nspec:\n  targetRef: {{kind: MeshService, name: {target}}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{local: {{http: {{requestRate: {{num: 100, interval: 1s}}}}}}}}"
            ),
            format!(
                "type: MeshFaultInjection\nspec:\n  targetRef: {{kind: MeshService, name: {target}}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{http: [{{abort: {{httpStatus: 500, percentage: 1}}}}]}}"
            ),
            format!(
                "type: MeshAccessLog\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {target}}}\n    default: {{backends: [{{type: File, file: {{path: /tmp/log}}}}]}}"
            ),
        ];
        for (t, body) in docs.iter().enumerate() {
            let text = format!("mesh: default\nname: p-{t}-{p}\n{body}");
            out.push(parse_yaml(&text).expect("valid policy"));
        }
    }
    out
}

/// The comma-separated sizes in `var`, else `default`.
fn sizes_from_env(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("generation: bench");
        return;
    }
    let sizes = sizes_from_env("GENERATION_N", &[100, 1000, 5000]);
    let generator = GeneratorList::kuma_profile();
    let metadata = ProxyMetadata {
        admin_port: Some(9901),
        readiness_port: Some(9902),
        workdir: Some("/tmp".into()),
    };
    println!(
        "| services | policies | mesh context | one proxy (mean) | every proxy | snapshot bytes/proxy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let dps = dataplanes(n);
        let pols = policies(n, 1);
        let started = Instant::now();
        let mesh = MeshContext::new("default", &dps).with_policies(&pols);
        let context = started.elapsed();
        let started = Instant::now();
        let mut bytes = 0usize;
        for dp in &dps {
            let ctx = ProxyContext::new(&mesh, dp, metadata.clone()).expect("a dataplane");
            let snapshot = generator.generate(&ctx).expect("generation succeeds");
            bytes += snapshot
                .type_urls()
                .filter_map(|t| snapshot.get(t))
                .flat_map(|r| r.iter().map(|(_, r)| r))
                .map(|r| r.encoded_any().len())
                .sum::<usize>();
        }
        let all = started.elapsed();
        println!(
            "| {n} | {} | {:.1} ms | {:.1} us | {:.1} ms | {} |",
            pols.len(),
            context.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e6 / n as f64,
            all.as_secs_f64() * 1e3,
            bytes / n
        );
    }
    println!();
    incremental(&sizes);
    println!();
    let all_sizes = sizes_from_env("GENERATION_ALL_TO_ALL_N", &[100, 500, 1000]);
    all_to_all(&all_sizes, &generator, &metadata);
}

/// `n` transparent proxies, one per service, each reaching every service by its VIP.
fn all_to_all(sizes: &[usize], generator: &GeneratorList, metadata: &ProxyMetadata) {
    use std::collections::{BTreeMap, HashSet};
    println!(
        "| all-to-all services = proxies | policies | mesh context | one proxy (mean) | every proxy | bytes/proxy | distinct bytes/proxy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let dps: Vec<Resource> = (0..n)
            .map(|i| {
                parse_yaml(&format!(
                    "type: Dataplane\nmesh: default\nname: svc-{i}\nnetworking:\n  address: 10.{}.{}.{}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: svc-{i}, kuma.io/protocol: http}}\n  transparentProxying: {{redirectPortInbound: 15006, redirectPortOutbound: 15001}}\n",
                    i / 65536 % 256,
                    i / 256 % 256,
                    i % 256
                ))
                .expect("valid dataplane")
            })
            .collect();
        let mut pols = vec![parse_yaml(
            "type: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
        )
        .expect("valid policy")];
        for t in (0..n).step_by(10) {
            for body in [
                format!(
                    "type: MeshTimeout\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    default: {{http: {{requestTimeout: 5s}}}}"
                ),
                format!(
                    "type: MeshRetry\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    default: {{http: {{numRetries: 3}}}}"
                ),
                format!(
                    "type: MeshHTTPRoute\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: svc-{t}}}\n    rules:\n    - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n      default: {{backendRefs: [{{kind: MeshService, name: svc-{}}}]}}",
                    (t + 1) % n
                ),
            ] {
                let kind = body
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("type: ")
                    .to_lowercase();
                pols.push(
                    parse_yaml(&format!("mesh: default\nname: {kind}-{t}\n{body}"))
                        .expect("valid policy"),
                );
            }
        }
        let vips: BTreeMap<String, std::net::Ipv4Addr> = (0..n)
            .map(|i| {
                let i = u32::try_from(i).unwrap_or(0);
                (
                    format!("svc-{i}"),
                    std::net::Ipv4Addr::from(0xF000_0000u32 + 1 + i),
                )
            })
            .collect();
        let started = Instant::now();
        let mesh = MeshContext::new("default", &dps)
            .with_policies(&pols)
            .with_vips(vips, 80);
        let context = started.elapsed();
        // Only generation is timed; the byte accounting after each proxy is not.
        let mut all = std::time::Duration::ZERO;
        let (mut bytes, mut distinct) = (0usize, 0usize);
        let mut seen = HashSet::new();
        for dp in &dps {
            let started = Instant::now();
            let ctx = ProxyContext::new(&mesh, dp, metadata.clone()).expect("a dataplane");
            let snapshot = generator.generate(&ctx).expect("generation succeeds");
            all += started.elapsed();
            for r in snapshot
                .type_urls()
                .filter_map(|t| snapshot.get(t))
                .flat_map(|r| r.iter().map(|(_, r)| r))
            {
                bytes += r.encoded_any().len();
                // Distinct content by a 64-bit hash (collisions would only undercount).
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(r.encoded_any(), &mut h);
                if seen.insert(std::hash::Hasher::finish(&h)) {
                    distinct += r.encoded_any().len();
                }
            }
        }
        println!(
            "| {n} | {} | {:.1} ms | {:.2} ms | {:.2} s | {} | {} |",
            pols.len(),
            context.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e3 / n as f64,
            all.as_secs_f64(),
            bytes / n,
            distinct / n
        );
    }
}

/// Whole-mesh regeneration against one changed Dataplane, through the reconciler.
fn incremental(sizes: &[usize]) {
    use std::sync::Arc;
    use std::time::Duration;

    use kuma_core::manager::{ManagerOptions, ResourceManager};
    use kuma_store::MemoryStore;
    use kuma_xds::lifecycle::ProxyRegistry;
    use kuma_xds::sync::{Dirty, Reconciler};
    use xds_server::cache::SnapshotCache;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    println!(
        "| services | whole mesh: proxies, time | one Dataplane changed: proxies, time | ratio |"
    );
    println!("|---:|---:|---:|---:|");
    for &n in sizes {
        runtime.block_on(async {
            let manager =
                ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default());
            manager.ensure_default_mesh().await.expect("default mesh");
            for r in dataplanes(n).into_iter().chain(policies(n, 1)) {
                manager.apply(r).await.expect("stored");
            }
            // Every proxy is connected (the reconciler generates connected ones only).
            let registry = Arc::new(ProxyRegistry::default());
            for i in 0..n {
                registry.stream_opened(&format!("default.svc-{i}"));
            }
            let mut reconciler = Reconciler::new(
                manager.clone(),
                Arc::new(SnapshotCache::new()),
                Arc::new(GeneratorList::kuma_profile()),
                registry,
                Duration::ZERO,
            );
            let started = Instant::now();
            let all = reconciler.sync_mesh("default", &Dirty::everything()).await;
            let full = started.elapsed();
            // svc-0 gets a new address: its own proxy and its 10 callers change.
            let mut moved = dataplanes(n).swap_remove(0);
            let text = serde_json::to_string(&moved.to_value()).expect("json");
            moved = kuma_core::resource::parse_json(&text.replace("10.0.0.0", "10.255.0.0"))
                .expect("valid dataplane");
            manager.apply(moved).await.expect("stored");
            let started = Instant::now();
            let changed = Dirty::dataplanes(["svc-0"]);
            let some = reconciler.sync_mesh("default", &changed).await;
            let one = started.elapsed();
            println!(
                "| {n} | {all}, {:.1} ms | {some}, {:.2} ms | {:.0}x |",
                full.as_secs_f64() * 1e3,
                one.as_secs_f64() * 1e3,
                full.as_secs_f64() / one.as_secs_f64()
            );
        });
    }
}
