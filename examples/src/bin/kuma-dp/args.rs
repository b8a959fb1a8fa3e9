//! kuma-dp's command line, with Kuma's flags and `KUMA_*` variables (a flag wins over its
//! variable, the variable over the default), and the Dataplane template (`--dataplane`,
//! `--dataplane-file`, `--dataplane-var`) rendered as Kuma renders it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

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
    /// Type of the proxy; only `dataplane` is served here.
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

/// Where the Dataplane template comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Template {
    /// Inline text (`--dataplane`).
    Inline(String),
    /// A file, or standard input for `-` (`--dataplane-file`).
    File(PathBuf),
}

/// What `kuma-dp run` was told.
#[derive(Debug)]
pub struct Args {
    pub cp_address: String,
    pub template: Template,
    pub vars: BTreeMap<String, String>,
    pub name: Option<String>,
    pub mesh: Option<String>,
    /// The dataplane token, read from its file or given inline.
    pub token: Option<Token>,
    /// The control plane's CA: a file, or PEM inline.
    pub ca: Option<Ca>,
    pub binary_path: String,
    pub admin_port: Option<u16>,
    pub readiness_port: u16,
    pub config_dir: Option<PathBuf>,
    pub drain_time: Duration,
    pub envoy_log_level: String,
    pub concurrency: Option<u32>,
    pub dns_enabled: bool,
    pub dns_port: u16,
    pub dns_upstream: Option<std::net::SocketAddr>,
    pub dns_domain: String,
}

/// A dataplane token: a file to read, or the token itself.
#[derive(Debug)]
pub enum Token {
    File(PathBuf),
    Inline(String),
}

/// The control plane's CA: a file to read, or PEM text.
#[derive(Debug)]
pub enum Ca {
    File(PathBuf),
    Pem(String),
}

/// Parses kuma-dp's command line (and `env`, the `KUMA_*` variables; clap reads the process
/// environment, so `env` only adds Kuma's fallback names). On `--help` or a mistake, the text
/// to print and the exit code.
pub fn parse(
    argv: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Args, (String, u8)> {
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        let code = if e.use_stderr() { 2 } else { 0 };
        (e.render().to_string(), code)
    })?;
    let Command::Run(f) = cli.command;
    let bad = |message: String| (message, 2u8);
    if f.proxy_type != "dataplane" {
        return Err(bad(format!(
            "--proxy-type {:?}: only \"dataplane\" is supported",
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
    Ok(Args {
        cp_address: f.cp_address,
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

/// Renders a Dataplane template as Kuma does (mustache): `{{ key }}` becomes the value of
/// `key` HTML-escaped, `{{{ key }}}` the value as it is; a key may have dots (`{{ a.b }}` is
/// variable `a.b`); an unknown key renders as nothing.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (raw, open, close) = if after.starts_with("{{{") {
            (true, 3, "}}}")
        } else {
            (false, 2, "}}")
        };
        let Some(end) = after[open..].find(close) else {
            out.push_str(after);
            return out;
        };
        let key = after[open..open + end].trim();
        let value = vars.get(key).map(String::as_str).unwrap_or_default();
        if raw {
            out.push_str(value);
        } else {
            out.push_str(&html_escape(value));
        }
        rest = &after[open + end + close.len()..];
    }
    out.push_str(rest);
    out
}

/// What mustache's `{{ }}` does to a value (Go's `html/template.HTMLEscape`).
fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str], env: &[(&str, &str)]) -> Result<Args, (String, u8)> {
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
        let (message, _) = args(&["run", "-d", "x", "--proxy-type", "ingress"], &[]).unwrap_err();
        assert!(message.contains("ingress"), "{message}");
        let (message, code) = args(&["run", "--help"], &[]).unwrap_err();
        assert_eq!(code, 0);
        assert!(message.contains("KUMA_CONTROL_PLANE_URL"), "{message}");
    }

    #[test]
    fn templates_render_as_mustache() {
        let vars: BTreeMap<String, String> =
            [("name", "web-1"), ("address", "10.0.0.1"), ("a.b", "x&y")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(
            render("name: {{ name }}\naddress: {{address}}\n", &vars),
            "name: web-1\naddress: 10.0.0.1\n"
        );
        assert_eq!(render("{{ a.b }} {{{ a.b }}}", &vars), "x&amp;y x&y");
        assert_eq!(render("[{{ missing }}]", &vars), "[]");
        assert_eq!(render("open {{ name", &vars), "open {{ name");
    }
}
