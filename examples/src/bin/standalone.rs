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

use clap::{Parser, Subcommand};
use kuma_cp::config::{Config, Mode, PortLayout};

/// The control plane allocates with jemalloc. When thousands of proxies receive their config at
/// once, the system allocator kept about a fifth more memory resident afterwards than jemalloc
/// does, and took longer (the xds_scale benchmark, which uses the same allocator).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc gives freed pages back to the system only while the process allocates, unless its
/// background threads do it. After thousands of proxies received their config at once, an idle
/// control plane would otherwise keep the push's freed memory resident for good (the
/// xds_scale benchmark, settled: 114 KB per proxy without them, 90 KB with them). The threads
/// sleep while there is nothing to give back.
#[cfg(target_os = "linux")]
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background threads are unavailable; freed memory is returned only while allocating");
    }
}

/// A standalone Kuma-compatible control plane. Settings come from the config file (Kuma's
/// kuma-cp keys) and KUMA_* environment variables, which win over the file; --port-layout
/// wins over both.
#[derive(Parser)]
#[command(name = "standalone", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Kuma's kuma-cp configuration file (YAML).
    #[arg(short = 'c', long, global = true)]
    config_file: Option<PathBuf>,
    /// `split`: SDS, the admin server, the bootstrap server and the GUI on ports of their own.
    #[arg(long, global = true, value_parser = parse_layout)]
    port_layout: Option<PortLayout>,
}

#[derive(Subcommand, PartialEq, Eq)]
enum Command {
    /// Run the control plane (the default).
    Run,
    /// Manage the PostgreSQL schema (`store.type: postgres`).
    Migrate {
        #[command(subcommand)]
        action: Migrate,
    },
}

#[derive(Subcommand, PartialEq, Eq)]
enum Migrate {
    /// Bring the schema to this binary's version.
    Up,
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

/// `migrate up`: applies the schema migrations this binary carries.
async fn migrate_up(config: &Config) -> ExitCode {
    if config.store.kind != kuma_store::StoreType::Postgres {
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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    #[cfg(target_os = "linux")]
    return_freed_memory();
    let args = Cli::parse();
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
    if let Some(Command::Migrate {
        action: Migrate::Up,
    }) = args.command
    {
        return migrate_up(&config).await;
    }
    kuma_cp::process::raise_open_file_limit();
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
    kuma_cp::process::terminated().await;
    println!("shutting down");
    if cp.shutdown().await {
        println!("stopped: every connection closed");
    } else {
        println!("stopped: connections still open after the grace period were cut");
    }
    ExitCode::SUCCESS
}
