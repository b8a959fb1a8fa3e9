//! What `kuma-dp run` is told ([`RunConfig`]), and the Dataplane template it renders as Kuma
//! renders it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where the Dataplane template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// Inline text (`--dataplane`).
    Inline(String),
    /// A file, or standard input for `-` (`--dataplane-file`).
    File(PathBuf),
}

/// What `kuma-dp run` is told: Kuma's kuma-dp flags, parsed (the binary maps its flags and
/// `KUMA_*` variables onto this).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The dp-server (`https://host:5678`), or the split layout's bootstrap server or API
    /// (`http://host:5682`, `http://host:5681`).
    pub cp_address: String,
    /// What the proxy is (`--proxy-type`): `dataplane` (the template is a Dataplane),
    /// `ingress` (a ZoneIngress) or `egress` (a ZoneEgress).
    pub proxy_type: String,
    /// The Dataplane template.
    pub template: Template,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// The Dataplane's name (overrides the template's).
    pub name: Option<String>,
    /// The Dataplane's mesh (overrides the template's).
    pub mesh: Option<String>,
    /// The dataplane token, read from its file or given inline.
    pub token: Option<Token>,
    /// The control plane's CA: a file, or PEM inline.
    pub ca: Option<Ca>,
    /// The Envoy executable.
    pub binary_path: String,
    /// Envoy's admin port (overrides the Dataplane's `networking.admin.port`; 9901 when
    /// neither says).
    pub admin_port: Option<u16>,
    /// Port of the readiness reporter (`GET /ready` on 127.0.0.1).
    pub readiness_port: u16,
    /// Where the generated files go (a directory of its own in the temp dir if `None`).
    pub config_dir: Option<PathBuf>,
    /// Envoy's drain time.
    pub drain_time: Duration,
    /// Envoy's log level.
    pub envoy_log_level: String,
    /// Envoy's worker threads (`None`: Envoy decides).
    pub concurrency: Option<u32>,
    /// Run the DNS proxy for a transparent proxy.
    pub dns_enabled: bool,
    /// The DNS proxy's port.
    pub dns_port: u16,
    /// Where names outside the mesh are resolved (`None`: `/etc/resolv.conf`'s first).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// The mesh's DNS domain.
    pub dns_domain: String,
}

impl Default for RunConfig {
    /// Kuma's defaults, with an empty inline template (set one).
    fn default() -> Self {
        RunConfig {
            cp_address: "https://localhost:5678".into(),
            proxy_type: "dataplane".into(),
            template: Template::Inline(String::new()),
            vars: BTreeMap::new(),
            name: None,
            mesh: None,
            token: None,
            ca: None,
            binary_path: "envoy".into(),
            admin_port: None,
            readiness_port: 9902,
            config_dir: None,
            drain_time: Duration::from_secs(30),
            envoy_log_level: "info".into(),
            concurrency: None,
            dns_enabled: true,
            dns_port: 15053,
            dns_upstream: None,
            dns_domain: "mesh".into(),
        }
    }
}

/// A dataplane token: a file to read, or the token itself.
#[derive(Debug, Clone)]
pub enum Token {
    /// Read from this file.
    File(PathBuf),
    /// The token.
    Inline(String),
}

/// The control plane's CA: a file to read, or PEM text.
#[derive(Debug, Clone)]
pub enum Ca {
    /// Read from this file.
    File(PathBuf),
    /// PEM text.
    Pem(String),
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
