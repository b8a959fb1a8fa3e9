//! `kuma-dp`: the data-plane agent. Fetches the Envoy bootstrap from the control plane, runs
//! Envoy with it, forwards SIGINT/SIGTERM to Envoy, exits when Envoy exits (with its status:
//! nothing is restarted silently) and reports readiness on `--readiness-port` (`GET /ready`:
//! 200 once Envoy is live, 503 before). The work is the `kuma-dp` crate's; this binary maps
//! Kuma's flags and `KUMA_*` variables (a flag wins over its variable, the variable over the
//! default) onto [`kuma_dp::RunConfig`].
//!
//! ```text
//! kuma-dp run --cp-address https://localhost:5678 --dataplane-file dp.yaml [--name N] [--mesh M]
//!             [--dataplane-token-file F] [--binary-path envoy] [--admin-port P]
//!             [--readiness-port 9902] [--ca-cert-file F] [--work-dir D]
//!             [--drain-time 30s] [--envoy-log-level info] [--concurrency N]
//!             [--dns-port 15053] [--dns-upstream ip:port] [--dns-domain mesh]
//! ```
//!
//! `--cp-address` is the dp-server (`https://host:5678`, the default layout) or, in the split
//! port layout, the plain-HTTP bootstrap server (`http://host:5682`) or the API
//! (`http://host:5681`, whose `/catalog` names the bootstrap server). Either way Envoy reaches
//! the control plane over TLS, and with `--ca-cert-file` the bootstrap trusts that CA alone.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use kuma_dp::{Ca, RunConfig, Template, Token};
use std::process::ExitCode;

/// kuma-dp: runs Envoy for a Dataplane of a Kuma-compatible control plane.
#[derive(Debug, Parser)]
#[command(name = "kuma-dp", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch the bootstrap from the control plane and run Envoy with it.
    Run(Box<RunFlags>),
}

#[derive(Debug, clap::Args)]
struct RunFlags {
    /// URL of the control plane's dp-server (`https://host:5678`), or in the split port layout
    /// of its bootstrap server or API (`http://host:5682`, `http://host:5681`).
    #[arg(
        long,
        env = "KUMA_CONTROL_PLANE_URL",
        default_value = "https://localhost:5678"
    )]
    cp_address: String,
    /// CA certificate (file) the control plane's certificate is verified with.
    #[arg(long, env = "KUMA_CONTROL_PLANE_CA_CERT_FILE")]
    ca_cert_file: Option<PathBuf>,
    /// The same CA certificate, PEM inline.
    #[arg(long, env = "KUMA_CONTROL_PLANE_CA_CERT", hide = true)]
    ca_cert: Option<String>,
    /// Name of the Dataplane (overrides the template's).
    #[arg(long, env = "KUMA_DATAPLANE_NAME")]
    name: Option<String>,
    /// Mesh of the Dataplane (overrides the template's).
    #[arg(long, env = "KUMA_DATAPLANE_MESH")]
    mesh: Option<String>,
    /// Type of the proxy: `dataplane`, `ingress` (a ZoneIngress) or `egress` (a ZoneEgress).
    #[arg(long, env = "KUMA_DATAPLANE_PROXY_TYPE", default_value = "dataplane")]
    proxy_type: String,
    /// Drain time of Envoy's connections when it stops (at least 1s).
    #[arg(long, env = "KUMA_DATAPLANE_DRAIN_TIME", default_value = "30s")]
    drain_time: String,
    /// Envoy executable.
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_BINARY_PATH",
        default_value = "envoy"
    )]
    binary_path: String,
    /// Envoy worker threads.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_CONCURRENCY")]
    concurrency: Option<u32>,
    /// Directory for the generated files (deprecated in Kuma: use --work-dir).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Directory for the generated files (wins over --config-dir).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// File with the dataplane token.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH")]
    dataplane_token_file: Option<PathBuf>,
    /// The dataplane token itself.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN", hide_env_values = true)]
    dataplane_token: Option<String>,
    /// Dataplane template (YAML or JSON), inline.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_RESOURCE")]
    dataplane: Option<String>,
    /// Dataplane template file (YAML or JSON); `-` reads standard input.
    #[arg(long, short = 'd', env = "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH")]
    dataplane_file: Option<PathBuf>,
    /// Template variables, `key=value` (repeatable, or comma-separated).
    #[arg(long = "dataplane-var", short = 'v', value_delimiter = ',', value_parser = key_value)]
    dataplane_var: Vec<(String, String)>,
    /// Envoy's log level.
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL",
        default_value = "info"
    )]
    envoy_log_level: String,
    /// Port of kuma-dp's readiness reporter.
    #[arg(long, env = "KUMA_READINESS_PORT", default_value_t = 9902)]
    readiness_port: u16,
    /// Port of Envoy's admin API (overrides the Dataplane's `networking.admin.port`).
    #[arg(long)]
    admin_port: Option<u16>,
    /// Run the DNS proxy for transparent proxying.
    #[arg(long, env = "KUMA_DNS_ENABLED", default_value_t = true, action = ArgAction::Set)]
    dns_enabled: bool,
    /// Port of the DNS proxy (`KUMA_DNS_PROXY_PORT`, or Kuma's `KUMA_DNS_CORE_DNS_PORT`).
    #[arg(long, env = "KUMA_DNS_PROXY_PORT")]
    dns_port: Option<u16>,
    /// Resolver for names outside the mesh (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long)]
    dns_upstream: Option<std::net::SocketAddr>,
    /// The mesh's DNS domain (`dnsServer.domain` of the control plane).
    #[arg(long, default_value = "mesh")]
    dns_domain: String,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has no key"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

/// Parses kuma-dp's command line (and `env`, the `KUMA_*` variables; clap reads the process
/// environment, so `env` only adds Kuma's fallback names). On `--help` or a mistake, the text
/// to print and the exit code.
fn parse(
    argv: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RunConfig, (String, u8)> {
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        let code = if e.use_stderr() { 2 } else { 0 };
        (e.render().to_string(), code)
    })?;
    let Command::Run(f) = cli.command;
    let bad = |message: String| (message, 2u8);
    if !matches!(f.proxy_type.as_str(), "dataplane" | "ingress" | "egress") {
        return Err(bad(format!(
            "--proxy-type {:?}: not one of dataplane, ingress, egress",
            f.proxy_type
        )));
    }
    let template = match (f.dataplane, f.dataplane_file) {
        (_, Some(file)) => Template::File(file),
        (Some(text), None) => Template::Inline(text),
        (None, None) => {
            return Err(bad(
                "a Dataplane is required: --dataplane-file (KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH) or --dataplane (KUMA_DATAPLANE_RUNTIME_RESOURCE)".into(),
            ));
        }
    };
    let drain: kuma_core::duration::Duration = f
        .drain_time
        .parse()
        .map_err(|e| bad(format!("--drain-time {:?}: {e}", f.drain_time)))?;
    if drain.get() < Duration::from_secs(1) {
        return Err(bad(format!(
            "--drain-time {:?}: must be at least 1s",
            f.drain_time
        )));
    }
    if f.concurrency == Some(0) {
        return Err(bad("--concurrency: must be a positive number".into()));
    }
    let dns_port = match f.dns_port {
        Some(p) => p,
        None => match env("KUMA_DNS_CORE_DNS_PORT") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| bad(format!("KUMA_DNS_CORE_DNS_PORT {v:?}: not a port")))?,
            None => 15053,
        },
    };
    let token = match (f.dataplane_token_file, f.dataplane_token) {
        (Some(file), _) => Some(Token::File(file)),
        (None, Some(t)) => Some(Token::Inline(t)),
        (None, None) => None,
    };
    let ca = match (f.ca_cert_file, f.ca_cert) {
        (Some(file), _) => Some(Ca::File(file)),
        (None, Some(pem)) => Some(Ca::Pem(pem)),
        (None, None) => None,
    };
    Ok(RunConfig {
        cp_address: f.cp_address,
        proxy_type: f.proxy_type,
        template,
        vars: f.dataplane_var.into_iter().collect(),
        name: f.name,
        mesh: f.mesh,
        token,
        ca,
        binary_path: f.binary_path,
        admin_port: f.admin_port,
        readiness_port: f.readiness_port,
        config_dir: f.work_dir.or(f.config_dir),
        drain_time: drain.get(),
        envoy_log_level: f.envoy_log_level,
        concurrency: f.concurrency,
        dns_enabled: f.dns_enabled,
        dns_port,
        dns_upstream: f.dns_upstream,
        dns_domain: f.dns_domain,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match parse(std::env::args(), |k| std::env::var(k).ok()) {
        Ok(config) => config,
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
    match kuma_dp::run(config).await {
        Ok(status) => {
            let code = status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1);
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("kuma-dp: {}", kuma_core::errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn args(list: &[&str], env: &[(&str, &str)]) -> Result<RunConfig, (String, u8)> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(["kuma-dp"].iter().chain(list).map(|s| s.to_string()), |k| {
            env.get(k).cloned()
        })
    }

    #[test]
    fn flags_templates_and_fallbacks() {
        let a = args(
            &[
                "run",
                "--dataplane",
                "name: {{ name }}",
                "-v",
                "name=web-1,address=10.0.0.1",
                "--dataplane-var",
                "a.b=c",
                "--dataplane-token",
                "TOKEN",
                "--work-dir",
                "/w",
                "--config-dir",
                "/c",
            ],
            &[("KUMA_DNS_CORE_DNS_PORT", "25053")],
        )
        .unwrap();
        assert_eq!(a.template, Template::Inline("name: {{ name }}".into()));
        assert_eq!(a.vars["name"], "web-1");
        assert_eq!(a.vars["address"], "10.0.0.1");
        assert_eq!(a.vars["a.b"], "c");
        assert!(matches!(a.token, Some(Token::Inline(ref t)) if t == "TOKEN"));
        assert_eq!(a.config_dir, Some(PathBuf::from("/w")), "--work-dir wins");
        assert_eq!(a.dns_port, 25053);
        assert_eq!(a.readiness_port, 9902);
        assert!(a.dns_enabled);

        let (message, code) = args(&["run"], &[]).unwrap_err();
        assert_eq!(code, 2);
        assert!(
            message.contains("KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH"),
            "{message}"
        );
        let (message, _) = args(&["run", "-d", "x", "--drain-time", "1ms"], &[]).unwrap_err();
        assert!(message.contains("at least 1s"), "{message}");
        let (message, _) = args(&["run", "-d", "x", "--proxy-type", "gateway"], &[]).unwrap_err();
        assert!(message.contains("gateway"), "{message}");
        assert_eq!(
            args(&["run", "-d", "x", "--proxy-type", "ingress"], &[])
                .unwrap()
                .proxy_type,
            "ingress"
        );
        let (message, code) = args(&["run", "--help"], &[]).unwrap_err();
        assert_eq!(code, 0);
        assert!(message.contains("KUMA_CONTROL_PLANE_URL"), "{message}");
    }
}
