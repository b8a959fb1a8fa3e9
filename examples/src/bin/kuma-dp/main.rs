//! `kuma-dp`: the data-plane agent. Fetches the Envoy bootstrap from the control plane, runs
//! Envoy with it, forwards SIGINT/SIGTERM to Envoy, exits when Envoy exits (with its status:
//! nothing is restarted silently) and reports readiness on `--readiness-port` (`GET /ready`:
//! 200 once Envoy is live, 503 before).
//!
//! ```text
//! kuma-dp run --cp-address https://localhost:5678 --dataplane-file dp.yaml [--name N] [--mesh M]
//!             [--dataplane-token-file F] [--binary-path envoy] [--admin-port P]
//!             [--readiness-port 9902] [--ca-cert-file F] [--work-dir D]
//!             [--drain-time 30s] [--envoy-log-level info] [--concurrency N]
//!             [--dns-port 15053] [--dns-upstream ip:port] [--dns-domain mesh]
//! ```
//!
//! Every flag Kuma's kuma-dp has can also be given by its `KUMA_*` variable (the flag wins):
//! see [`args`]. The Dataplane is a template (`--dataplane` inline or `--dataplane-file`,
//! `-` for standard input) rendered with `--dataplane-var key=value` as Kuma renders it.
//!
//! `--cp-address` is the dp-server (`https://host:5678`, the default layout) or, in the split
//! port layout, the plain-HTTP bootstrap server (`http://host:5682`) or the API
//! (`http://host:5681`, whose `/catalog` names the bootstrap server, as Kuma 0.x's kuma-dp
//! found it). Either way Envoy reaches the control plane over TLS, and with `--ca-cert-file`
//! kuma-dp makes the bootstrap trust that CA alone (a bootstrap fetched over plain HTTP cannot
//! swap it).
//!
//! Entries of MeshAccessLog's TCP backends reach their collectors through kuma-dp: see
//! [`access_logs`]. A Dataplane with transparent proxying also gets the DNS proxy on
//! `--dns-port` (15053), forwarding names outside `.mesh` to `--dns-upstream`: see
//! [`dns_proxy`].
//!
//! Envoy runs as Kuma runs it: `--drain-strategy immediate` with `--drain-time-s` from
//! `--drain-time`, so a listener replaced by new config closes its connections on their next
//! response instead of keeping old filters alive for minutes; hot restart disabled; and, on
//! Linux, Envoy is killed when kuma-dp dies, even by SIGKILL, so no Envoy outlives its agent.

mod access_logs;
mod args;
mod dns_proxy;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kuma_core::resource::parse_yaml;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where the bootstrap comes from.
#[derive(Debug, PartialEq, Eq)]
struct CpAddress {
    /// `https`: the dp-server; plain `http`: the split layout's bootstrap server.
    tls: bool,
    host: String,
    port: u16,
}

/// `https://host[:5678]` or `http://host[:5682]`.
fn cp_address(address: &str) -> Result<CpAddress, String> {
    let (tls, rest, default_port) = if let Some(rest) = address.strip_prefix("https://") {
        (true, rest, 5678)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (false, rest, 5682)
    } else {
        return Err(format!(
            "--cp-address {address:?}: expected https://host:port (the dp-server) or http://host:port (the bootstrap server of the split port layout)"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse().map_err(|_| format!("bad port in {address:?}"))?,
        ),
        _ => (rest, default_port),
    };
    Ok(CpAddress {
        tls,
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}

async fn post_bootstrap(
    cp: &CpAddress,
    ca_pem: Option<&str>,
    body: &str,
) -> Result<String, String> {
    let (host, port) = (cp.host.as_str(), cp.port);
    let unreachable = |e: String| format!("cannot reach the control plane at {host}:{port}: {e}");
    if cp.tls {
        if ca_pem.is_none() {
            eprintln!(
                "kuma-dp: warning: no --ca-cert-file: the control plane's certificate is not verified"
            );
        }
        let tls = kuma_cp::tls::client_config(ca_pem)?;
        let s = kuma_cp::tls::connect(host, port, tls)
            .await
            .map_err(unreachable)?;
        http_post_bootstrap(s, host, port, body).await
    } else {
        eprintln!(
            "kuma-dp: warning: the bootstrap is fetched over plain HTTP: the dataplane token travels unencrypted"
        );
        if ca_pem.is_none() {
            eprintln!(
                "kuma-dp: warning: no --ca-cert-file: Envoy will trust whatever CA the plain-HTTP bootstrap names"
            );
        }
        let (host, port) = match catalog_bootstrap(host, port).await {
            Some(at) => {
                eprintln!(
                    "kuma-dp: the API's catalog names the bootstrap server {}:{}",
                    at.host, at.port
                );
                (at.host, at.port)
            }
            None => (host.to_string(), port),
        };
        let s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        http_post_bootstrap(s, &host, port, body).await
    }
}

/// The bootstrap server the API at `host:port` names in its `/catalog` (split layout), or
/// `None` when `host:port` is no API with a catalog (the bootstrap server itself, say).
async fn catalog_bootstrap(host: &str, port: u16) -> Option<CpAddress> {
    let s = TcpStream::connect((host, port)).await.ok()?;
    let (status, response) = http_exchange(s, "GET", "/catalog", host, port, "")
        .await
        .ok()?;
    if status != "200" {
        return None;
    }
    let catalog: serde_json::Value = serde_json::from_str(&response).ok()?;
    let at = cp_address(catalog.pointer("/apis/bootstrap/url")?.as_str()?).ok()?;
    (!at.tls).then_some(at)
}

/// `POST /bootstrap` over `s` (TLS or plain), returning the response body.
async fn http_post_bootstrap<S>(s: S, host: &str, port: u16, body: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (status, body) = http_exchange(s, "POST", "/bootstrap", host, port, body).await?;
    if status != "200" {
        return Err(format!(
            "the control plane refused the bootstrap ({status}): {body}"
        ));
    }
    Ok(body)
}

/// One HTTP/1.1 `method path` over `s` with a JSON `body`: the response's status and body.
async fn http_exchange<S>(
    mut s: S,
    method: &str,
    path: &str,
    host: &str,
    port: u16,
    body: &str,
) -> Result<(String, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // The server may close without a TLS close_notify; what was read is still complete.
    if let Err(e) = s.read_to_end(&mut out).await
        && out.is_empty()
    {
        return Err(e.to_string());
    }
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed response from the control plane")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("unexpected chunked response from the control plane".into());
    }
    Ok((status, body.to_string()))
}

/// Serves `GET /ready`: 200 when Envoy's admin `/ready` says LIVE, 503 otherwise.
async fn readiness(port: u16, admin_port: u16) {
    let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await else {
        eprintln!("kuma-dp: cannot listen for readiness on 127.0.0.1:{port}");
        return;
    };
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let live = envoy_live(admin_port).await;
            let (status, body) = if live {
                ("200 OK", "READY")
            } else {
                ("503 Service Unavailable", "NOT READY")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

async fn envoy_live(admin_port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", admin_port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut out)).await;
    out.starts_with("HTTP/1.1 200") && out.contains("LIVE")
}

async fn run(a: args::Args) -> Result<ExitCode, String> {
    let (source, text) = match &a.template {
        args::Template::Inline(text) => ("--dataplane".to_string(), text.clone()),
        args::Template::File(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            tokio::io::stdin()
                .read_to_string(&mut text)
                .await
                .map_err(|e| format!("cannot read the Dataplane from standard input: {e}"))?;
            ("standard input".to_string(), text)
        }
        args::Template::File(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
    };
    let text = args::render(&text, &a.vars);
    let mut dp = parse_yaml(&text).map_err(|e| format!("{source}: {e}"))?;
    if let Some(n) = &a.name {
        dp.meta.name = n.clone();
    }
    if let Some(m) = &a.mesh {
        dp.meta.mesh = m.clone();
    }
    let mut dp_json = dp.to_value();
    if let Some(port) = a.admin_port
        && let Some(net) = dp_json
            .get_mut("networking")
            .and_then(|n| n.as_object_mut())
    {
        net.insert("admin".into(), serde_json::json!({"port": port}));
    }
    let admin_port = dp_json
        .pointer("/networking/admin/port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(9901);
    let token = match &a.token {
        Some(args::Token::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?
            .trim()
            .to_string(),
        Some(args::Token::Inline(t)) => t.trim().to_string(),
        None => String::new(),
    };
    let ca_cert = match &a.ca {
        Some(args::Ca::File(f)) => {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
        }
        Some(args::Ca::Pem(pem)) => pem.clone(),
        None => String::new(),
    };
    let envoy_version = std::process::Command::new(&a.binary_path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run Envoy ({:?}): {e}", a.binary_path))?;
    let envoy_version = String::from_utf8_lossy(&envoy_version.stdout)
        .trim()
        .to_string();
    let dir = a
        .config_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kuma-dp-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let request = serde_json::json!({
        "mesh": dp.meta.mesh,
        "name": dp.meta.name,
        "proxyType": "dataplane",
        "dataplaneToken": token,
        "dataplaneResource": dp_json.to_string(),
        "version": {"kumaDp": {"version": env!("CARGO_PKG_VERSION")}, "envoy": {"version": envoy_version}},
        "caCert": ca_cert,
        "readinessPort": a.readiness_port,
        "workdir": dir.to_string_lossy(),
    });
    let cp = cp_address(&a.cp_address)?;
    let ca = (!ca_cert.is_empty()).then_some(ca_cert.as_str());
    let mut bootstrap = post_bootstrap(&cp, ca, &request.to_string()).await?;
    if let Some(ca) = ca {
        bootstrap = kuma_cp::bootstrap::pin_control_plane_ca(&bootstrap, ca)?;
    }

    let bootstrap_path = dir.join("bootstrap.yaml");
    std::fs::write(&bootstrap_path, bootstrap)
        .map_err(|e| format!("cannot write {}: {e}", bootstrap_path.display()))?;

    let pipe_path = PathBuf::from(kuma_xds::generate::access_log_pipe(
        &dir.to_string_lossy(),
        &dp.meta.name,
        &dp.meta.mesh,
    ));
    let pipe = access_logs::open(&pipe_path)?;
    tokio::spawn(access_logs::forward(pipe, pipe_path));

    let mut envoy = envoy_command(&a, &bootstrap_path)
        .spawn()
        .map_err(|e| format!("cannot start Envoy ({:?}): {e}", a.binary_path))?;
    let envoy_pid = envoy
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    eprintln!(
        "kuma-dp: Envoy started (pid {:?}) for {}.{}",
        envoy.id(),
        dp.meta.mesh,
        dp.meta.name
    );
    tokio::spawn(readiness(a.readiness_port, admin_port));
    // The DNS proxy serves as long as this is held.
    let _dns_proxy = if a.dns_enabled
        && dp_json.pointer("/networking/transparentProxying").is_some()
    {
        let upstream = a.dns_upstream.or_else(dns_proxy::system_upstream);
        let pipe = PathBuf::from(kuma_xds::generate::dynamic_config_pipe(
            &dir.to_string_lossy(),
        ));
        let running = dns_proxy::start(a.dns_port, pipe, a.dns_domain.clone(), upstream).await?;
        eprintln!(
            "kuma-dp: DNS proxy on 127.0.0.1:{} (UDP and TCP)",
            a.dns_port
        );
        Some(running)
    } else {
        None
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            status = envoy.wait() => {
                let status = status.map_err(|e| e.to_string())?;
                eprintln!("kuma-dp: Envoy exited ({status})");
                let code = status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
                return Ok(ExitCode::from(code));
            }
            _ = tokio::signal::ctrl_c() => forward(envoy_pid, Signal::SIGINT),
            _ = term.recv() => forward(envoy_pid, Signal::SIGTERM),
        }
    }
}

/// Envoy's command line, as Kuma's kuma-dp builds it.
fn envoy_command(a: &args::Args, bootstrap: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&a.binary_path);
    cmd.arg("--config-path")
        .arg(bootstrap)
        .arg("--drain-time-s")
        .arg(a.drain_time.as_secs().to_string())
        .args(["--drain-strategy", "immediate", "--disable-hot-restart"])
        .args(["--log-level", &a.envoy_log_level]);
    // Without --concurrency, Envoy sizes its workers by the CPUs it may run on (its default
    // since `--cpuset-threads` became one).
    if let Some(n) = a.concurrency {
        cmd.args(["--concurrency", &n.to_string()]);
    }
    kill_with_parent(&mut cmd);
    cmd
}

/// Asks the kernel to SIGKILL the child when this process dies (Linux's parent-death signal),
/// as Kuma's kuma-dp does: a kuma-dp killed without warning must not leave its Envoy running
/// with the ports and the identity of a proxy nobody supervises.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn kill_with_parent(cmd: &mut tokio::process::Command) {
    // The signal is tied to the thread that forks. `run` spawns Envoy from the main thread
    // (the runtime's `block_on`), which lives as long as the process.
    //
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // `prctl` system call, which is async-signal-safe, and allocates nothing.
    let parent = Pid::this();
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("kuma-dp exited while starting Envoy"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_: &mut tokio::process::Command) {}

fn forward(pid: Option<Pid>, signal: Signal) {
    if let Some(pid) = pid
        && let Err(e) = kill(pid, signal)
    {
        eprintln!("kuma-dp: cannot forward {signal} to Envoy: {e}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args(), |k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err((text, 0)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err((text, code)) => {
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            return ExitCode::from(code);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("kuma-dp: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_address_is_the_dp_server_or_the_bootstrap_server() {
        let at = |tls, host: &str, port| CpAddress {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(cp_address("https://cp:5678"), Ok(at(true, "cp", 5678)));
        assert_eq!(cp_address("https://cp/"), Ok(at(true, "cp", 5678)));
        assert_eq!(cp_address("http://cp"), Ok(at(false, "cp", 5682)));
        assert_eq!(cp_address("http://[::1]:9"), Ok(at(false, "::1", 9)));
        assert_eq!(cp_address("https://[::1]"), Ok(at(true, "::1", 5678)));
        assert!(
            cp_address("grpcs://cp:5678")
                .unwrap_err()
                .contains("expected https://")
        );
        assert!(cp_address("http://cp:x").unwrap_err().contains("bad port"));
    }
}
