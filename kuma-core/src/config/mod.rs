//! Control-plane configuration: Kuma's keys, `KUMA_*` environment overrides, validation.
//!
//! Load order: code defaults, then the YAML file (unknown keys are errors), then environment
//! variables. Each leaf key has one variable, derived from its path (`apiServer.http.port` is
//! `KUMA_API_SERVER_HTTP_PORT`) except where Kuma spells it otherwise (see [`env_name`]). The
//! commented file [`DEFAULTS_YAML`] lists every key with its default and variable; a test proves
//! it equal to [`Config::default`].

mod env;

pub use env::env_name;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::model::common::validate_name;
use crate::validation::{Path, ValidationError};

/// The commented defaults file, equal to [`Config::default`].
pub const DEFAULTS_YAML: &str = include_str!("kuma-cp.defaults.yaml");

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML or has unknown keys or wrong types.
    #[error("config file: {0}")]
    File(ValidationError),
    /// An environment variable holds a value of the wrong type.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// The values are individually fine but break a rule.
    #[error("invalid configuration: {0}")]
    Invalid(ValidationError),
}

fn d(s: &str) -> Duration {
    s.parse()
        .unwrap_or_else(|_| Duration::from_std(std::time::Duration::ZERO))
}

/// Where the control plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// VMs and bare metal (the only environment supported).
    Universal,
    /// Kubernetes (recognised so the error is clear; not supported).
    Kubernetes,
}

/// How the control plane takes part in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One control plane, no zones.
    Standalone,
    /// A zone control plane (connects to global when `multizone.zone.globalAddress` is set).
    Zone,
    /// The global control plane zones connect to.
    Global,
}

/// Which store keeps resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    /// Process memory (lost on restart).
    Memory,
    /// PostgreSQL.
    Postgres,
    /// An embedded SQLite file (single node; not in Kuma).
    Sqlite,
}

/// Which ports the control plane's services use (not a Kuma key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortLayout {
    /// Current Kuma: the dp-server port serves ADS, SDS and `/bootstrap` over one TLS port,
    /// and the API port serves the API, the GUI and dataplane tokens.
    Default,
    /// Kuma 0.6/0.7: SDS ([`SdsServerConfig`]), the admin server ([`AdminServerConfig`]),
    /// the plain-HTTP bootstrap server ([`BootstrapServerConfig::port`]) and the GUI
    /// ([`GuiServerConfig`]) each have a port of their own; the dp-server port serves ADS only,
    /// the API port no longer issues tokens, and the HTTPS API is off (its port is the
    /// bootstrap server's).
    Split,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// `universal`.
    pub environment: Environment,
    /// `standalone`, `zone` or `global`.
    pub mode: Mode,
    /// `default` or `split` (not a Kuma key).
    pub port_layout: PortLayout,
    /// Resource store.
    pub store: StoreConfig,
    /// What `POST /bootstrap` puts into Envoy's bootstrap.
    pub bootstrap_server: BootstrapServerConfig,
    /// MADS for Prometheus.
    pub monitoring_assignment_server: MadsConfig,
    /// The xDS server.
    pub xds_server: XdsServerConfig,
    /// The HTTP(S) API.
    pub api_server: ApiServerConfig,
    /// What is created at start.
    pub defaults: DefaultsConfig,
    /// Shared settings.
    pub general: GeneralConfig,
    /// The `.mesh` DNS server and VIPs.
    pub dns_server: DnsServerConfig,
    /// Global/zone settings.
    pub multizone: MultizoneConfig,
    /// `/ready`, `/healthy`, `/metrics`.
    pub diagnostics: DiagnosticsConfig,
    /// The port proxies connect to (ADS, SDS, bootstrap).
    pub dp_server: DpServerConfig,
    /// What is recorded about proxies.
    pub metrics: MetricsConfig,
    /// Mesh mTLS settings of this implementation (not in Kuma).
    pub mtls: MtlsConfig,
    /// Platform-specific servers.
    pub runtime: RuntimeConfig,
    /// SDS on a port of its own (split layout).
    pub sds_server: SdsServerConfig,
    /// Tokens and secrets on localhost (split layout).
    pub admin_server: AdminServerConfig,
    /// The GUI on a port of its own (split layout).
    pub gui_server: GuiServerConfig,
    /// Who may do what on the API (Kuma's static access strategy).
    pub access: AccessConfig,
    /// Caps on the connections of every TCP listener (not a Kuma key).
    pub connections: ConnectionsConfig,
}

/// `access`: Kuma's access strategy. Only `static` exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessConfig {
    /// `static`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The static lists of users and groups.
    #[serde(rename = "static")]
    pub static_access: StaticAccessConfig,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            kind: "static".into(),
            static_access: StaticAccessConfig::default(),
        }
    }
}

/// `access.static`: which users and groups may do each guarded action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StaticAccessConfig {
    /// Read and write `Secret` and `GlobalSecret`.
    pub admin_resources: AccessList,
    /// `POST /tokens/dataplane`.
    pub generate_dp_token: AccessList,
    /// `GET /meshes/{mesh}/dataplanes/{name}/_config`: the (redacted) Envoy config a proxy is
    /// served.
    pub view_config_dump: AccessList,
}

impl Default for StaticAccessConfig {
    fn default() -> Self {
        let admins = || AccessList {
            users: vec!["mesh-system:admin".into()],
            groups: vec!["mesh-system:admin".into()],
        };
        StaticAccessConfig {
            admin_resources: admins(),
            generate_dp_token: admins(),
            view_config_dump: AccessList {
                users: vec![],
                groups: vec![
                    "mesh-system:unauthenticated".into(),
                    "mesh-system:authenticated".into(),
                ],
            },
        }
    }
}

/// Users and groups allowed one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessList {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

impl AccessList {
    /// Whether user `name`, member of `groups`, is on the list.
    pub fn allows(&self, name: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == name) || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// `connections` (not a Kuma key): caps that keep one client, or a flood of idle
/// connections, from taking the control plane's sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Connections one listener holds at once; a connection beyond is closed at once.
    pub max_per_listener: u32,
    /// Connections one client address holds at once, over all listeners together.
    pub max_per_client: u32,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_per_listener: 16_384,
            max_per_client: 256,
            tls_handshake_timeout: d("10s"),
        }
    }
}

/// `sdsServer` (split layout): the gRPC `SecretDiscoveryService`, over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SdsServerConfig {
    /// Port.
    pub grpc_port: u16,
}

impl Default for SdsServerConfig {
    fn default() -> Self {
        SdsServerConfig { grpc_port: 5677 }
    }
}

/// `adminServer` (split layout): dataplane tokens and secrets, plain HTTP on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminServerConfig {
    /// The listener on localhost.
    pub local: AdminServerLocalConfig,
}

/// `adminServer.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminServerLocalConfig {
    /// Port on 127.0.0.1.
    pub port: u16,
}

impl Default for AdminServerLocalConfig {
    fn default() -> Self {
        AdminServerLocalConfig { port: 5679 }
    }
}

/// `guiServer` (split layout): the GUI and a read-only API for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuiServerConfig {
    /// Port.
    pub port: u16,
}

impl Default for GuiServerConfig {
    fn default() -> Self {
        GuiServerConfig { port: 5683 }
    }
}

/// `runtime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Kubernetes.
    pub kubernetes: KubernetesRuntimeConfig,
}

/// `runtime.kubernetes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesRuntimeConfig {
    /// The admission webhook.
    pub admission_server: AdmissionServerConfig,
}

/// `runtime.kubernetes.admissionServer`: the HTTPS admission webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdmissionServerConfig {
    /// Serve it (opt-in).
    pub enabled: bool,
    /// Interface to listen on.
    pub address: String,
    /// Port.
    pub port: u16,
    /// A directory with `tls.crt` and `tls.key` (empty: the control plane's certificate).
    pub cert_dir: String,
}

impl Default for AdmissionServerConfig {
    fn default() -> Self {
        AdmissionServerConfig {
            enabled: false,
            address: "0.0.0.0".into(),
            port: 5443,
            cert_dir: String::new(),
        }
    }
}

/// `mtls`: how this control plane issues mesh certificates. Kuma has no such settings; the
/// defaults are Kuma's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MtlsConfig {
    /// Key type of new builtin CAs and of workload certificates.
    pub key_type: MtlsKeyType,
    /// URI SANs of workload certificates.
    pub san_layout: SanLayoutConfig,
}

/// `mtls.keyType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsKeyType {
    /// RSA 2048, as Kuma.
    #[default]
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// ECDSA P-256: much faster to generate, smaller certificates.
    #[serde(rename = "ecdsaP256")]
    EcdsaP256,
}

/// `mtls.sanLayout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SanLayoutConfig {
    /// Kuma's: a `spiffe://` SAN per service and a `kuma://` SAN per tag value.
    #[default]
    #[serde(rename = "kuma")]
    Kuma,
    /// One `spiffe://<mesh>/<service>` SAN, a valid X.509-SVID.
    #[serde(rename = "strictSpiffe")]
    StrictSpiffe,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            environment: Environment::Universal,
            mode: Mode::Standalone,
            port_layout: PortLayout::Default,
            store: StoreConfig::default(),
            bootstrap_server: BootstrapServerConfig::default(),
            monitoring_assignment_server: MadsConfig::default(),
            xds_server: XdsServerConfig::default(),
            api_server: ApiServerConfig::default(),
            defaults: DefaultsConfig::default(),
            general: GeneralConfig::default(),
            dns_server: DnsServerConfig::default(),
            multizone: MultizoneConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            dp_server: DpServerConfig::default(),
            metrics: MetricsConfig::default(),
            mtls: MtlsConfig::default(),
            runtime: RuntimeConfig::default(),
            sds_server: SdsServerConfig::default(),
            admin_server: AdminServerConfig::default(),
            gui_server: GuiServerConfig::default(),
            access: AccessConfig::default(),
            connections: ConnectionsConfig::default(),
        }
    }
}

/// `store`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` or `postgres`.
    #[serde(rename = "type")]
    pub kind: StoreType,
    /// PostgreSQL connection.
    pub postgres: PostgresConfig,
    /// The SQLite file.
    pub sqlite: SqliteConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreType::Memory,
            postgres: PostgresConfig::default(),
            sqlite: SqliteConfig::default(),
        }
    }
}

/// `store.sqlite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file; empty means `kuma.db` in `general.workDir`.
    pub path: String,
}

/// `store.postgres`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Database.
    pub db_name: String,
    /// Seconds to wait for a connection.
    pub connection_timeout: u32,
    /// Pool size.
    pub max_open_connections: u32,
    /// TLS to the server.
    pub tls: PostgresTlsConfig,
}

/// `store.postgres.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PostgresTlsConfig {
    /// `disable`, `verifyNone`, `verifyCa` or `verifyFull`.
    pub mode: PostgresTlsMode,
    /// Client certificate (PEM), when the server asks for one.
    pub cert_path: String,
    /// Its private key (PEM).
    pub key_path: String,
    /// CA the server's certificate must chain to (`verifyCa`, `verifyFull`).
    pub ca_path: String,
}

/// How the server's certificate is checked (Kuma's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PostgresTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted; any server certificate.
    VerifyNone,
    /// Encrypted; the certificate must chain to `caPath` (any host name).
    VerifyCa,
    /// Encrypted; chain to `caPath` and the host name must match.
    VerifyFull,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"*****")
            .field("db_name", &self.db_name)
            .field("connection_timeout", &self.connection_timeout)
            .field("max_open_connections", &self.max_open_connections)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port: 15432,
            user: "kuma".into(),
            password: "kuma".into(),
            db_name: "kuma".into(),
            connection_timeout: 5,
            max_open_connections: 50,
            tls: PostgresTlsConfig::default(),
        }
    }
}

/// `bootstrapServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BootstrapServerConfig {
    /// Port of the plain-HTTP bootstrap server (split layout; by default `POST /bootstrap` is
    /// served on the dp-server port).
    pub port: u16,
    /// Parameters of generated bootstraps.
    pub params: BootstrapParams,
}

impl Default for BootstrapServerConfig {
    fn default() -> Self {
        BootstrapServerConfig {
            port: 5682,
            params: BootstrapParams::default(),
        }
    }
}

/// `bootstrapServer.params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BootstrapParams {
    /// Envoy admin address.
    pub admin_address: String,
    /// Envoy admin port.
    pub admin_port: u16,
    /// Envoy admin access log.
    pub admin_access_log_path: String,
    /// xDS host given to Envoy (empty: the host kuma-dp used).
    pub xds_host: String,
    /// xDS port given to Envoy (0: `dpServer.port`).
    pub xds_port: u16,
    /// Connect timeout to the xDS server.
    pub xds_connect_timeout: Duration,
}

impl Default for BootstrapParams {
    fn default() -> Self {
        BootstrapParams {
            admin_address: "127.0.0.1".into(),
            admin_port: 9901,
            admin_access_log_path: "/dev/null".into(),
            xds_host: String::new(),
            xds_port: 0,
            xds_connect_timeout: d("1s"),
        }
    }
}

/// `monitoringAssignmentServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MadsConfig {
    /// Serve MADS.
    pub enabled: bool,
    /// Port.
    pub port: u16,
    /// How often assignments are regenerated.
    pub assignment_refresh_interval: Duration,
    /// Fetch timeout when the client gives none.
    pub default_fetch_timeout: Duration,
    /// Serve HTTPS instead of HTTP.
    pub tls_enabled: bool,
    /// Certificate (PEM) for HTTPS; empty: the control plane's certificate (the dp-server's).
    pub tls_cert_file: String,
    /// Key of `tlsCertFile`.
    pub tls_key_file: String,
}

impl Default for MadsConfig {
    fn default() -> Self {
        MadsConfig {
            enabled: true,
            port: 5676,
            assignment_refresh_interval: d("1s"),
            default_fetch_timeout: d("30s"),
            tls_enabled: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// `xdsServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct XdsServerConfig {
    /// How often proxy configuration is regenerated.
    pub dataplane_configuration_refresh_interval: Duration,
    /// How often proxy status is written.
    pub dataplane_status_flush_interval: Duration,
    /// Wait before resending a config the proxy rejected.
    pub nack_backoff: Duration,
    /// Wait after a proxy disconnects before deleting its Dataplane.
    pub dataplane_deregistration_delay: Duration,
}

impl Default for XdsServerConfig {
    fn default() -> Self {
        XdsServerConfig {
            dataplane_configuration_refresh_interval: d("1s"),
            dataplane_status_flush_interval: d("10s"),
            nack_backoff: d("5s"),
            dataplane_deregistration_delay: d("10s"),
        }
    }
}

/// `apiServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiServerConfig {
    /// Plain HTTP listener.
    pub http: HttpListenerConfig,
    /// HTTPS listener.
    pub https: HttpsListenerConfig,
    /// Refuse every write.
    pub read_only: bool,
    /// Authentication.
    pub authn: ApiAuthnConfig,
    /// The GUI.
    pub gui: GuiConfig,
    /// Time a client has to send a request's headers (and a new connection its first request).
    pub read_header_timeout: Duration,
    /// Time a client has to send a whole request, body included.
    pub read_timeout: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle_timeout: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            http: HttpListenerConfig::default(),
            https: HttpsListenerConfig::default(),
            read_only: false,
            authn: ApiAuthnConfig::default(),
            gui: GuiConfig::default(),
            read_header_timeout: d("1s"),
            read_timeout: d("10s"),
            idle_timeout: d("2m"),
        }
    }
}

/// `apiServer.http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpListenerConfig {
    /// Serve it.
    pub enabled: bool,
    /// Address to bind.
    pub interface: String,
    /// Port.
    pub port: u16,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        HttpListenerConfig {
            enabled: true,
            interface: "0.0.0.0".into(),
            port: 5681,
        }
    }
}

/// `apiServer.https`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpsListenerConfig {
    /// Serve it.
    pub enabled: bool,
    /// Address to bind.
    pub interface: String,
    /// Port.
    pub port: u16,
    /// Certificate (empty: self-signed, generated at start).
    pub tls_cert_file: String,
    /// Key.
    pub tls_key_file: String,
}

impl Default for HttpsListenerConfig {
    fn default() -> Self {
        HttpsListenerConfig {
            enabled: true,
            interface: "0.0.0.0".into(),
            port: 5682,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// `apiServer.authn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiAuthnConfig {
    /// `tokens` (user tokens).
    #[serde(rename = "type")]
    pub kind: String,
    /// Requests from localhost act as admin.
    pub localhost_is_admin: bool,
    /// User tokens.
    pub tokens: ApiTokensConfig,
}

impl Default for ApiAuthnConfig {
    fn default() -> Self {
        ApiAuthnConfig {
            kind: "tokens".into(),
            localhost_is_admin: true,
            tokens: ApiTokensConfig::default(),
        }
    }
}

/// `apiServer.authn.tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiTokensConfig {
    /// Store an admin user token as the global secret `admin-user-token` at first start.
    pub bootstrap_admin_token: bool,
}

impl Default for ApiTokensConfig {
    fn default() -> Self {
        ApiTokensConfig {
            bootstrap_admin_token: true,
        }
    }
}

/// `apiServer.gui`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuiConfig {
    /// Serve the GUI.
    pub enabled: bool,
    /// Path of the GUI.
    pub base_path: String,
}

impl Default for GuiConfig {
    fn default() -> Self {
        GuiConfig {
            enabled: true,
            base_path: "/gui".into(),
        }
    }
}

/// `defaults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DefaultsConfig {
    /// Do not create the `default` mesh at start.
    pub skip_mesh_creation: bool,
}

/// `general`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GeneralConfig {
    /// Directory for generated files (empty: a temporary directory).
    pub work_dir: String,
    /// Certificate for the control plane's TLS servers (empty: generated).
    pub tls_cert_file: String,
    /// Key for it.
    pub tls_key_file: String,
}

/// `dnsServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsServerConfig {
    /// The domain answered for (`mesh`).
    pub domain: String,
    /// UDP port.
    pub port: u16,
    /// Range VIPs are taken from.
    #[serde(rename = "CIDR")]
    pub cidr: String,
    /// Give services VIPs.
    pub service_vip_enabled: bool,
    /// Port on the VIPs.
    pub service_vip_port: u16,
    /// TTL of the answers, in seconds.
    pub ttl: u32,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        DnsServerConfig {
            domain: "mesh".into(),
            port: 5653,
            cidr: "240.0.0.0/4".into(),
            service_vip_enabled: true,
            service_vip_port: 80,
            ttl: 60,
        }
    }
}

/// `multizone`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MultizoneConfig {
    /// Global side.
    pub global: GlobalConfig,
    /// Zone side.
    pub zone: ZoneConfig,
}

/// `multizone.global`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GlobalConfig {
    /// The KDS server.
    pub kds: GlobalKdsConfig,
}

/// `multizone.global.kds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GlobalKdsConfig {
    /// Port zones connect to.
    pub grpc_port: u16,
    /// How often changes are pushed.
    pub refresh_interval: Duration,
    /// Serve TLS.
    pub tls_enabled: bool,
    /// Certificate (empty: generated).
    pub tls_cert_file: String,
    /// Key.
    pub tls_key_file: String,
    /// Largest message.
    pub max_msg_size: u32,
}

impl Default for GlobalKdsConfig {
    fn default() -> Self {
        GlobalKdsConfig {
            grpc_port: 5685,
            refresh_interval: d("1s"),
            tls_enabled: true,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            max_msg_size: 10_485_760,
        }
    }
}

/// `multizone.zone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ZoneConfig {
    /// This zone's name.
    pub name: String,
    /// Global's KDS address, e.g. `grpcs://global:5685` (empty: not connected).
    pub global_address: String,
    /// KDS client settings.
    pub kds: ZoneKdsConfig,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            name: "default".into(),
            global_address: String::new(),
            kds: ZoneKdsConfig::default(),
        }
    }
}

/// `multizone.zone.kds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ZoneKdsConfig {
    /// How often changes are pushed.
    pub refresh_interval: Duration,
    /// CA that signed global's certificate.
    pub root_ca_file: String,
    /// Do not verify global's certificate.
    pub tls_skip_verify: bool,
}

impl Default for ZoneKdsConfig {
    fn default() -> Self {
        ZoneKdsConfig {
            refresh_interval: d("1s"),
            root_ca_file: String::new(),
            tls_skip_verify: false,
        }
    }
}

/// `diagnostics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Port.
    pub server_port: u16,
    /// Serve debug endpoints.
    pub debug_endpoints: bool,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        DiagnosticsConfig {
            server_port: 5680,
            debug_endpoints: false,
        }
    }
}

/// `metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// DataplaneInsight.
    pub dataplane: DataplaneMetricsConfig,
}

/// `metrics.dataplane`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DataplaneMetricsConfig {
    /// How many of the latest xDS subscriptions a DataplaneInsight keeps (0: all).
    pub subscription_limit: usize,
}

impl Default for DataplaneMetricsConfig {
    fn default() -> Self {
        DataplaneMetricsConfig {
            subscription_limit: 2,
        }
    }
}

/// `dpServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DpServerConfig {
    /// Port.
    pub port: u16,
    /// Certificate (empty: generated).
    pub tls_cert_file: String,
    /// Key.
    pub tls_key_file: String,
    /// How proxies authenticate.
    pub authn: DpAuthnConfig,
    /// Time a client has to send a request's headers (and a new connection its first request).
    pub read_header_timeout: Duration,
    /// How long a connection with no request or stream in progress stays open (not a Kuma
    /// key).
    pub idle_timeout: Duration,
}

impl Default for DpServerConfig {
    fn default() -> Self {
        DpServerConfig {
            port: 5678,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            authn: DpAuthnConfig::default(),
            read_header_timeout: d("5s"),
            idle_timeout: d("2m"),
        }
    }
}

/// `dpServer.authn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DpAuthnConfig {
    /// Data plane proxies.
    pub dp_proxy: AuthnType,
    /// Zone ingress/egress proxies.
    pub zone_proxy: AuthnType,
}

/// An authentication type: `dpToken`, `zoneToken`, `none`, or empty for the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthnType {
    /// The type.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Config {
    /// Defaults, then `file` (YAML) if given, then the variables `env` returns.
    ///
    /// Pass `|k| std::env::var(k).ok()` for the process environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let base = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Config::from_yaml(&text)?
            }
        };
        let cfg = env::apply(base, env)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Parses a YAML config; absent keys keep their defaults, unknown keys are errors.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let value: serde_json::Value = match serde_norway::from_str(text) {
            Ok(serde_json::Value::Null) => return Ok(Config::default()),
            Ok(v) => v,
            Err(e) => {
                return Err(ConfigError::File(ValidationError::single(
                    "",
                    e.to_string(),
                )));
            }
        };
        crate::resource::decode_value(value).map_err(ConfigError::File)
    }

    /// Checks rules across keys: supported environment, distinct ports, a usable store and
    /// DNS range, zone settings matching the mode.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        if self.environment != Environment::Universal {
            err.add(&Path::at("environment"), "only \"universal\" is supported");
        }
        if self.store.kind == StoreType::Postgres {
            let p = Path::at("store").field("postgres");
            if self.store.postgres.host.is_empty() {
                err.add(
                    &p.field("host"),
                    "must not be empty when store.type is postgres",
                );
            }
            if self.store.postgres.port == 0 {
                err.add(&p.field("port"), "must be set when store.type is postgres");
            }
            let tls = &self.store.postgres.tls;
            if matches!(
                tls.mode,
                PostgresTlsMode::VerifyCa | PostgresTlsMode::VerifyFull
            ) && tls.ca_path.is_empty()
            {
                err.add(
                    &p.field("tls").field("caPath"),
                    "must be set when tls.mode is verifyCa or verifyFull",
                );
            }
            if tls.cert_path.is_empty() != tls.key_path.is_empty() {
                err.add(
                    &p.field("tls").field("keyPath"),
                    "certPath and keyPath go together: set both or neither",
                );
            }
        }
        for (field, authn, allowed) in [
            (
                "dpProxy",
                &self.dp_server.authn.dp_proxy,
                ["dpToken", "none"],
            ),
            (
                "zoneProxy",
                &self.dp_server.authn.zone_proxy,
                ["zoneToken", "none"],
            ),
        ] {
            if !authn.kind.is_empty() && !allowed.contains(&authn.kind.as_str()) {
                err.add(
                    &Path::at("dpServer")
                        .field("authn")
                        .field(field)
                        .field("type"),
                    format!("{:?} is not one of {allowed:?}", authn.kind),
                );
            }
        }
        if self.access.kind != "static" {
            err.add(
                &Path::at("access").field("type"),
                format!("{:?} is not supported (only \"static\")", self.access.kind),
            );
        }
        let c = &self.connections;
        for (key, value) in [
            ("maxPerListener", c.max_per_listener),
            ("maxPerClient", c.max_per_client),
        ] {
            if value == 0 {
                err.add(&Path::at("connections").field(key), "must be at least 1");
            }
        }
        for (path, timeout) in [
            ("connections.tlsHandshakeTimeout", &c.tls_handshake_timeout),
            (
                "apiServer.readHeaderTimeout",
                &self.api_server.read_header_timeout,
            ),
            ("apiServer.readTimeout", &self.api_server.read_timeout),
            ("apiServer.idleTimeout", &self.api_server.idle_timeout),
            (
                "dpServer.readHeaderTimeout",
                &self.dp_server.read_header_timeout,
            ),
            ("dpServer.idleTimeout", &self.dp_server.idle_timeout),
        ] {
            if timeout.get().is_zero() {
                err.add(&Path::at(path), "must be longer than zero");
            }
        }
        if self.dns_server.domain.is_empty() {
            err.add(&Path::at("dnsServer").field("domain"), "must not be empty");
        }
        if self.dns_server.cidr.parse::<ipnet::Ipv4Net>().is_err() {
            err.add(
                &Path::at("dnsServer").field("CIDR"),
                format!("{:?} is not an IPv4 CIDR", self.dns_server.cidr),
            );
        }
        for (path, iface) in [
            ("apiServer.http.interface", &self.api_server.http.interface),
            (
                "apiServer.https.interface",
                &self.api_server.https.interface,
            ),
        ] {
            if iface.parse::<IpAddr>().is_err() {
                err.add(&Path::at(path), format!("{iface:?} is not an IP address"));
            }
        }
        if self.mode == Mode::Zone {
            validate_name(
                &Path::at("multizone").field("zone").field("name"),
                &self.multizone.zone.name,
                &mut err,
            );
        }
        if self.mode != Mode::Zone && !self.multizone.zone.global_address.is_empty() {
            err.add(
                &Path::at("multizone").field("zone").field("globalAddress"),
                "can only be set in zone mode",
            );
        }
        let mads = &self.monitoring_assignment_server;
        for (key, cert, tls_key) in [
            (
                "general",
                &self.general.tls_cert_file,
                &self.general.tls_key_file,
            ),
            (
                "monitoringAssignmentServer",
                &mads.tls_cert_file,
                &mads.tls_key_file,
            ),
        ] {
            if cert.is_empty() != tls_key.is_empty() {
                err.add(
                    &Path::at(key),
                    "tlsCertFile and tlsKeyFile must be set together",
                );
            }
        }
        let mut ports: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for (key, port) in self.served_ports() {
            if port == 0 {
                err.add(&Path::at(key), "must be a port between 1 and 65535");
            } else {
                ports.entry(port).or_default().push(key);
            }
        }
        for (port, keys) in ports.iter().filter(|(_, k)| k.len() > 1) {
            err.add(
                &Path::at(keys[1]),
                format!("port {port} is already used by {}", keys[0]),
            );
        }
        err.into_result()
    }

    /// Whether the HTTPS API is served: enabled, and not in the split layout (where its port
    /// is the bootstrap server's).
    pub fn serves_https_api(&self) -> bool {
        self.api_server.https.enabled && self.port_layout == PortLayout::Default
    }

    /// The TCP/UDP ports this mode listens on, with the key that sets each.
    pub fn served_ports(&self) -> Vec<(&'static str, u16)> {
        let mut v = vec![("diagnostics.serverPort", self.diagnostics.server_port)];
        if self.api_server.http.enabled {
            v.push(("apiServer.http.port", self.api_server.http.port));
        }
        if self.serves_https_api() {
            v.push(("apiServer.https.port", self.api_server.https.port));
        }
        if self.port_layout == PortLayout::Split {
            v.push(("adminServer.local.port", self.admin_server.local.port));
            v.push(("guiServer.port", self.gui_server.port));
        }
        if self.mode == Mode::Global {
            v.push((
                "multizone.global.kds.grpcPort",
                self.multizone.global.kds.grpc_port,
            ));
        } else {
            v.push(("dpServer.port", self.dp_server.port));
            if self.port_layout == PortLayout::Split {
                v.push(("sdsServer.grpcPort", self.sds_server.grpc_port));
                v.push(("bootstrapServer.port", self.bootstrap_server.port));
            }
            if self.monitoring_assignment_server.enabled {
                v.push((
                    "monitoringAssignmentServer.port",
                    self.monitoring_assignment_server.port,
                ));
            }
            // TCP as well as UDP.
            v.push(("dnsServer.port", self.dns_server.port));
        }
        let admission = &self.runtime.kubernetes.admission_server;
        if admission.enabled {
            v.push(("runtime.kubernetes.admissionServer.port", admission.port));
        }
        v
    }
}

#[cfg(test)]
mod tests;
