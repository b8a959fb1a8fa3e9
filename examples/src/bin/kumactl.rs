//! `kumactl`: manage a Kuma-compatible control plane through its HTTP API, with Kuma's verbs.
//!
//! ```text
//! kumactl config control-planes add --name local --address http://localhost:5681 \
//!     [--auth-type tokens --auth-conf token=<token>] [--ca-cert-file ca.crt] [--overwrite]
//! kumactl apply -f resources.yaml [--dry-run]        # or -f - for stdin
//! kumactl get meshes|dataplanes|<policies> [-m mesh] [-o table|yaml|json] [--size N --offset O]
//! kumactl get dataplane NAME -m MESH [-o yaml]
//! kumactl delete dataplane NAME -m MESH
//! kumactl inspect dataplanes [-m mesh]
//! kumactl inspect dataplane NAME -m MESH --type config|rules|policies
//! kumactl generate dataplane-token [--name N] [-m MESH] [--tag k=v]... [--valid-for 24h]
//! kumactl generate zone-token --zone Z [--scope ingress,egress] [--valid-for 24h]
//! ```

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kuma_core::resource::parse_documents;
use serde_json::Value;

use kuma_client::Client;
use kuma_client::config::{ApiServer, KumactlConfig};
use kuma_client::output::{self, Format, Table, inspect_row, rows_for};
use kuma_client::paths::{resolve_type, resource_path};

#[derive(Parser)]
#[command(
    name = "kumactl",
    about = "Manage a Kuma-compatible control plane",
    version
)]
struct Cli {
    /// Path to the configuration file.
    #[arg(long, global = true)]
    config_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage kumactl's configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create or modify resources from a file (multi-document YAML or JSON).
    Apply {
        /// File to read, or `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Check and print the resources instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources.
    Get {
        /// Type (`meshes`, `dataplanes`, `meshtrafficpermissions`, ...; singular with a name).
        kind: String,
        /// Name of one resource.
        name: Option<String>,
        #[command(flatten)]
        common: Common,
        /// Page size.
        #[arg(long)]
        size: Option<usize>,
        /// Offset of the page (from the previous page's footer).
        #[arg(long)]
        offset: Option<String>,
    },
    /// Delete a resource.
    Delete {
        /// Type (singular or plural).
        kind: String,
        /// Name.
        name: String,
        /// Mesh of a mesh-scoped resource.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// Inspect data plane proxies.
    Inspect {
        #[command(subcommand)]
        command: InspectCommand,
    },
    /// Generate tokens.
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Subcommand)]
enum GenerateCommand {
    /// A dataplane token (admins only), printed to stdout.
    DataplaneToken {
        /// The Dataplane's name (none: any name).
        #[arg(long)]
        name: Option<String>,
        /// Mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// A tag the Dataplane must carry, `key=value` (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How long the token is valid (`24h`; default 10 years).
        #[arg(long = "valid-for", default_value = "")]
        valid_for: String,
        /// `dataplane`, `ingress` or `egress`.
        #[arg(long = "proxy-type", default_value = "dataplane")]
        proxy_type: String,
    },
    /// A zone token for zone proxies (admins only, from the global or a standalone control
    /// plane), printed to stdout.
    ZoneToken {
        /// The zone whose ingresses or egresses run with it.
        #[arg(long)]
        zone: String,
        /// `ingress`, `egress` (comma-separated or repeated; default both).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// How long the token is valid (`24h`; default 10 years).
        #[arg(long = "valid-for", default_value = "")]
        valid_for: String,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Mesh.
    #[arg(short = 'm', long, default_value = "default")]
    mesh: String,
    /// Output format: table, yaml or json.
    #[arg(short = 'o', long, default_value = "table")]
    output: Format,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Manage known control planes.
    ControlPlanes {
        #[command(subcommand)]
        command: ControlPlanesCommand,
    },
}

#[derive(Subcommand)]
enum ControlPlanesCommand {
    /// Add a control plane and make it the current one.
    Add {
        /// Name of the control plane.
        #[arg(long)]
        name: String,
        /// URL of its API server, e.g. http://localhost:5681 or https://cp:5682.
        #[arg(long)]
        address: String,
        /// Authentication: `tokens`.
        #[arg(long)]
        auth_type: Option<String>,
        /// Authentication settings, e.g. `token=<user token>`.
        #[arg(long)]
        auth_conf: Vec<String>,
        /// CA certificate the HTTPS API's certificate must chain to.
        #[arg(long)]
        ca_cert_file: Option<String>,
        /// Do not verify the HTTPS API's certificate.
        #[arg(long)]
        skip_verify: bool,
        /// Replace a control plane of the same name.
        #[arg(long)]
        overwrite: bool,
    },
    /// List known control planes.
    List,
}

#[derive(Subcommand)]
enum InspectCommand {
    /// Zones with their sync status (on global).
    Zones {
        /// Output format: table, yaml or json.
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
    /// Zone ingresses with their xDS status.
    Zoneingresses {
        /// Output format: table, yaml or json.
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
    /// Zone egresses with their xDS status.
    Zoneegresses {
        /// Output format: table, yaml or json.
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
    /// Data plane proxies with their xDS status.
    Dataplanes {
        #[command(flatten)]
        common: Common,
    },
    /// One data plane proxy.
    Dataplane {
        /// Name.
        name: String,
        /// Mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// What to show: `config` (the Envoy config the control plane serves it), `rules`
        /// (the merged policy rules, with the policies each came from) or `policies` (the
        /// proxy-wide policy confs).
        #[arg(long = "type", default_value = "config")]
        kind: String,
    },
}

fn print(format: Format, value: &Value, table: impl FnOnce() -> String) {
    match format {
        Format::Json => println!("{}", output::json(value)),
        Format::Yaml => print!("{}", output::yaml(value)),
        Format::Table => print!("{}", table()),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config_path = cli
        .config_file
        .clone()
        .unwrap_or_else(kuma_client::config::default_path);
    let mut config = KumactlConfig::load(&config_path)?;
    let client = || Client::new(&config.current()).map_err(|e| e.to_string());
    match cli.command {
        Command::Config {
            command: ConfigCommand::ControlPlanes { command },
        } => match command {
            ControlPlanesCommand::Add {
                name,
                address,
                auth_type,
                auth_conf,
                ca_cert_file,
                skip_verify,
                overwrite,
            } => {
                let mut conf = std::collections::BTreeMap::new();
                for kv in auth_conf {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--auth-conf {kv:?} must be key=value"))?;
                    conf.insert(k.to_string(), v.to_string());
                }
                let api = ApiServer {
                    url: address,
                    auth_type: auth_type.unwrap_or_default(),
                    auth_conf: conf,
                    ca_cert_file,
                    skip_verify,
                };
                // Check that it answers before saving, as Kuma does.
                let info = Client::new(&api)
                    .map_err(|e| e.to_string())?
                    .get("/")
                    .await
                    .map_err(|e| {
                        format!("could not connect to the Control Plane API Server: {e}")
                    })?;
                config.add(&name, api, overwrite)?;
                config.save(&config_path)?;
                println!(
                    "added Control Plane {name:?} ({} {})\nswitched active Control Plane to {name:?}",
                    info["product"].as_str().unwrap_or("Kuma"),
                    info["version"].as_str().unwrap_or_default()
                );
            }
            ControlPlanesCommand::List => {
                let table = Table {
                    headers: vec!["ACTIVE", "NAME", "ADDRESS"],
                    rows: config
                        .control_planes
                        .iter()
                        .map(|c| {
                            let active = config.contexts.iter().any(|x| {
                                x.name == config.current_context && x.control_plane == c.name
                            });
                            vec![
                                if active { "*" } else { "" }.into(),
                                c.name.clone(),
                                c.coordinates.api_server.url.clone(),
                            ]
                        })
                        .collect(),
                };
                print!("{table}");
            }
        },
        Command::Apply { file, dry_run } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("cannot read stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?
            };
            let resources = parse_documents(&text).map_err(|e| format!("{file}: {e}"))?;
            if dry_run {
                for (i, r) in resources.iter().enumerate() {
                    if i > 0 {
                        println!("---");
                    }
                    print!("{}", output::yaml(&r.to_value()));
                }
                return Ok(());
            }
            let client = client()?;
            for r in resources {
                let path = resource_path(r.rtype(), &r.meta.mesh, Some(&r.meta.name))?;
                client
                    .put(&path, r.to_value().to_string())
                    .await
                    .map_err(|e| format!("{} {:?}: {e}", r.rtype(), r.meta.name))?;
            }
        }
        Command::Get {
            kind,
            name,
            common,
            size,
            offset,
        } => {
            let (rtype, plural) =
                resolve_type(&kind).ok_or_else(|| format!("unknown resource type {kind:?}"))?;
            let client = client()?;
            match (name, plural) {
                (Some(name), false) => {
                    let value = client
                        .get(&resource_path(rtype, &common.mesh, Some(&name))?)
                        .await
                        .map_err(|e| e.to_string())?;
                    print(common.output, &value, || {
                        rows_for(rtype, std::slice::from_ref(&value)).to_string()
                    });
                }
                (None, true) => {
                    let mut path = resource_path(rtype, &common.mesh, None)?;
                    let mut query = Vec::new();
                    if let Some(s) = size {
                        query.push(format!("size={s}"));
                    }
                    if let Some(o) = offset {
                        query.push(format!("offset={o}"));
                    }
                    if !query.is_empty() {
                        path = format!("{path}?{}", query.join("&"));
                    }
                    let list = client.get(&path).await.map_err(|e| e.to_string())?;
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    print(common.output, &list, || {
                        let mut out = rows_for(rtype, &items).to_string();
                        if let Some(footer) = output::pagination_footer(&list) {
                            out.push_str(&format!("\n{footer}\n"));
                        }
                        out
                    });
                }
                (Some(_), true) => {
                    return Err(format!("use the singular form of {kind:?} with a name"));
                }
                (None, false) => return Err(format!("{kind:?} needs a name")),
            }
        }
        Command::Delete { kind, name, mesh } => {
            let (rtype, _) =
                resolve_type(&kind).ok_or_else(|| format!("unknown resource type {kind:?}"))?;
            client()?
                .delete(&resource_path(rtype, &mesh, Some(&name))?)
                .await
                .map_err(|e| e.to_string())?;
            println!("deleted {} {name:?}", rtype);
        }
        Command::Inspect { command } => match command {
            InspectCommand::Zones { output } => {
                let list = client()?
                    .get("/zones+insights")
                    .await
                    .map_err(|e| e.to_string())?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                print(output, &list, || {
                    Table {
                        headers: output::ZONE_HEADERS.to_vec(),
                        rows: items.iter().map(output::zone_inspect_row).collect(),
                    }
                    .to_string()
                });
            }
            InspectCommand::Zoneingresses { output } | InspectCommand::Zoneegresses { output } => {
                let (path, spec_key, insight_key) = match command {
                    InspectCommand::Zoneingresses { .. } => (
                        "/zoneingresses+insights",
                        "zoneIngress",
                        "zoneIngressInsight",
                    ),
                    _ => ("/zoneegressoverviews", "zoneEgress", "zoneEgressInsight"),
                };
                let list = client()?.get(path).await.map_err(|e| e.to_string())?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                print(output, &list, || {
                    Table {
                        headers: output::ZONE_PROXY_HEADERS.to_vec(),
                        rows: items
                            .iter()
                            .map(|o| output::zone_proxy_inspect_row(o, spec_key, insight_key))
                            .collect(),
                    }
                    .to_string()
                });
            }
            InspectCommand::Dataplanes { common } => {
                let list = client()?
                    .get(&format!("/meshes/{}/dataplanes+insights", common.mesh))
                    .await
                    .map_err(|e| e.to_string())?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                print(common.output, &list, || {
                    Table {
                        headers: vec![
                            "MESH",
                            "NAME",
                            "TAGS",
                            "STATUS",
                            "LAST CONNECTED AGO",
                            "LAST UPDATED AGO",
                            "TOTAL UPDATES",
                            "TOTAL ERRORS",
                            "CERT REGENERATED AGO",
                            "CERT EXPIRATION",
                            "CERT REGENERATIONS",
                            "CERT BACKEND",
                            "SUPPORTED CERT BACKENDS",
                            "KUMA-DP VERSION",
                            "ENVOY VERSION",
                            "DEPENDENCIES VERSIONS",
                            "NOTES",
                            "LAST ACK",
                            "LAST NACK",
                        ],
                        rows: items.iter().map(inspect_row).collect(),
                    }
                    .to_string()
                });
            }
            InspectCommand::Dataplane { name, mesh, kind } => {
                let endpoint = match kind.as_str() {
                    "config" => "_config",
                    "rules" => "_rules",
                    "policies" => "_policies",
                    other => {
                        return Err(format!(
                            "--type {other:?} is not supported: use config, rules or policies"
                        ));
                    }
                };
                let value = client()?
                    .get(&format!("/meshes/{mesh}/dataplanes/{name}/{endpoint}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let shown = if kind == "config" {
                    &value["xds"]
                } else {
                    &value
                };
                println!("{}", output::json(shown));
            }
        },
        Command::Generate {
            command:
                GenerateCommand::DataplaneToken {
                    name,
                    mesh,
                    tags,
                    valid_for,
                    proxy_type,
                },
        } => {
            let mut by_key: std::collections::BTreeMap<String, Vec<String>> =
                std::collections::BTreeMap::new();
            for t in &tags {
                let (k, v) = t
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--tag {t:?}: expected key=value"))?;
                by_key.entry(k.to_string()).or_default().push(v.to_string());
            }
            let body = serde_json::json!({
                "name": name.unwrap_or_default(),
                "mesh": mesh,
                "tags": by_key,
                "type": proxy_type,
                "validFor": valid_for,
            });
            let token = issue_token(&client()?, &config, "dataplane", &body).await?;
            println!("{token}");
        }
        Command::Generate {
            command:
                GenerateCommand::ZoneToken {
                    zone,
                    scope,
                    valid_for,
                },
        } => {
            let body = serde_json::json!({"zone": zone, "scope": scope, "validFor": valid_for});
            let token = issue_token(&client()?, &config, "zone", &body).await?;
            println!("{token}");
        }
    }
    Ok(())
}

/// A token from `POST /tokens/<kind>` with `body`: from the API, else (the split port layout
/// issues tokens on its admin server only) from the admin server the API's catalog names.
async fn issue_token(
    client: &Client,
    config: &KumactlConfig,
    kind: &str,
    body: &Value,
) -> Result<String, String> {
    let path = format!("/tokens/{kind}");
    let token = match client.post(&path, body.to_string()).await {
        Err(kuma_client::Error::Api(f)) if f.status == 404 => {
            match admin_server_url(client, &config.current().url).await {
                Ok(admin) => {
                    client
                        .post(&format!("{admin}{path}"), body.to_string())
                        .await
                }
                // No catalog: the API's own answer says why.
                Err(_) => Err(kuma_client::Error::Api(f)),
            }
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    match token {
        Value::String(t) => Ok(t),
        other => Err(format!("unexpected answer: {other}")),
    }
}

/// The admin server's URL from the API's `/catalog` (the split port layout). It listens on the
/// control plane's localhost, so it is usable only from there.
async fn admin_server_url(client: &Client, api_url: &str) -> Result<String, String> {
    let catalog = client.get("/catalog").await.map_err(|e| {
        format!("the control plane issues no dataplane tokens on its API and has no catalog: {e}")
    })?;
    let url = catalog["apis"]["admin"]["localUrl"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or("the control plane's catalog names no admin server")?;
    let local = reqwest::Url::parse(api_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    if !local {
        return Err(format!(
            "dataplane tokens are issued by the admin server at {url}, on the control plane's own localhost: run kumactl on that machine or forward the port"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
