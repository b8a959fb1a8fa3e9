//! `standalone`: a single-zone Kuma-compatible control plane.
//!
//! ```text
//! standalone [--config-file <path>]
//! ```
//! Configuration: defaults, then the file (Kuma's `kuma-cp.defaults.yaml` keys), then `KUMA_*`
//! environment variables. Stops cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use kuma_core::config::{Config, Mode};

fn usage() -> &'static str {
    "usage: standalone [--config-file <path>]\n\n\
     Runs a standalone control plane. Settings come from the config file (Kuma's kuma-cp keys)\n\
     and KUMA_* environment variables, which win over the file."
}

fn config_path() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config-file" => {
                path = Some(PathBuf::from(
                    args.next().ok_or("--config-file needs a path")?,
                ))
            }
            s if s.starts_with("--config-file=") => {
                path = Some(PathBuf::from(&s["--config-file=".len()..]))
            }
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other:?}\n\n{}", usage())),
        }
    }
    Ok(path)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = match config_path() {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut config = match Config::load(path.as_deref(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("standalone: {e}");
            return ExitCode::from(2);
        }
    };
    if config.mode == Mode::Global {
        eprintln!("standalone: the configuration says mode: global; this binary runs standalone");
        return ExitCode::from(2);
    }
    config.mode = Mode::Standalone;
    let cp = match kuma_cp::ControlPlane::start(config).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("standalone: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("kuma-rs standalone control plane is running");
    println!(
        "  {:<44} {}",
        "diagnostics: /ready /healthy",
        cp.diagnostics_addr()
    );
    println!(
        "  {:<44} {}",
        "dp-server (TLS): ADS (gRPC) + POST /bootstrap",
        cp.dp_server_addr()
    );
    if let Some(addr) = cp.api_http_addr() {
        println!("  {:<44} {}", "HTTP API (kumactl)", addr);
    }
    if let Some(addr) = cp.api_https_addr() {
        println!("  {:<44} {}", "HTTPS API", addr);
    }
    if let Some(ca) = cp.ca_path() {
        println!(
            "  {:<44} {}",
            "CA certificate (kuma-dp --ca-cert-file)",
            ca.display()
        );
    }
    terminated().await;
    println!("shutting down");
    if cp.shutdown().await {
        println!("stopped: every connection closed");
    } else {
        println!("stopped: connections still open after the grace period were cut");
    }
    ExitCode::SUCCESS
}
