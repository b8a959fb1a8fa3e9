//! What the `standalone`, `global` and `zone` binaries share: the command line, the
//! configuration (defaults, then the file, then `KUMA_*` variables), the start-up table and the
//! clean stop on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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

/// A Kuma-compatible control plane (standalone, global or zone, by binary). Settings come
/// from the config file (Kuma's kuma-cp keys) and KUMA_* environment variables, which win over
/// the file; --port-layout wins over both.
#[derive(Parser)]
#[command(version)]
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
async fn migrate_up(binary: &str, config: &Config) -> ExitCode {
    if config.store.kind != kuma_store::StoreType::Postgres {
        eprintln!("{binary}: migrate up needs store.type postgres (KUMA_STORE_TYPE=postgres)");
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
            eprintln!("{binary}: migrate up: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The binary that runs each mode.
fn binary_of(mode: Mode) -> &'static str {
    match mode {
        Mode::Standalone => "standalone",
        Mode::Global => "global",
        Mode::Zone => "zone",
    }
}

/// Runs the control plane in `mode` until SIGINT or SIGTERM: the whole of the `standalone`,
/// `global` and `zone` binaries.
pub async fn main(mode: Mode) -> ExitCode {
    let binary = binary_of(mode);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    #[cfg(target_os = "linux")]
    return_freed_memory();
    let args = Cli::command().name(binary).get_matches();
    let args = match Cli::from_arg_matches(&args) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    // The binary's mode is the default; a configured mode must agree with it.
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| (k == "KUMA_MODE").then(|| binary.to_string()))
    };
    let file_mode = args
        .config_file
        .as_deref()
        .and_then(|f| Config::load(Some(f), |_| None).ok())
        .map(|c| c.mode);
    let env = move |k: &str| match (k, file_mode) {
        // A file that names a mode speaks unless KUMA_MODE does.
        ("KUMA_MODE", Some(m)) if m != Mode::Standalone => std::env::var(k).ok(),
        _ => env(k),
    };
    let mut config = match Config::load(args.config_file.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    if config.mode != mode {
        let configured = binary_of(config.mode);
        eprintln!(
            "{binary}: the configuration says mode: {configured} (KUMA_MODE); run the {configured} binary, or unset it"
        );
        return ExitCode::from(2);
    }
    config.mode = mode;
    if let Some(layout) = args.port_layout {
        config.port_layout = layout;
    }
    if let Some(Command::Migrate {
        action: Migrate::Up,
    }) = args.command
    {
        return migrate_up(binary, &config).await;
    }
    kuma_cp::process::raise_open_file_limit();
    let zone = config.multizone.zone.clone();
    let cp = match kuma_cp::ControlPlane::start(config).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("{binary}: {}", kuma_cp::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!("kuma-rs {binary} control plane is running");
    if mode == Mode::Zone {
        let global = match zone.global_address.as_str() {
            "" => "not connected (multizone.zone.globalAddress is empty)",
            address => address,
        };
        println!("  {:<44} {}", "zone", zone.name);
        println!("  {:<44} {global}", "global (KDS)");
    }
    for (listener, addr) in cp.listeners() {
        println!("  {:<44} {addr}", listener.to_string());
    }
    if let Some(addr) = cp.dns_addr() {
        println!("  {:<44} {addr}", "DNS (.mesh, UDP and TCP)");
    }
    if let Some(ca) = cp.ca_path() {
        let users = match mode {
            Mode::Global => "CA certificate (zones' kds.rootCaFile)",
            _ => "CA certificate (kuma-dp --ca-cert-file)",
        };
        println!("  {users:<44} {}", ca.display());
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
