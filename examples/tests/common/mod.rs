//! What the binary tests share: starting `standalone` on free ports and `kuma-dp` agents.
#![allow(dead_code)] // each test binary uses its own subset

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kuma_testkit::{envoy_binary, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    kill(
        Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
}

/// A running `standalone` and where it listens.
pub struct Standalone {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    /// The port table it printed.
    pub table: String,
    pub dp_port: u16,
    pub api_port: u16,
    pub api_tls_port: u16,
    pub diagnostics_port: u16,
    pub dns_port: u16,
    pub mads_port: u16,
    /// Global's KDS port (`multizone.global.kds.grpcPort`; unused by the other modes).
    pub kds_port: u16,
    /// The CA of its generated certificate (dp-server and HTTPS API).
    pub ca_file: String,
    /// The split layout's own ports, when it runs in that layout.
    pub split: Option<SplitPorts>,
}

/// The ports the split layout adds.
#[derive(Debug, Clone, Copy)]
pub struct SplitPorts {
    pub sds: u16,
    pub admin: u16,
    pub bootstrap: u16,
    pub gui: u16,
}

impl Standalone {
    /// Starts `standalone` on free ports (or those `env` names) with `env` added, and waits for
    /// its port table.
    pub async fn start(env: &[(&str, &str)]) -> Standalone {
        Standalone::start_with(&[], env).await
    }

    /// [`Standalone::start`] with command-line `args` (`--port-layout split` adds free ports
    /// for the split layout's servers).
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Standalone {
        Standalone::launch(&[], args, env, Stdio::null()).await
    }

    /// [`Standalone::start_with`], run through the command `wrapper` (such as `ip netns exec
    /// <ns>`, or `prlimit --nofile=...`; empty: none), its standard error going to `stderr`.
    pub async fn launch(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Standalone {
        Standalone::launch_binary("standalone", wrapper, args, env, stderr).await
    }

    /// [`Standalone::launch`] of the `standalone`, `global` or `zone` binary.
    pub async fn launch_binary(
        name: &str,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Standalone {
        // Ports given in `env` win (a restart on the same ports); the others are free ones.
        let port = |var: &str| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.parse::<u16>().expect("a port"))
        };
        let pick = async |var: &str| match port(var) {
            Some(p) => p,
            None => free_port().await,
        };
        let (dp_port, api_port, api_tls_port, diagnostics_port, dns_port, mads_port) = (
            pick("KUMA_DP_SERVER_PORT").await,
            pick("KUMA_API_SERVER_HTTP_PORT").await,
            pick("KUMA_API_SERVER_HTTPS_PORT").await,
            pick("KUMA_DIAGNOSTICS_SERVER_PORT").await,
            pick("KUMA_DNS_SERVER_PORT").await,
            pick("KUMA_MONITORING_ASSIGNMENT_SERVER_PORT").await,
        );
        let kds_port = pick("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT").await;
        let split = if args.windows(2).any(|w| w == ["--port-layout", "split"])
            || env.contains(&("KUMA_PORT_LAYOUT", "split"))
        {
            Some(SplitPorts {
                sds: pick("KUMA_SDS_SERVER_GRPC_PORT").await,
                admin: pick("KUMA_ADMIN_SERVER_LOCAL_PORT").await,
                bootstrap: pick("KUMA_BOOTSTRAP_SERVER_PORT").await,
                gui: pick("KUMA_GUI_SERVER_PORT").await,
            })
        } else {
            None
        };
        let binary = match name {
            "standalone" => env!("CARGO_BIN_EXE_standalone"),
            "global" => env!("CARGO_BIN_EXE_global"),
            "zone" => env!("CARGO_BIN_EXE_zone"),
            other => panic!("no control-plane binary {other:?}"),
        };
        let mut cmd = wrapped(wrapper, binary);
        cmd.args(args);
        if let Some(s) = split {
            cmd.env("KUMA_SDS_SERVER_GRPC_PORT", s.sds.to_string())
                .env("KUMA_ADMIN_SERVER_LOCAL_PORT", s.admin.to_string())
                .env("KUMA_BOOTSTRAP_SERVER_PORT", s.bootstrap.to_string())
                .env("KUMA_GUI_SERVER_PORT", s.gui.to_string());
        }
        cmd.env("KUMA_DP_SERVER_PORT", dp_port.to_string())
            .env("KUMA_API_SERVER_HTTP_PORT", api_port.to_string())
            .env("KUMA_API_SERVER_HTTPS_PORT", api_tls_port.to_string())
            .env("KUMA_DIAGNOSTICS_SERVER_PORT", diagnostics_port.to_string())
            .env("KUMA_DNS_SERVER_PORT", dns_port.to_string())
            .env(
                "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT",
                mads_port.to_string(),
            )
            .env("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", kds_port.to_string())
            .env("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "1s");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.contains("running"), "{first}");
        let mut table = Vec::new();
        let ca_line = loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("the control plane prints its table")
                .unwrap()
                .expect("the table ends with the CA line");
            if line.contains("CA certificate") {
                break line;
            }
            table.push(line);
        };
        Standalone {
            child,
            lines,
            table: table.join("\n"),
            dp_port,
            api_port,
            api_tls_port,
            diagnostics_port,
            dns_port,
            mads_port,
            kds_port,
            ca_file: ca_line.split_whitespace().last().unwrap().to_string(),
            split,
        }
    }
}

/// A running `kuma-dp` (and its Envoy).
pub struct Dp {
    pub child: Child,
    pub admin_port: u16,
    pub readiness_port: u16,
}

/// `method path` with a JSON `body` to the API on 127.0.0.1:`api_port` (where localhost is
/// admin): (status, response body).
pub async fn send_json(api_port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    send_json_at("127.0.0.1", api_port, method, path, body).await
}

/// [`send_json`] to the API at `ip:api_port`.
pub async fn send_json_at(
    ip: &str,
    api_port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .request(method, format!("http://{ip}:{api_port}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `POST path` with a JSON `body` to the API (see [`send_json`]).
pub async fn post_json(api_port: u16, path: &str, body: &str) -> (u16, String) {
    send_json(api_port, "POST", path, body).await
}

/// `PUT path` with a JSON `body` to the API, which must accept it.
pub async fn put_json(api_port: u16, path: &str, body: &str) {
    let (status, answer) = send_json(api_port, "PUT", path, body).await;
    assert!(
        (200..300).contains(&status),
        "PUT {path}: {status} {answer}"
    );
}

/// A dataplane token for Dataplane `name` of `mesh`, from the API on 127.0.0.1:`api_port`.
pub async fn dataplane_token(api_port: u16, mesh: &str, name: &str) -> String {
    token_from(api_port, "/tokens/dataplane", mesh, name).await
}

/// A dataplane token from `path` (the API's `/tokens/dataplane`, the admin server's
/// `/tokens`) on 127.0.0.1:`port`.
pub async fn token_from(port: u16, path: &str, mesh: &str, name: &str) -> String {
    let body = serde_json::json!({"name": name, "mesh": mesh}).to_string();
    let (status, token) = post_json(port, path, &body).await;
    assert_eq!(status, 200, "a dataplane token: {token}");
    token
}

/// The mesh a Dataplane's YAML names.
fn mesh_of(dataplane: &str) -> &str {
    dataplane
        .lines()
        .find_map(|l| l.strip_prefix("mesh: "))
        .expect("the Dataplane names its mesh")
        .trim()
}

/// Starts `kuma-dp run` for `dataplane` (YAML) against the dp-server on `cp_port`, with a
/// dataplane token for it from the API on `api_port` and `extra` flags; its files and log go
/// under `dir`. With a [`Standalone`] at hand, [`Standalone::proxy`] says the same in short.
pub async fn kuma_dp(
    dir: &Path,
    cp_port: u16,
    api_port: u16,
    ca_file: &str,
    name: &str,
    dataplane: &str,
    extra: &[&str],
) -> Dp {
    let token = dataplane_token(api_port, mesh_of(dataplane), name).await;
    let cp_address = format!("https://localhost:{cp_port}");
    spawn_kuma_dp(dir, &cp_address, &token, ca_file, name, dataplane, extra).await
}

/// A command running `binary` through `wrapper` (such as `ip netns exec <ns>`; empty: none).
fn wrapped(wrapper: &[&str], binary: &str) -> Command {
    match wrapper.split_first() {
        None => Command::new(binary),
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(binary);
            c
        }
    }
}

/// Starts `kuma-dp run --cp-address <cp_address>` for `dataplane` with `token`.
pub async fn spawn_kuma_dp(
    dir: &Path,
    cp_address: &str,
    token: &str,
    ca_file: &str,
    name: &str,
    dataplane: &str,
    extra: &[&str],
) -> Dp {
    spawn_kuma_dp_in(&[], dir, cp_address, token, ca_file, name, dataplane, extra).await
}

/// [`spawn_kuma_dp`] run through the command `wrapper` (such as `ip netns exec <ns>`; empty:
/// none).
#[allow(clippy::too_many_arguments)] // the flags kuma-dp is run with, each named
pub async fn spawn_kuma_dp_in(
    wrapper: &[&str],
    dir: &Path,
    cp_address: &str,
    token: &str,
    ca_file: &str,
    name: &str,
    dataplane: &str,
    extra: &[&str],
) -> Dp {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, dataplane).unwrap();
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).unwrap();
    let (admin_port, readiness_port) = (free_port().await, free_port().await);
    let child = wrapped(wrapper, env!("CARGO_BIN_EXE_kuma-dp"))
        .args([
            "run",
            "--cp-address",
            cp_address,
            "--ca-cert-file",
            ca_file,
            "--dataplane-file",
        ])
        .arg(&file)
        .arg("--dataplane-token-file")
        .arg(&token_file)
        .args([
            "--binary-path",
            &envoy_binary(),
            "--admin-port",
            &admin_port.to_string(),
        ])
        .args([
            "--readiness-port",
            &readiness_port.to_string(),
            "--config-dir",
        ])
        .arg(dir.join(name))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("{name}.log")))
                .map(Stdio::from)
                .unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Dp {
        child,
        admin_port,
        readiness_port,
    }
}

/// A fresh directory for one test's files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kuma-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Standalone {
    /// Starts `kuma-dp run` for `dataplane` (YAML) against this control plane, with `extra`
    /// flags; its files and log go under `dir`. In the split layout the agent takes its token
    /// from the admin server and its bootstrap from the plain-HTTP bootstrap server.
    pub async fn proxy(&self, dir: &Path, name: &str, dataplane: &str, extra: &[&str]) -> Dp {
        if let Some(split) = self.split {
            let token = token_from(split.admin, "/tokens", mesh_of(dataplane), name).await;
            let cp_address = format!("http://127.0.0.1:{}", split.bootstrap);
            return spawn_kuma_dp(
                dir,
                &cp_address,
                &token,
                &self.ca_file,
                name,
                dataplane,
                extra,
            )
            .await;
        }
        kuma_dp(
            dir,
            self.dp_port,
            self.api_port,
            &self.ca_file,
            name,
            dataplane,
            extra,
        )
        .await
    }

    /// An HTTP client that trusts this control plane's CA (and ignores proxy settings).
    pub fn https_client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca_file).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    /// Free ports for every listener of a second instance, as environment variables.
    pub async fn free_port_env() -> Vec<(String, String)> {
        let mut env = Vec::new();
        for var in [
            "KUMA_DP_SERVER_PORT",
            "KUMA_API_SERVER_HTTP_PORT",
            "KUMA_API_SERVER_HTTPS_PORT",
            "KUMA_DIAGNOSTICS_SERVER_PORT",
            "KUMA_DNS_SERVER_PORT",
            "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT",
        ] {
            env.push((var.to_string(), free_port().await.to_string()));
        }
        env
    }

    /// The `KUMA_*` settings that put a new instance on this one's ports.
    pub fn port_env(&self) -> Vec<(String, String)> {
        [
            ("KUMA_DP_SERVER_PORT", self.dp_port),
            ("KUMA_API_SERVER_HTTP_PORT", self.api_port),
            ("KUMA_API_SERVER_HTTPS_PORT", self.api_tls_port),
            ("KUMA_DIAGNOSTICS_SERVER_PORT", self.diagnostics_port),
            ("KUMA_DNS_SERVER_PORT", self.dns_port),
            ("KUMA_MONITORING_ASSIGNMENT_SERVER_PORT", self.mads_port),
            ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", self.kds_port),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Stops this instance with SIGTERM, waits until it has exited (its ports are free), and
    /// starts a new one on the same ports with `env`.
    pub async fn restart(mut self, env: &[(String, String)]) -> Standalone {
        let mut env = env.to_vec();
        env.extend(self.port_env());
        sigterm(&self.child);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("standalone stops on SIGTERM")
            .unwrap();
        drop(self);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Standalone::start(&refs).await
    }
}

/// `dig @127.0.0.1 -p <port> <name> +short`: the answers, one per line.
pub fn dig(port: u16, name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, "+short"])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A resolver for names outside the mesh, as kuma-dp's `--dns-upstream`: a DNS server on
/// 127.0.0.1 for the zone `example`, where `www.example` is 192.0.2.10. It stops when the
/// returned sender is dropped.
pub async fn example_resolver() -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let zone = kuma_dns::zone::Zone::new("example", 60)
        .with_records([("www.example".to_string(), "192.0.2.10".parse().unwrap())]);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let addr = kuma_dns::server::DnsServer::new(zone)
        .bind("127.0.0.1:0".parse().unwrap(), stop)
        .await
        .unwrap();
    (addr, stop_tx)
}

/// Headless Chromium (Debian's `chromium`) with the flags this machine needs, run through
/// `wrapper` (such as `ip netns exec <ns>`; empty: none), its profile under `dir`.
pub fn chromium(wrapper: &[&str], dir: &Path, args: &[&str], url: &str) -> std::process::Output {
    let mut command = match wrapper.split_first() {
        None => std::process::Command::new("chromium"),
        Some((program, rest)) => {
            let mut c = std::process::Command::new(program);
            c.args(rest).arg("chromium");
            c
        }
    };
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (Debian package chromium)")
}

/// The environment that puts `standalone` on the PostgreSQL `cluster`.
pub fn pg_env(cluster: &kuma_testkit::PgCluster) -> Vec<(String, String)> {
    vec![
        ("KUMA_STORE_TYPE".into(), "postgres".into()),
        ("KUMA_STORE_POSTGRES_HOST".into(), "127.0.0.1".into()),
        ("KUMA_STORE_POSTGRES_PORT".into(), cluster.port.to_string()),
        ("KUMA_STORE_POSTGRES_USER".into(), "kuma".into()),
        ("KUMA_STORE_POSTGRES_PASSWORD".into(), "kuma".into()),
        ("KUMA_STORE_POSTGRES_DB_NAME".into(), "kuma".into()),
    ]
}

/// An instance's `leader` gauge (from its diagnostics port's /metrics).
pub async fn leads(diagnostics_port: u16) -> Option<bool> {
    let metrics = kuma_testkit::http_get(diagnostics_port, "/metrics").await.1;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("leader "))
        .map(|v| v.trim() == "1")
}
