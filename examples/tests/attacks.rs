//! The control plane under attack, as issue 19 found it open to: an anonymous client on a host
//! of its own (a network namespace joined to the control plane's by a veth pair, so it is a
//! remote caller, not localhost), and the holder of one proxy's dataplane token. Each test
//! scripts one attack and checks that it fails, and, where the attack was about load, that
//! `/ready` keeps answering within 100 ms while it runs (probed from the control plane's own
//! host, a client the attacker is not).
//!
//! Needs root, iproute2, prlimit, python3 with grpcio, and chromium (scripts/test installs
//! them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::netns::{CP_IP, Lab, join};
use common::{Standalone, post_json, put_json, send_json, test_dir};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use kuma_testkit::{eventually, http_get, http_get_at, http_request};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long `/ready` may take while an attack runs.
const READY_WITHIN: Duration = Duration::from_millis(100);

const ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SDS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const IDENTITY: &str = "identity_cert:secret:default";

/// Probes `GET /ready` on the control plane's own host every 10 ms, each time over a new
/// connection, until [`Prober::finish`].
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, Duration)>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut seen = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let status =
                        tokio::time::timeout(Duration::from_secs(5), http_get(port, "/ready"))
                            .await
                            .map_or(0, |(s, _)| s);
                    seen.push((status, started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            })
        });
        Prober { stop, thread }
    }

    /// Stops probing; every probe answered 200 within [`READY_WITHIN`].
    async fn finish(self, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = join(self.thread).await;
        assert!(seen.len() >= 2, "{during}: only {} probes", seen.len());
        let slowest = seen.iter().map(|(_, t)| *t).max().unwrap();
        let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
        assert!(failed.is_empty(), "{during}: /ready failed: {failed:?}");
        assert!(
            slowest < READY_WITHIN,
            "{during}: /ready took {slowest:?} (of {} probes)",
            seen.len()
        );
        println!(
            "{during}: {} probes of /ready, slowest {slowest:?}",
            seen.len()
        );
    }
}

/// A Dataplane as the bootstrap puts it into node metadata.
fn dataplane_json(name: &str, port: u16) -> String {
    serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [
            {"port": port, "servicePort": port + 1, "tags": {"kuma.io/service": name}}
        ]}
    })
    .to_string()
}

/// A node that says it is `node_id`, carrying `dataplane` (JSON) in its metadata if given.
fn node(node_id: &str, dataplane: Option<&str>) -> Node {
    let mut fields = std::collections::HashMap::new();
    if let Some(dp) = dataplane {
        fields.insert(
            "dataplane.resource".to_string(),
            Value {
                kind: Some(value::Kind::StringValue(dp.to_string())),
            },
        );
    }
    Node {
        id: node_id.to_string(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// The first request of a stream of `method` asking for the mesh's secrets.
fn secrets_request(method: &str, node: Node) -> Vec<u8> {
    let names = vec![IDENTITY.to_string(), "mesh_ca:secret:default".to_string()];
    if method == DELTA_ADS {
        DeltaDiscoveryRequest {
            node: Some(node),
            type_url: SECRET.into(),
            resource_names_subscribe: names,
            ..Default::default()
        }
        .encode_to_vec()
    } else {
        DiscoveryRequest {
            node: Some(node),
            type_url: SECRET.into(),
            resource_names: names,
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// grpcio (Python's gRPC, an independent client) on a stream of `method`: prints `RESPONSE n`
/// per response, `KEY <base64>` for every PEM private key a response carries, and at the end
/// `STATUS <code> <responses> <details>`.
const GRPC_CLIENT: &str = r#"
import base64, re, sys, time, grpc
host, port, ca, method, request, token, seconds = sys.argv[1:8]
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, 'rb').read())
channel = grpc.secure_channel(host + ':' + port, creds,
    options=[('grpc.ssl_target_name_override', 'localhost')])
call = channel.stream_stream(method, request_serializer=lambda b: b,
    response_deserializer=lambda b: b)
def requests():
    yield bytes.fromhex(request)
    time.sleep(float(seconds))
metadata = [('authorization', token)] if token else []
n = 0
try:
    for response in call(requests(), metadata=metadata, timeout=float(seconds) + 10):
        n += 1
        print('RESPONSE', n, flush=True)
        pattern = rb'-----BEGIN [A-Z ]*PRIVATE KEY-----[A-Za-z0-9+/=\s]+-----END [A-Z ]*PRIVATE KEY-----\n?'
        for m in re.finditer(pattern, response):
            print('KEY', base64.b64encode(m.group(0)).decode(), flush=True)
    print('STATUS OK', n, flush=True)
except grpc.RpcError as e:
    print('STATUS', e.code().name, n, e.details(), flush=True)
"#;

/// Starts [`GRPC_CLIENT`] in network namespace `netns` against `host:port`, keeping its
/// stream open for `seconds`.
fn grpc_client(
    netns: &str,
    (host, port): (&str, u16),
    ca: &str,
    method: &str,
    request: &[u8],
    token: &str,
    seconds: u32,
) -> tokio::process::Child {
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    tokio::process::Command::new("ip")
        .args(["netns", "exec", netns, "python3", "-c", GRPC_CLIENT, host])
        .args([
            &port.to_string(),
            ca,
            method,
            &hex,
            token,
            &seconds.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with grpcio")
}

/// Reads [`GRPC_CLIENT`]'s lines until its stream ended: (responses, keys, final status).
async fn grpc_outcome(child: tokio::process::Child) -> (usize, Vec<String>, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the gRPC client ends")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let responses = text.lines().filter(|l| l.starts_with("RESPONSE")).count();
    let keys = text
        .lines()
        .filter_map(|l| l.strip_prefix("KEY "))
        .map(str::to_string)
        .collect();
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("STATUS "))
        .unwrap_or_default()
        .to_string();
    (responses, keys, status)
}

/// A proxy that stays connected (its ADS stream open for `seconds`) and reports the private key
/// it was given: the key material the control plane must never show anyone else.
async fn connected_proxy(
    lab: &Lab,
    cp: &Standalone,
    name: &str,
    token: &str,
    seconds: u32,
) -> (tokio::process::Child, String) {
    let request = secrets_request(
        ADS,
        node(
            &format!("default.{name}"),
            Some(&dataplane_json(name, 20001)),
        ),
    );
    let mut child = grpc_client(
        &lab.cp.name,
        ("127.0.0.1", cp.dp_port),
        &cp.ca_file,
        ADS,
        &request,
        token,
        seconds,
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout);
    let key = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                lines.read_line(&mut line).await.unwrap() > 0,
                "the proxy's stream ended without a key"
            );
            if let Some(key) = line.trim().strip_prefix("KEY ") {
                return key.to_string();
            }
        }
    })
    .await
    .expect("the proxy gets its identity");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    (child, String::from_utf8(pem).unwrap())
}

/// `POST path` with a JSON `body` over `stream`: (status, raw response).
async fn post_json_over<S>(stream: S, path: &str, body: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    http_request(
        stream,
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// A TLS connection to the control plane's `port` on its host, trusting `ca` (PEM) and
/// checking the certificate for `localhost`, the name it is issued to.
async fn tls_to_cp(ca: &str, port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = kuma_dp::tls::client_config(Some(ca)).unwrap();
    let tcp = TcpStream::connect((CP_IP, port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Turns on mesh mTLS (builtin CA) with a permission for all traffic.
async fn enable_mtls(api_port: u16) {
    put_json(
        api_port,
        "/meshes/default/meshtrafficpermissions/allow-all",
        r#"{"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all", "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}"#,
    )
    .await;
    put_json(
        api_port,
        "/meshes/default",
        r#"{"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}"#,
    )
    .await;
}

/// Every form in which `pem` (a private key) could leak into a text: its PEM lines, its DER
/// as base64 lines, and the base64 of the whole PEM (how protobuf JSON shows bytes).
fn key_forms(pem: &str) -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut forms: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    forms.push(b64(pem)[..40].to_string());
    forms.push("PRIVATE KEY".into());
    // The base64 of any PEM private key starts alike ("-----BEGIN "...).
    forms.push(b64("-----BEGIN PRIVATE KEY-----")[..24].to_string());
    forms.push(b64("-----BEGIN EC PRIVATE KEY-----")[..24].to_string());
    forms.push(b64("-----BEGIN RSA PRIVATE KEY-----")[..24].to_string());
    forms
}

/// Panics if `text` (named `what`) holds any of `forms`.
fn assert_no_key(what: &str, text: &str, forms: &[String]) {
    for form in forms {
        assert!(
            !text.contains(form.as_str()),
            "{what} holds private key material ({form:?})"
        );
    }
}

/// `kumactl` with `args` against `api` (`http://...`), run in network namespace `netns`, with
/// its configuration under `dir`: its standard output and error.
fn kumactl(netns: &str, dir: &std::path::Path, api: &str, args: &[&str]) -> String {
    let config = dir.join(format!("kumactl-{netns}.yaml"));
    let kumactl = env!("CARGO_BIN_EXE_kumactl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", netns, kumactl, "--config-file"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !config.exists() {
        run(&[
            "config",
            "control-planes",
            "add",
            "--name",
            "cp",
            "--address",
            api,
        ]);
    }
    run(args)
}

#[test]
fn private_keys_never_leave_the_control_plane() {
    let lab = Lab::create("keys");
    lab.enter_cp().block_on(async {
        let dir = test_dir("attack-keys");
        let log = dir.join("standalone.log");
        let cp = Standalone::launch(
            &[],
            &[],
            &[("KUMA_MTLS_KEY_TYPE", "ecdsaP256"), ("RUST_LOG", "debug")],
            std::fs::File::create(&log).unwrap().into(),
        )
        .await;
        enable_mtls(cp.api_port).await;
        let token = common::dataplane_token(cp.api_port, "default", "victim").await;
        let (_proxy, pem) = connected_proxy(&lab, &cp, "victim", &token, 60).await;
        let forms = key_forms(&pem);
        let api = cp.api_port;
        eventually("the victim's config is served", || async {
            let (_, raw) = http_get(api, "/meshes/default/dataplanes/victim/_config").await;
            raw.contains(IDENTITY)
        })
        .await;

        // An anonymous caller on another host reads everything it may read.
        let (mads, diagnostics) = (cp.mads_port, cp.diagnostics_port);
        let remote = lab.on_remote(move || async move {
            let mut seen = Vec::new();
            for path in [
                "/meshes/default/dataplanes/victim/_config",
                "/meshes/default/dataplanes/victim/_overview",
                "/meshes/default/dataplanes/victim/_rules",
                "/meshes/default/dataplanes/victim/_policies",
                "/meshes/default/dataplanes+insights",
                "/meshes/default/dataplanes",
                "/dataplanes",
                "/meshes",
                "/meshes/default",
                "/meshes/default/secrets",
                "/global-secrets",
                "/global-insight",
                "/config",
                "/",
                "/gui/",
            ] {
                let (status, raw) = http_get_at(CP_IP, api, path).await;
                seen.push((format!("GET {path}"), status, raw));
            }
            let (status, raw) = http_get_at(CP_IP, diagnostics, "/metrics").await;
            seen.push(("GET :diagnostics/metrics".into(), status, raw));
            let stream = TcpStream::connect((CP_IP, mads)).await.unwrap();
            let path = "/v3/discovery:monitoringassignments?fetch-timeout=0";
            let (status, raw) = post_json_over(stream, path, "{}").await;
            seen.push(("POST MADS".into(), status, raw));
            seen
        });
        let seen = join(remote).await;
        for (what, status, raw) in &seen {
            assert_no_key(what, raw, &forms);
            if what.contains("secrets") {
                assert_eq!(*status, 403, "{what}: {raw}");
            } else if !what.contains("MADS") {
                assert_eq!(*status, 200, "{what}: {raw}");
            }
        }
        // The config is there, its key redacted as Envoy's config dump does.
        let config = &seen[0].2;
        assert!(config.contains(IDENTITY), "{config}");
        assert!(config.contains("W3JlZGFjdGVkXQ=="), "{config}");

        // kumactl, remote and anonymous, and local as admin.
        let remote_api = format!("http://{CP_IP}:{api}");
        let local_api = format!("http://127.0.0.1:{api}");
        for (netns, address) in [(&lab.remote.name, &remote_api), (&lab.cp.name, &local_api)] {
            for args in [
                &["inspect", "dataplane", "victim", "--type", "config"][..],
                &["inspect", "dataplanes"],
                &["get", "dataplanes", "-o", "yaml"],
                &["get", "meshes", "-o", "json"],
            ] {
                let out = kumactl(netns, &dir, address, args);
                assert_no_key(&format!("kumactl {args:?} ({netns})"), &out, &forms);
                if args[0] == "inspect" && args.len() > 2 {
                    assert!(out.contains(IDENTITY), "kumactl {args:?}: {out}");
                }
            }
        }

        // The GUI's page of the victim, rendered by Chromium on the remote host.
        let url = format!("http://{CP_IP}:{api}/gui/#/meshes/default/dataplanes/victim");
        let mut dom = String::new();
        for budget in ["5000", "20000"] {
            let out = common::chromium(
                &lab.remote.exec_prefix(),
                &dir,
                &["--dump-dom", &format!("--virtual-time-budget={budget}")],
                &url,
            );
            dom = String::from_utf8_lossy(&out.stdout).into_owned();
            if dom.contains(IDENTITY) {
                break;
            }
        }
        assert!(dom.contains(IDENTITY), "the GUI shows the config: {dom}");
        assert_no_key("the GUI's data plane page", &dom, &forms);

        // Nor does the log, at debug level.
        let log_text = std::fs::read_to_string(&log).unwrap();
        assert!(log_text.contains("DEBUG"), "the log is at debug level");
        assert_no_key("the control plane's log", &log_text, &forms);
    });
}

#[test]
fn a_token_for_one_proxy_gets_no_other_proxys_config() {
    let lab = Lab::create("token");
    lab.enter_cp().block_on(async {
        let cp = Standalone::start_with(
            &["--port-layout", "split"],
            &[("KUMA_MTLS_KEY_TYPE", "ecdsaP256")],
        )
        .await;
        let split = cp.split.unwrap();
        enable_mtls(cp.api_port).await;
        let victim_token = common::token_from(split.admin, "/tokens", "default", "victim").await;
        let evil_token = common::token_from(split.admin, "/tokens", "default", "evil").await;
        let (_victim, victim_key) = connected_proxy(&lab, &cp, "victim", &victim_token, 60).await;

        // The attacker holds evil's token and asks, from its own host, for victim's config:
        // node.id names victim, the metadata carries evil's Dataplane (which the token fits),
        // over SotW and delta ADS on the dp-server and over the SDS port.
        let evil = dataplane_json("evil", 20011);
        for (method, port) in [(ADS, cp.dp_port), (DELTA_ADS, cp.dp_port), (SDS, split.sds)] {
            for dataplane in [Some(evil.as_str()), None] {
                let request = secrets_request(method, node("default.victim", dataplane));
                let client = grpc_client(
                    &lab.remote.name,
                    (CP_IP, port),
                    &cp.ca_file,
                    method,
                    &request,
                    &evil_token,
                    2,
                );
                let (responses, keys, status) = grpc_outcome(client).await;
                let what = format!("{method} on {port}, metadata {:?}", dataplane.is_some());
                assert_eq!(responses, 0, "{what}: {status}");
                assert!(keys.is_empty(), "{what}");
                let expected = if dataplane.is_some() {
                    "PERMISSION_DENIED"
                } else {
                    "UNAUTHENTICATED"
                };
                assert!(status.starts_with(expected), "{what}: {status}");
            }
        }
        // With its own node, the same token and channel get evil's own identity, not victim's.
        let request = secrets_request(ADS, node("default.evil", Some(&evil)));
        let client = grpc_client(
            &lab.remote.name,
            (CP_IP, cp.dp_port),
            &cp.ca_file,
            ADS,
            &request,
            &evil_token,
            3,
        );
        let (responses, keys, status) = grpc_outcome(client).await;
        assert!(responses >= 1, "evil's own stream is served: {status}");
        assert_eq!(keys.len(), 1, "{status}");
        let evil_key = base64::engine::general_purpose::STANDARD
            .decode(&keys[0])
            .unwrap();
        assert_ne!(String::from_utf8(evil_key).unwrap(), victim_key);

        // The bootstrap server refuses victim's bootstrap to evil's token.
        let body = serde_json::json!({
            "mesh": "default", "name": "victim", "dataplaneToken": evil_token,
            "dataplaneResource": dataplane_json("victim", 20001),
        })
        .to_string();
        let bootstrap = split.bootstrap;
        let (status, raw) = join(lab.on_remote(move || async move {
            let stream = TcpStream::connect((CP_IP, bootstrap)).await.unwrap();
            post_json_over(stream, "/bootstrap", &body).await
        }))
        .await;
        assert_eq!(status, 401, "{raw}");
        assert!(
            raw.contains(r#"the token is for Dataplane \"evil\", not \"victim\""#),
            "{raw}"
        );
    });
}

/// `depth` levels of YAML flow maps: `{a: {a: ...`.
fn nested(depth: usize) -> String {
    "{a: ".repeat(depth)
}

#[test]
fn nested_bodies_never_stall_the_control_plane() {
    let lab = Lab::create("nest");
    lab.enter_cp().block_on(async {
        let webhook = kuma_testkit::free_port().await;
        let webhook_port = webhook.to_string();
        let cp = Standalone::start(&[
            ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_ENABLED", "true"),
            ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_PORT", &webhook_port),
        ])
        .await;
        let evil_token = common::dataplane_token(cp.api_port, "default", "evil").await;
        let pid = cp.child.id().unwrap();
        let prober = Prober::start(cp.diagnostics_port);
        let (api, dp) = (cp.api_port, cp.dp_port);
        let ca = std::fs::read_to_string(&cp.ca_file).unwrap();

        let attack = lab.on_remote(move || async move {
            let body = nested(60_000); // 240 KB
            let mut answers = Vec::new();
            // Anonymous writes, two at once: refused before their bodies are read.
            let puts: Vec<_> = (0..2)
                .map(|i| {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let stream = TcpStream::connect((CP_IP, api)).await.unwrap();
                        let path = format!("/meshes/default/meshtimeouts/deep-{i}");
                        http_request(stream, "PUT", &path, &[], &body).await
                    })
                })
                .collect();
            for put in puts {
                answers.push(("anonymous PUT", put.await.unwrap()));
            }
            // Bootstraps with a nested Dataplane: without a token, and with evil's.
            for token in ["", evil_token.as_str()] {
                let request = serde_json::json!({
                    "mesh": "default", "name": "evil", "dataplaneToken": token,
                    "dataplaneResource": body,
                })
                .to_string();
                let stream = tls_to_cp(&ca, dp).await;
                let answer = post_json_over(stream, "/bootstrap", &request)
                .await;
                answers.push(("bootstrap", answer));
            }
            // A nested AdmissionReview for the webhook (JSON, 100,000 levels).
            let review = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
            let stream = tls_to_cp(&ca, webhook).await;
            let answer = post_json_over(stream, "/validate-kuma-io-v1alpha1", &review)
            .await;
            answers.push(("webhook", answer));
            // 100,000 levels sent halfway, then the client goes away.
            let mut stream = TcpStream::connect((CP_IP, api)).await.unwrap();
            let deep = nested(100_000);
            let head = format!(
                "PUT /meshes/default/meshtimeouts/gone HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                deep.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let _ = stream.write_all(&deep.as_bytes()[..deep.len() / 2]).await;
            drop(stream);
            answers
        });
        let answers = join(attack).await;
        let status = |i: usize| answers[i].1.0;
        assert_eq!((status(0), status(1)), (401, 401), "{answers:?}");
        assert_eq!(status(2), 401, "no token: {:?}", answers[2]);
        assert_eq!(status(3), 422, "evil's token: {:?}", answers[3]);
        assert!(
            answers[3].1.1.contains("deeper than 128 levels"),
            "{:?}",
            answers[3]
        );
        assert!(
            answers[4].1.1.contains("recursion limit"),
            "the webhook: {:?}",
            answers[4]
        );

        // The admin's own nested write is refused as such.
        let (status, raw) = send_json(
            cp.api_port,
            "PUT",
            "/meshes/default/meshtimeouts/deep",
            &nested(60_000),
        )
        .await;
        assert_eq!(status, 400, "{raw}");
        let yaml = reqwest::Client::new()
            .put(format!(
                "http://127.0.0.1:{}/meshes/default/meshtimeouts/deep",
                cp.api_port
            ))
            .header("content-type", "application/yaml")
            .body(nested(60_000))
            .send()
            .await
            .unwrap();
        assert_eq!(yaml.status(), 400);
        assert!(yaml.text().await.unwrap().contains("deeper than 128 levels"));
        prober.finish("nested bodies").await;

        // Once the clients are gone the control plane is idle: no parse goes on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = cpu_time(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_time(pid) - before;
        assert!(
            used < Duration::from_millis(500),
            "the control plane used {used:?} of CPU in 2 s after the attack"
        );
    });
}

/// CPU time (user and system) process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// Whether the server has closed `stream` already (a read sees its end at once).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte))
        .await
        .is_ok()
}

/// A flood of one client: `attempts` connections of each kind in `targets` (a port, and what
/// each connection sends, possibly nothing), reopened as the server closes them, until
/// `stop`. Returns the most connections the server held at once, and the connections open at
/// the end.
async fn flood(
    targets: Vec<(u16, &'static [u8], usize)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (usize, Vec<TcpStream>) {
    let mut open: Vec<TcpStream> = Vec::new();
    let mut most = 0;
    loop {
        let want: usize = targets.iter().map(|t| t.2).sum();
        let mut opened = 0;
        'fill: for (port, preamble, n) in &targets {
            for _ in 0..*n {
                if open.len() + opened >= want {
                    break 'fill;
                }
                if let Ok(mut stream) = TcpStream::connect((CP_IP, *port)).await {
                    if !preamble.is_empty() {
                        let _ = stream.write_all(preamble).await;
                    }
                    open.push(stream);
                    opened += 1;
                }
            }
        }
        // Connections beyond the limits are closed right after they are accepted.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut kept = Vec::new();
        for mut stream in open {
            if !is_closed(&mut stream).await {
                kept.push(stream);
            }
        }
        open = kept;
        most = most.max(open.len());
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let mut kept = Vec::new();
    for mut stream in open {
        if !is_closed(&mut stream).await {
            kept.push(stream);
        }
    }
    (most.max(kept.len()), kept)
}

/// Whether the server closes every one of `streams` within `within`.
async fn all_closed(streams: Vec<TcpStream>, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    for mut stream in streams {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
    true
}

#[test]
fn held_connections_do_not_lock_others_out() {
    let lab = Lab::create("flood");
    lab.enter_cp().block_on(async {
        // A file limit of 1,024, which the attack below would exceed without the caps.
        let cp = Standalone::launch(
            &["prlimit", "--nofile=1024:1024"],
            &[],
            &[("KUMA_DP_SERVER_READ_HEADER_TIMEOUT", "1s")],
            Stdio::null(),
        )
        .await;
        let prober = Prober::start(cp.diagnostics_port);
        let (api, dp) = (cp.api_port, cp.dp_port);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // 1,100 connections from one client, idle, half-sent and to the TLS port, reopened as
        // they are closed.
        let attack = lab.on_remote(move || async move {
            let targets: Vec<(u16, &'static [u8], usize)> = vec![
                (api, b"", 500),
                (api, b"GET /meshes HTTP/1.1\r\nHost:", 300),
                (dp, b"", 300),
            ];
            let (most, left) = flood(targets, rx).await;
            // Without new ones, those left are closed by the control plane.
            (most, all_closed(left, Duration::from_secs(5)).await)
        });
        // While the flood is held, other clients are served.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, _) = http_get(api, "/meshes").await;
        assert_eq!(status, 200, "the API answers others during the flood");
        let status = kuma_testkit::grpcio_stream_status(
            cp.dp_port,
            Some(&cp.ca_file),
            ADS,
            &kuma_testkit::pb_field(2, &kuma_testkit::pb_field(1, b"default.web-1")),
        );
        assert!(status.starts_with("PERMISSION_DENIED"), "{status}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = tx.send(());
        let (held, closed) = join(attack).await;
        assert!(
            held <= 256,
            "one client held {held} connections at once (connections.maxPerClient is 256)"
        );
        assert!(held >= 100, "the flood held connections ({held})");
        assert!(closed, "the server closes the connections that send no request");
        prober.finish("connection flood").await;

        let ca = std::fs::read_to_string(&cp.ca_file).unwrap();
        let answers = join(lab.on_remote(move || async move {
            // A TLS connection that completes its handshake and then idles is closed too.
            let mut idle = tls_to_cp(&ca, dp).await;
            let mut buf = [0u8; 64];
            let idle_closed = matches!(
                tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            );
            // An oversized body announced with Expect: 100-continue gets 413, not 100.
            let mut stream = TcpStream::connect((CP_IP, api)).await.unwrap();
            stream
                .write_all(b"PUT /meshes/default/meshtimeouts/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
                .await
                .unwrap();
            let mut first = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
                .await
                .unwrap()
                .unwrap();
            (idle_closed, String::from_utf8_lossy(&first[..n]).into_owned())
        }))
        .await;
        assert!(answers.0, "an idle TLS connection is closed");
        assert!(answers.1.starts_with("HTTP/1.1 413"), "{}", answers.1);
    });
}

#[test]
fn one_client_cannot_take_dns_over_tcp() {
    let lab = Lab::create("dns");
    lab.enter_cp().block_on(async {
        let cp = Standalone::start(&[]).await;
        put_json(
            cp.api_port,
            "/meshes/default/dataplanes/web-1",
            r#"{"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}"#,
        )
        .await;
        let dns = cp.dns_port;
        eventually("web.mesh has a VIP", || async move {
            common::dig(dns, "web.mesh").starts_with("240.")
        })
        .await;
        let prober = Prober::start(cp.diagnostics_port);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let attack = lab.on_remote(move || async move { flood(vec![(dns, b"", 256)], rx).await.0 });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another client's query over TCP is answered while the attacker holds its share.
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns.to_string(), "+tcp", "+short", "web.mesh"])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(answer.starts_with("240."), "dig +tcp web.mesh: {answer:?}");
        let _ = tx.send(());
        let held = join(attack).await;
        assert!(
            (1..=16).contains(&held),
            "one client held {held} DNS connections at once"
        );
        prober.finish("DNS over TCP flood").await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_cannot_share_a_sqlite_file() {
    let dir = test_dir("attack-sqlite");
    let file = dir.join("kuma.db");
    let path = file.to_str().unwrap();
    let env = [
        ("KUMA_STORE_TYPE", "sqlite"),
        ("KUMA_STORE_SQLITE_PATH", path),
    ];
    let first = Standalone::start(&env).await;
    let pid = first.child.id().unwrap();
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_standalone"))
        .envs(env)
        .envs(
            Standalone::free_port_env()
                .await
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second instance exits")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path), "{stderr}");
    assert!(stderr.contains(&format!("process {pid}")), "{stderr}");
    // The first one serves on, unharmed.
    assert_eq!(http_get(first.api_port, "/meshes/default").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unconditional_writes_all_succeed() {
    let dir = test_dir("attack-puts");
    let file = dir.join("kuma.db");
    let cp = Standalone::start(&[
        ("KUMA_STORE_TYPE", "sqlite"),
        ("KUMA_STORE_SQLITE_PATH", file.to_str().unwrap()),
    ])
    .await;
    let api = cp.api_port;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for i in 0..60 {
                    let body = format!(
                        r#"{{"type": "MeshTimeout", "mesh": "default", "name": "contended", "spec": {{"targetRef": {{"kind": "Mesh"}}, "to": [{{"targetRef": {{"kind": "Mesh"}}, "default": {{"idleTimeout": "{}s"}}}}]}}}}"#,
                        w * 100 + i + 1
                    );
                    let (status, raw) =
                        send_json(api, "PUT", "/meshes/default/meshtimeouts/contended", &body)
                            .await;
                    if !(200..300).contains(&status) {
                        failed.push((status, raw));
                    }
                }
                failed
            })
        })
        .collect();
    for writer in writers {
        let failed = writer.await.unwrap();
        assert!(
            failed.is_empty(),
            "PUTs without If-Match failed: {failed:?}"
        );
    }
}

#[test]
fn bootstrap_and_token_requests_are_checked_before_work() {
    let lab = Lab::create("check");
    lab.enter_cp().block_on(async {
        let cp = Standalone::start(&[]).await;
        let (dp, ca) = (cp.dp_port, std::fs::read_to_string(&cp.ca_file).unwrap());
        // Without a token, a bootstrap for a mesh that exists and one that does not get the
        // same answer.
        let answers = join(lab.on_remote(move || async move {
            let mut answers = Vec::new();
            for mesh in ["default", "nope"] {
                let request = serde_json::json!({
                    "mesh": mesh, "name": "x",
                    "dataplaneResource": dataplane_json("x", 20001).replace("\"default\"", &format!("{mesh:?}")),
                })
                .to_string();
                let stream = tls_to_cp(&ca, dp).await;
                let (status, raw) = post_json_over(stream, "/bootstrap", &request)
                .await;
                answers.push((status, kuma_testkit::response_body(&raw).to_string()));
            }
            answers
        }))
        .await;
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[0].0, 401, "{answers:?}");

        // A token for a mesh that does not exist is refused before a signing key is made.
        let (status, raw) = post_json(
            cp.api_port,
            "/tokens/dataplane",
            r#"{"name": "x", "mesh": "nope"}"#,
        )
        .await;
        assert_eq!(status, 400, "{raw}");
        assert!(raw.contains(r#"mesh \"nope\" does not exist"#), "{raw}");

        // First tokens of new meshes make RSA signing keys: /ready keeps answering meanwhile.
        for i in 0..4 {
            put_json(
                cp.api_port,
                &format!("/meshes/m{i}"),
                &format!(r#"{{"type": "Mesh", "name": "m{i}"}}"#),
            )
            .await;
        }
        let prober = Prober::start(cp.diagnostics_port);
        let api = cp.api_port;
        let issued: Vec<_> = (0..4)
            .map(|i| {
                tokio::spawn(async move {
                    common::dataplane_token(api, &format!("m{i}"), "x").await
                })
            })
            .collect();
        for token in issued {
            assert!(token.await.unwrap().starts_with("eyJ"));
        }
        prober.finish("signing keys made for four meshes").await;
    });
}
