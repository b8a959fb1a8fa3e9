//! `standalone`: a single-zone Kuma-compatible control plane.
//!
//! ```text
//! standalone [run] [--config-file <path>] [--port-layout default|split]
//! standalone migrate up [--config-file <path>]
//! ```
//! `--port-layout split` gives SDS, the admin server, the bootstrap server and the GUI ports of
//! their own, as Kuma 0.6/0.7 did (the `portLayout` key, `KUMA_PORT_LAYOUT`).
//! `migrate up` brings the PostgreSQL schema (`store.type: postgres`) to this binary's version;
//! `run` refuses a database whose schema is older or newer.
//! Configuration: defaults, then the file (Kuma's `kuma-cp.defaults.yaml` keys), then `KUMA_*`
//! environment variables. Stops cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use kuma_core::config::{Config, Mode, PortLayout};

fn usage() -> &'static str {
    "usage: standalone [run] [--config-file <path>] [--port-layout default|split]\n       standalone migrate up [--config-file <path>]\n\n\
     Runs a standalone control plane, or migrates its PostgreSQL schema. Settings come from the\n\
     config file (Kuma's kuma-cp keys) and KUMA_* environment variables, which win over the file;\n\
     --port-layout wins over both (split: SDS, admin, bootstrap and GUI on ports of their own)."
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run,
    MigrateUp,
}

/// What the command line says.
#[derive(Debug)]
struct Args {
    command: Command,
    config_file: Option<PathBuf>,
    port_layout: Option<PortLayout>,
}

fn parse_layout(value: &str) -> Result<PortLayout, String> {
    match value {
        "default" => Ok(PortLayout::Default),
        "split" => Ok(PortLayout::Split),
        other => Err(format!(
            "--port-layout {other:?}: expected default or split"
        )),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1).peekable();
    let command = match args.peek().map(String::as_str) {
        Some("run") => {
            args.next();
            Command::Run
        }
        Some("migrate") => {
            args.next();
            match args.next().as_deref() {
                Some("up") => Command::MigrateUp,
                other => {
                    return Err(format!(
                        "migrate {other:?}: only `migrate up` exists\n\n{}",
                        usage()
                    ));
                }
            }
        }
        _ => Command::Run,
    };
    let mut path = None;
    let mut port_layout = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port-layout" => {
                port_layout = Some(parse_layout(
                    &args.next().ok_or("--port-layout needs default or split")?,
                )?)
            }
            s if s.starts_with("--port-layout=") => {
                port_layout = Some(parse_layout(&s["--port-layout=".len()..])?)
            }
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
    Ok(Args {
        command,
        config_file: path,
        port_layout,
    })
}

/// `migrate up`: applies the schema migrations this binary carries.
async fn migrate_up(config: &Config) -> ExitCode {
    if config.store.kind != kuma_core::config::StoreType::Postgres {
        eprintln!("standalone: migrate up needs store.type postgres (KUMA_STORE_TYPE=postgres)");
        return ExitCode::from(2);
    }
    match kuma_store::postgres::migrate(&config.store.postgres).await {
        Ok(applied) if applied.is_empty() => {
            println!(
                "the schema is up to date (version {})",
                kuma_store::postgres::schema_version()
            );
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("applied migrations {applied:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("standalone: migrate up: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Raises the soft limit of open files to the hard limit, as Go programs (Kuma among them)
/// do: every proxy stream, API client and store connection is a file. The connection caps
/// (`connections.*`) keep any one client within it.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
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
    let args = match parse_args() {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut config = match Config::load(args.config_file.as_deref(), |k| std::env::var(k).ok()) {
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
    if let Some(layout) = args.port_layout {
        config.port_layout = layout;
    }
    if args.command == Command::MigrateUp {
        return migrate_up(&config).await;
    }
    raise_open_file_limit();
    let cp = match kuma_cp::ControlPlane::start(config).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("standalone: {}", kuma_cp::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!("kuma-rs standalone control plane is running");
    for (listener, addr) in cp.listeners() {
        println!("  {:<44} {addr}", listener.to_string());
    }
    if let Some(addr) = cp.dns_addr() {
        println!("  {:<44} {addr}", "DNS (.mesh, UDP and TCP)");
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
