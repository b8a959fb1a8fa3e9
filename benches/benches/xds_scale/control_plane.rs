//! The measured process: a control plane started through the builder as the binaries start
//! it, the mesh of the scenario, and the measurements, driving the simulated proxies of the
//! child process over its stdin and stdout.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use kuma_ca::dataplane_token::{DataplaneIdentity, DataplaneTokens};
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{Resource, parse_yaml};
use kuma_cp::{Config, ControlPlane};
use kuma_xds::generate::node_id;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use xds_server::types::{ENDPOINT, LISTENER};

use super::{
    PROXIES_ENV, Run, SHARED_CONNECTIONS, cpu_time, heap_bytes, idle_window, peak_rss_kib, rss_kib,
};

/// Instance `k` of service `s`: its Dataplane name.
fn name(s: usize, k: usize) -> String {
    format!("svc-{s}-{k}")
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// The port of the explicit outbound to service `t` (the same in every proxy, so that its
/// listener has one name everywhere).
fn outbound_port(t: usize) -> usize {
    10_000 + t
}

/// Instance `k` of service `s`: a transparent proxy (`all-to-all`), or 10 explicit outbounds
/// to the next 10 services (`ten-outbound`).
fn dataplane(scenario: &str, services: usize, s: usize, k: usize, address: &str) -> Resource {
    let reach = if scenario == "all-to-all" {
        "  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n"
            .to_string()
    } else {
        let mut out = String::from("  outbound:\n");
        for t in (1..=10).map(|d| (s + d) % services).filter(|t| *t != s) {
            out.push_str(&format!(
                "  - port: {}\n    tags: {{kuma.io/service: svc-{t}}}\n",
                outbound_port(t)
            ));
        }
        out
    };
    parse_yaml(&format!(
        "type: Dataplane\nmesh: default\nname: {}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: svc-{s}, kuma.io/protocol: http}}\n{reach}",
        name(s, k)
    ))
    .expect("dataplane")
}

/// The mesh with mTLS, and its policies. Permissions allow all; with `per_service`, each
/// service admits the 10 services before it instead.
fn policies(services: usize, per_service: bool) -> Vec<Resource> {
    let mut out = vec![
        parse_yaml(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
        )
        .expect("mesh"),
    ];
    if per_service {
        for s in 0..services {
            let mut from = String::new();
            for d in (1..=10).filter(|d| *d < services) {
                from.push_str(&format!(
                    "  - targetRef: {{kind: MeshService, name: svc-{}}}\n    default: {{action: Allow}}\n",
                    (s + services - d) % services
                ));
            }
            out.push(
                parse_yaml(&format!(
                    "type: MeshTrafficPermission\nmesh: default\nname: allow-{s}\nspec:\n  targetRef: {{kind: MeshService, name: svc-{s}}}\n  from:\n{from}"
                ))
                .expect("policy"),
            );
        }
    } else {
        out.push(
            parse_yaml(
                "type: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
            )
            .expect("policy"),
        );
    }
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

/// Until the control plane's DNS job allocated a VIP to each of the `services`: a running
/// mesh has its VIPs, and proxies connecting before would receive a config without them.
async fn await_vips(manager: &ResourceManager, services: usize) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let vips = kuma_dns::vips::stored_service_vips(manager, "default")
            .await
            .unwrap_or_default();
        if vips.len() >= services {
            return vips
                .into_iter()
                .map(|(s, ip)| (s, ip.to_string()))
                .collect();
        }
        assert!(Instant::now() < deadline, "VIPs not allocated in 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The child process of simulated proxies, and its lines.
struct Proxies {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proxies {
    fn spawn(spec: &str, setup: &str) -> Proxies {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new(exe)
            .env(PROXIES_ENV, spec)
            .env_remove(super::RUN_ENV)
            // A profiler preloaded into the control plane stays out of the proxies.
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("proxies process");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(setup.as_bytes()).expect("setup");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proxies {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("command");
        stdin.flush().expect("command");
    }

    /// The rest of the next line, which must start with `word`.
    async fn expect(&mut self, word: &str) -> String {
        let line = self.lines.recv().await.expect("proxies process ended");
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("expected `{word}` from the proxies, got `{line}`"));
        rest.trim().to_string()
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `pem` to a file of its own in the temporary directory.
fn pem_file(label: &str, pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("xds-scale-{}-{label}.pem", std::process::id()));
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// One measured run.
pub async fn run(run: Run) {
    kuma_cp::process::raise_open_file_limit();
    let (services, proxies) = (run.services, run.proxies);
    let instances = proxies.div_ceil(services);
    let mut config = Config::default();
    config.dp_server.port = kuma_testkit::free_port().await;
    config.api_server.http.enabled = false;
    config.api_server.https.enabled = false;
    config.monitoring_assignment_server.enabled = false;
    config.diagnostics.server_port = kuma_testkit::free_port().await;
    config.dns_server.port = kuma_testkit::free_port().await;
    config.mtls.key_type =
        serde_json::from_value(serde_json::json!(run.key_type)).expect("key type");
    // Every simulated proxy connects from 127.0.0.1.
    config.connections.max_per_client = u32::try_from(proxies + 64).expect("proxies fit u32");
    config.experimental.auto_reachable_services = run.auto_reachable;
    let cp = ControlPlane::start(config).await.expect("control plane");
    let manager = cp.manager().clone();
    for p in policies(services, run.auto_reachable) {
        manager.apply(p).await.expect("policy");
    }
    let mut nodes = Vec::with_capacity(proxies);
    for i in 0..proxies {
        let (s, k) = (i % services, i / services);
        manager
            .create(dataplane(&run.scenario, services, s, k, &ip(i + 10)))
            .await
            .expect("dataplane");
        nodes.push((s, k));
    }
    let vips = await_vips(&manager, services).await;
    let tokens = DataplaneTokens::new(manager.clone());
    let mut setup = String::new();
    // What the proxies watch: svc-0's endpoints, and their listener for svc-0.
    let listener = if run.scenario == "all-to-all" {
        format!("outbound:{}:", vips["svc-0"])
    } else {
        format!("outbound:127.0.0.1:{}", outbound_port(0))
    };
    setup.push_str(&format!(
        "target {ENDPOINT} svc-0\ntarget {LISTENER} {listener}\n"
    ));
    for &(s, k) in &nodes {
        let identity = DataplaneIdentity {
            name: name(s, k),
            mesh: "default".into(),
            ..Default::default()
        };
        let token = tokens
            .issue(&identity, Duration::from_secs(24 * 3600))
            .await
            .expect("token");
        setup.push_str(&format!(
            "proxy {} {token}\n",
            node_id("default", &name(s, k))
        ));
    }
    setup.push('\n');
    let ca = pem_file("ca", cp.ca_pem());
    let port = cp.dp_server_addr().expect("dp-server").port();
    let connections = if run.shared { "shared" } else { "per-proxy" };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_kib();
    let heap_start = heap_bytes();

    let mut children = Proxies::spawn(
        &format!(
            "{port} {} {connections} {}",
            run.protocol,
            ca.to_str().expect("UTF-8 path")
        ),
        &setup,
    );
    children.expect("loaded").await;
    let started = Instant::now();
    let cpu_before = cpu_time();
    children.say("go");
    children.expect("initial").await;
    let initial = started.elapsed();
    let initial_cpu = cpu_time().saturating_sub(cpu_before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib();
    let rss_peak = peak_rss_kib();
    let snapshot_bytes = |node: &str| -> usize {
        cp.cache()
            .get(node)
            .map(|snapshot| {
                snapshot
                    .type_urls()
                    .filter_map(|t| snapshot.get(t))
                    .flat_map(|t| t.iter().map(|(_, r)| r.encoded_any().len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    let config_bytes = snapshot_bytes(&node_id("default", &name(0, 0)));

    // One new instance of svc-0.
    children.say("watch 0");
    let watchers: usize = children.expect("watching").await.parse().expect("count");
    let changed = Instant::now();
    manager
        .create(dataplane(
            &run.scenario,
            services,
            0,
            instances,
            &ip(proxies + 10),
        ))
        .await
        .expect("create");
    children.expect("converged").await;
    let endpoint_converge = changed.elapsed();
    let endpoint_bytes: u64 = children.expect("bytes").await.parse().expect("bytes");
    // svc-0's endpoints as a proxy reaching it has them.
    let cla = nodes
        .iter()
        .find_map(|&(s, k)| {
            let snapshot = cp.cache().get(&node_id("default", &name(s, k)))?;
            let r = snapshot.get(ENDPOINT)?.get("svc-0")?.clone();
            Some(r)
        })
        .expect("svc-0's endpoints");
    let cla_bytes = cla.encoded_any().len();
    let endpoint_min_bytes = cla_bytes * watchers;

    // A MeshTimeout change for svc-0.
    children.say("watch 1");
    let policy_watchers: usize = children.expect("watching").await.parse().expect("count");
    assert_eq!(policy_watchers, watchers, "the proxies reaching svc-0");
    let changed = Instant::now();
    manager
        .apply(timeout(0, "6s"))
        .await
        .expect("update the timeout");
    children.expect("converged").await;
    let policy_converge = changed.elapsed();
    children.expect("bytes").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time();
    tokio::time::sleep(idle_window()).await;
    let idle = cpu_time().saturating_sub(before);
    let rss_settled = rss_kib();
    let heap_settled = heap_bytes();

    let conns = if run.shared {
        SHARED_CONNECTIONS.min(watchers)
    } else {
        watchers
    };
    let physical = physical_limit(&mut children, &cla, conns, watchers).await;

    let line = serde_json::json!({
        "scenario": run.scenario,
        "protocol": run.protocol,
        "services": services,
        "proxies": proxies,
        "key_type": run.key_type,
        "auto_reachable_services": run.auto_reachable,
        "connections": if run.shared { SHARED_CONNECTIONS.min(proxies) } else { proxies },
        "initial_ack_s": initial.as_secs_f64(),
        "cp_cpu_s_initial": initial_cpu.as_secs_f64(),
        "cp_rss_bytes": rss_connected * 1024,
        "cp_rss_bytes_per_proxy": rss_connected.saturating_sub(rss_start) * 1024 / proxies as u64,
        "cp_rss_peak_bytes": rss_peak * 1024,
        "cp_rss_settled_bytes_per_proxy": rss_settled.saturating_sub(rss_start) * 1024 / proxies as u64,
        "cp_heap_settled_bytes_per_proxy": heap_settled.saturating_sub(heap_start) / proxies as u64,
        "config_bytes_per_proxy": config_bytes,
        "endpoint_change_proxies": watchers,
        "endpoint_change_converge_s": endpoint_converge.as_secs_f64(),
        "endpoint_change_bytes": endpoint_bytes,
        "endpoint_change_min_bytes": endpoint_min_bytes,
        "physical_limit_s": physical.as_secs_f64(),
        "endpoint_change_physical_ratio": endpoint_converge.as_secs_f64() / physical.as_secs_f64(),
        "policy_change_converge_s": policy_converge.as_secs_f64(),
        "idle_window_s": idle_window().as_secs_f64(),
        "cp_cpu_s_idle_30s": idle.as_secs_f64(),
    });
    println!("{line}");
    drop(children);
    let _ = std::fs::remove_file(ca);
    cp.shutdown().await;
}

/// The physical limit of an endpoint change: the time to encode `cla` once and write it
/// `copies` times (`endpoint_change_min_bytes`) through `conns` TLS connections to the proxies'
/// process, which reads every byte.
async fn physical_limit(
    children: &mut Proxies,
    cla: &xds_server::cache::EncodedResource,
    conns: usize,
    copies: usize,
) -> Duration {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let cert = pem_file("physical", &certified.cert.pem());
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .expect("key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        let mut handshakes = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (tcp, _) = listener.accept().await.expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let acceptor = acceptor.clone();
            handshakes.spawn(async move { acceptor.accept(tcp).await.expect("TLS accept") });
        }
        handshakes.join_all().await
    });
    // The same message the control plane sends, decoded from its snapshot.
    let any = Any::decode(cla.encoded_any()).expect("Any");
    let message = ClusterLoadAssignment::decode(any.value.as_slice()).expect("CLA");
    let any_len = any.encoded_len();
    children.say(&format!(
        "physical {} {} {conns} {copies} {any_len}",
        addr.port(),
        cert.to_str().expect("UTF-8 path")
    ));
    children.expect("physical-ready").await;
    let streams = accepting.await.expect("accepted");
    let started = Instant::now();
    let encoded = Arc::new(
        Any {
            type_url: ENDPOINT.to_string(),
            value: message.encode_to_vec(),
        }
        .encode_to_vec(),
    );
    assert_eq!(encoded.len(), any_len, "the same encoding");
    let mut writers = tokio::task::JoinSet::new();
    for (j, mut stream) in streams.into_iter().enumerate() {
        let n = super::proxies::share(copies, conns, j);
        let encoded = encoded.clone();
        writers.spawn(async move {
            for _ in 0..n {
                stream.write_all(&encoded).await.expect("write");
            }
            stream.flush().await.expect("flush");
            stream
        });
    }
    children.expect("physical-received").await;
    let elapsed = started.elapsed();
    drop(writers.join_all().await);
    let _ = std::fs::remove_file(cert);
    elapsed
}
