//! `kuma-dp run`: one data-plane proxy from its Dataplane to a running Envoy.

use std::path::PathBuf;
use std::process::ExitStatus;

use kuma_core::bootstrap::BootstrapRequest;
use kuma_core::resource::parse_yaml;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::config::{Ca, RunConfig, Template, Token};
use crate::{Error, access_logs, bootstrap, dns_proxy, envoy, readiness};

/// Runs a data-plane proxy as `kuma-dp run` does: renders the Dataplane, fetches its bootstrap,
/// starts the access-log forwarder, Envoy, the readiness reporter and (for a transparent proxy)
/// the DNS proxy, forwards SIGINT and SIGTERM to Envoy, and returns Envoy's exit status when it
/// exits (nothing is restarted silently).
pub async fn run(a: RunConfig) -> Result<ExitStatus, Error> {
    let (source, text) = match &a.template {
        Template::Inline(text) => ("--dataplane".to_string(), text.clone()),
        Template::File(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            tokio::io::stdin()
                .read_to_string(&mut text)
                .await
                .map_err(|e| Error::io("cannot read the Dataplane from standard input", e))?;
            ("standard input".to_string(), text)
        }
        Template::File(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?,
        ),
    };
    let text = crate::config::render(&text, &a.vars);
    let mut dp = parse_yaml(&text).map_err(|e| Error::Failed(format!("{source}: {e}")))?;
    let expected = match a.proxy_type.as_str() {
        "dataplane" => "Dataplane",
        "ingress" => "ZoneIngress",
        "egress" => "ZoneEgress",
        other => {
            return Err(Error::Failed(format!(
                "--proxy-type {other:?}: not one of dataplane, ingress, egress"
            )));
        }
    };
    if dp.rtype().name() != expected {
        return Err(Error::Failed(format!(
            "{source}: a {}, but --proxy-type {} runs a {expected}",
            dp.rtype(),
            a.proxy_type
        )));
    }
    if let Some(n) = &a.name {
        dp.meta.name = n.clone();
    }
    // Zone proxies belong to no mesh.
    if let Some(m) = &a.mesh
        && a.proxy_type == "dataplane"
    {
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
        Some(Token::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(format!("cannot read {}", f.display()), e))?
            .trim()
            .to_string(),
        Some(Token::Inline(t)) => t.trim().to_string(),
        None => String::new(),
    };
    let ca_cert = match &a.ca {
        Some(Ca::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(format!("cannot read {}", f.display()), e))?,
        Some(Ca::Pem(pem)) => pem.clone(),
        None => String::new(),
    };
    let envoy_version = envoy::version(&a.binary_path)
        .map_err(|e| Error::io(format!("cannot run Envoy ({:?})", a.binary_path), e))?;
    let dir = a
        .config_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kuma-dp-{}", std::process::id())));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let request = BootstrapRequest {
        mesh: dp.meta.mesh.clone(),
        name: dp.meta.name.clone(),
        proxy_type: a.proxy_type.clone(),
        dataplane_token: token,
        dataplane_resource: dp_json.to_string(),
        version: serde_json::json!({"kumaDp": {"version": env!("CARGO_PKG_VERSION")}, "envoy": {"version": envoy_version}}),
        ca_cert: ca_cert.clone(),
        readiness_port: u32::from(a.readiness_port),
        workdir: dir.to_string_lossy().into_owned(),
        ..BootstrapRequest::default()
    };
    let request = serde_json::to_string(&request).map_err(|e| Error::Failed(e.to_string()))?;
    let cp = bootstrap::cp_address(&a.cp_address)?;
    let ca = (!ca_cert.is_empty()).then_some(ca_cert.as_str());
    let mut config = bootstrap::fetch(&cp, ca, &request).await?;
    if let Some(ca) = ca {
        config = bootstrap::pin_control_plane_ca(&config, ca)?;
    }

    let bootstrap_path = dir.join("bootstrap.yaml");
    std::fs::write(&bootstrap_path, config)
        .map_err(|e| Error::io(format!("cannot write {}", bootstrap_path.display()), e))?;

    let pipe_path = PathBuf::from(kuma_core::dataplane_files::access_log_pipe(
        &dir.to_string_lossy(),
        &dp.meta.name,
        &dp.meta.mesh,
    ));
    let pipe = access_logs::open(&pipe_path)?;
    tokio::spawn(access_logs::forward(pipe, pipe_path));

    let mut envoy = envoy::command(&a, &bootstrap_path)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start Envoy ({:?})", a.binary_path), e))?;
    let envoy_pid = envoy
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    tracing::info!(pid = ?envoy.id(), mesh = %dp.meta.mesh, name = %dp.meta.name, "Envoy started");
    tokio::spawn(readiness::serve(a.readiness_port, admin_port));
    // The DNS proxy serves as long as this is held.
    let _dns_proxy = if a.dns_enabled
        && dp_json.pointer("/networking/transparentProxying").is_some()
    {
        let upstream = a.dns_upstream.or_else(dns_proxy::system_upstream);
        let pipe = PathBuf::from(kuma_core::dataplane_files::dynamic_config_pipe(
            &dir.to_string_lossy(),
        ));
        let running = dns_proxy::start(a.dns_port, pipe, a.dns_domain.clone(), upstream).await?;
        tracing::info!(port = a.dns_port, "DNS proxy on 127.0.0.1 (UDP and TCP)");
        Some(running)
    } else {
        None
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("cannot listen for SIGTERM", e))?;
    loop {
        tokio::select! {
            status = envoy.wait() => {
                let status = status.map_err(|e| Error::io("cannot wait for Envoy", e))?;
                tracing::info!(%status, "Envoy exited");
                return Ok(status);
            }
            _ = tokio::signal::ctrl_c() => envoy::forward(envoy_pid, Signal::SIGINT),
            _ = term.recv() => envoy::forward(envoy_pid, Signal::SIGTERM),
        }
    }
}
