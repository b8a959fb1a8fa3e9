//! Golden tests of config generation: each `tests/golden/<case>.input.yaml` holds resources (a
//! Mesh, Dataplanes, policies); the first Dataplane is the proxy under test. Its snapshot,
//! rendered as canonical YAML (every `Any` expanded, keys sorted), must equal
//! `tests/golden/<case>.golden.yaml`. `UPDATE_GOLDEN_FILES=1` rewrites the goldens.
//!
//! A golden can never drift into config Envoy rejects: `goldens_are_accepted_by_envoy` feeds
//! every case's snapshot through the xDS server to one real Envoy and requires an ACK of every
//! type, and no NACK. (Inputs therefore use loopback addresses Envoy can bind.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuma_core::model::mesh::{MeshSpec, MtlsMode};
use kuma_core::resource::{Resource, ResourceType, parse_documents};
use kuma_xds::generate::{
    GeneratorList, MeshContext, MeshMtls, ProxyContext, ProxyMetadata, SnapshotGenerator,
    WorkloadCertificate,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::server::{AdsServer, Callbacks};

/// What every golden proxy reports: admin and readiness ports, and a work directory (where
/// Envoy, in the acceptance test, opens the access-log pipe of TCP log backends as a file).
fn metadata() -> ProxyMetadata {
    ProxyMetadata {
        admin_port: Some(29901),
        readiness_port: Some(29902),
        workdir: Some("/tmp".into()),
    }
}

/// A fixed certificate or key of the mTLS cases (a CA and a workload certificate it issued,
/// made once with openssl), so their goldens do not change from run to run.
fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".input.yaml")?
                .to_string();
            Some((name, path))
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", dir.display());
    cases
}

/// The snapshot of the first Dataplane of `input`.
fn generate(input: &Path) -> Snapshot {
    let resources = parse_documents(&std::fs::read_to_string(input).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    for r in &resources {
        r.validate()
            .unwrap_or_else(|e| panic!("{}: {} is invalid: {e}", input.display(), r.meta.name));
    }
    let of = |t: ResourceType| -> Vec<Resource> {
        resources
            .iter()
            .filter(|r| r.rtype() == t)
            .cloned()
            .collect()
    };
    let dataplanes = of(ResourceType::Dataplane);
    let mesh_spec = resources
        .iter()
        .find_map(|r| r.spec_as::<MeshSpec>().cloned())
        .unwrap_or_default();
    let mut mesh = MeshContext::new("default", &dataplanes)
        .with_spec(&mesh_spec)
        .with_policies(&resources);
    // VIPs from Kuma's `kuma-default-dns-vips` Config, when the input has one.
    let vips: BTreeMap<String, std::net::Ipv4Addr> = resources
        .iter()
        .filter(|r| r.meta.name == "kuma-default-dns-vips")
        .filter_map(|r| r.spec_as::<kuma_core::model::system::ConfigSpec>())
        .filter_map(|c| serde_json::from_str::<BTreeMap<String, Value>>(&c.config).ok())
        .flatten()
        .filter_map(|(key, vo)| {
            let service = key.strip_prefix("0:")?.to_string();
            Some((service, vo["address"].as_str()?.parse().ok()?))
        })
        .collect();
    mesh = mesh.with_vips(vips, 80);
    let backend = mesh_spec.mtls.as_ref().and_then(|m| {
        let enabled = m.enabled_backend.as_deref()?;
        m.backends.iter().find(|b| b.name == enabled)
    });
    if let Some(b) = backend {
        mesh = mesh.with_mtls(MeshMtls {
            permissive: b.mode() == MtlsMode::Permissive,
            ca_pem: fixture("mtls-fixture-ca.pem"),
            strict_spiffe: false,
            sds_cluster: None,
        });
    }
    let identity = WorkloadCertificate {
        cert_pem: fixture("mtls-fixture-identity.pem"),
        key_pem: fixture("mtls-fixture-identity.key"),
    };
    let proxy = dataplanes.first().expect("a Dataplane in the input");
    let ctx = ProxyContext::new(&mesh, proxy, metadata())
        .unwrap()
        .with_identity(&identity);
    GeneratorList::kuma_profile()
        .generate(&ctx)
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Canonical YAML of a snapshot: `{short type: {name: resource}}`, keys sorted.
fn render(snapshot: &Snapshot) -> String {
    let json = xds_server::inspect::snapshot_json(snapshot).unwrap();
    let by_short_type: serde_json::Map<String, Value> = json
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, v)| (t.rsplit('.').next().unwrap().to_string(), v.clone()))
        .collect();
    serde_norway::to_string(&sorted(Value::Object(by_short_type))).unwrap()
}

#[test]
fn goldens_match() {
    let update = std::env::var("UPDATE_GOLDEN_FILES").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, input) in cases() {
        let rendered = render(&generate(&input));
        let golden = input.with_file_name(format!("{name}.golden.yaml"));
        if update {
            std::fs::write(&golden, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != rendered {
            let first = expected
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(expected.lines().count().min(rendered.lines().count()));
            failures.push(format!(
                "{name}: differs from {} at line {}:\n  golden:    {:?}\n  generated: {:?}",
                golden.display(),
                first + 1,
                expected.lines().nth(first).unwrap_or("<end>"),
                rendered.lines().nth(first).unwrap_or("<end>"),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN_FILES=1 to accept the new output)",
        failures.join("\n")
    );
}

/// Equal inputs give equal bytes, hence equal versions: maps inside resources (struct fields
/// of endpoint metadata, JSON log formats, retry predicates) must not encode in a random order,
/// or every regeneration would push unchanged config to every proxy.
#[test]
fn generation_is_deterministic() {
    for (name, input) in cases() {
        let first = generate(&input);
        for _ in 0..10 {
            let again = generate(&input);
            for t in first.type_urls() {
                assert_eq!(
                    first.version(t),
                    again.version(t),
                    "{name}: {t} encodes differently on regeneration"
                );
            }
        }
    }
}

/// ACKed and NACKed versions per type, as Envoy reported them.
#[derive(Default)]
struct Verdicts {
    acked: Mutex<BTreeMap<String, String>>,
    nacked: Mutex<Vec<(String, String, String)>>,
}

impl Callbacks for Verdicts {
    fn on_ack(&self, _: u64, _: &str, type_url: &str, version: &str) {
        self.acked
            .lock()
            .unwrap()
            .insert(type_url.to_string(), version.to_string());
    }
    fn on_nack(&self, _: u64, _: &str, type_url: &str, version: &str, error: &str) {
        self.nacked.lock().unwrap().push((
            type_url.to_string(),
            version.to_string(),
            error.to_string(),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goldens_are_accepted_by_envoy() {
    let cache = Arc::new(SnapshotCache::new());
    let verdicts = Arc::new(Verdicts::default());
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = xds.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone(), verdicts.clone()).into_service())
            .serve_with_incoming(TcpListenerStream::new(xds)),
    );
    let admin_port = kuma_testkit::free_port().await;
    let dir = std::env::temp_dir().join(format!("kuma-xds-golden-{}", std::process::id()));
    let bootstrap = kuma_testkit::ads_bootstrap("golden", xds_port, admin_port, "GRPC");
    let _envoy = kuma_testkit::spawn_envoy(&dir, &bootstrap, admin_port);

    for (name, input) in cases() {
        let snapshot = generate(&input);
        // The fixtures' ports are fixed: keep other tests from being handed them.
        for port in listener_ports(&snapshot) {
            kuma_testkit::reserve_port(port).await;
        }
        let wanted: Vec<(String, String)> = snapshot
            .type_urls()
            .map(|t| (t.to_string(), snapshot.version(t)))
            .collect();
        cache.set("golden", snapshot);
        let mut accepted = false;
        for _ in 0..200 {
            let rejected: Vec<_> = verdicts
                .nacked
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, v, _)| wanted.contains(&(t.clone(), v.clone())))
                .cloned()
                .collect();
            assert!(rejected.is_empty(), "{name}: Envoy rejected {rejected:?}");
            let all_acked = {
                let acked = verdicts.acked.lock().unwrap();
                wanted.iter().all(|(t, v)| acked.get(t) == Some(v))
            };
            if all_acked {
                accepted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            accepted,
            "{name}: Envoy did not ACK every type within 10 s (wanted {wanted:?}, acked {:?}); log in {}",
            verdicts.acked.lock().unwrap(),
            dir.display()
        );
    }
}

/// The ports the listeners of `snapshot` bind.
fn listener_ports(snapshot: &Snapshot) -> Vec<u16> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use prost::Message as _;
    let Some(listeners) = snapshot.get(xds_server::types::LISTENER) else {
        return Vec::new();
    };
    let mut ports: Vec<u16> = listeners
        .iter()
        .map(|(_, r)| r)
        .filter_map(|r| Listener::decode(r.to_any().value.as_slice()).ok())
        .filter_map(|l| match l.address?.address? {
            Address::SocketAddress(a) => match a.port_specifier? {
                PortSpecifier::PortValue(p) => u16::try_from(p).ok(),
                PortSpecifier::NamedPort(_) => None,
            },
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
