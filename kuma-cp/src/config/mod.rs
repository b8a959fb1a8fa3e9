//! The control plane's configuration: the sections of every crate it assembles, composed into
//! one [`Config`] that Kuma's YAML file and `KUMA_*` variables load ([`Config::load`]).
//!
//! Each crate owns its section: `store` is [`kuma_store::config`]'s, `dnsServer`
//! [`kuma_dns::config`]'s, `apiServer` and `access` [`kuma_api::config`]'s, `mtls`
//! [`kuma_ca::config`]'s, `xdsServer`, `bootstrapServer`, `monitoringAssignmentServer` and
//! `metrics` [`kuma_xds::config`]'s. The sections defined here are the assembly's: the mode,
//! the listeners, certificates and limits, diagnostics, multizone and defaults. Rules across
//! sections (distinct ports, zone settings that match the mode) are [`Config::validate`]'s.
//!
//! The commented file [`DEFAULTS_YAML`] lists every key with its default and variable; a test
//! proves it equal to [`Config::default`].

use std::collections::BTreeMap;

use kuma_api::config::{AccessConfig, ApiServerConfig};
use kuma_ca::config::MtlsConfig;
use kuma_core::duration::Duration;
use kuma_core::model::common::validate_name;
use kuma_core::validation::{Path, ValidationError};
use kuma_dns::config::DnsServerConfig;
use kuma_store::config::StoreConfig;
use kuma_xds::config::{BootstrapServerConfig, MadsConfig, MetricsConfig, XdsServerConfig};
use serde::{Deserialize, Serialize};

pub use kuma_core::config::{ConfigError, env_name};

/// The commented defaults file, equal to [`Config::default`].
pub const DEFAULTS_YAML: &str = include_str!("kuma-cp.defaults.yaml");

fn d(text: &str) -> Duration {
    Duration::literal(text)
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

/// Which ports the control plane's services use (not a Kuma key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortLayout {
    /// Current Kuma: the dp-server port serves ADS, SDS and `/bootstrap` over one TLS port,
    /// and the API port serves the API, the GUI and dataplane tokens.
    Default,
    /// Kuma 0.6/0.7: SDS ([`SdsServerConfig`]), the admin server ([`AdminServerConfig`]),
    /// the plain-HTTP bootstrap server ([`BootstrapServerConfig::port`](kuma_xds::config::BootstrapServerConfig::port)) and the GUI
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
    /// Kuma's experimental switches (those implemented).
    pub experimental: ExperimentalConfig,
}

/// `experimental`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExperimentalConfig {
    /// Under mesh mTLS, transparent proxies listing no `reachableServices` get outbounds only
    /// for the services whose MeshTrafficPermissions can admit them (a service no permission
    /// protects admits nobody). Kuma also trims meshes without mTLS; here they keep every
    /// outbound, since nothing is refused there.
    pub auto_reachable_services: bool,
    /// Prefixes of the tag keys zone ingresses list in `availableServices` (`kuma.io/service`
    /// always); empty: every tag.
    pub ingress_tag_filters: Vec<String>,
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
            experimental: ExperimentalConfig::default(),
        }
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
    /// How often zones' insights are written at most.
    pub zone_insight_flush_interval: Duration,
    /// Marks silent zones offline.
    pub zone_health_check: ZoneHealthCheckConfig,
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
            zone_insight_flush_interval: d("10s"),
            zone_health_check: ZoneHealthCheckConfig::default(),
        }
    }
}

/// `multizone.global.kds.zoneHealthCheck`: off while `timeout` is zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ZoneHealthCheckConfig {
    /// How often zones ping global.
    pub poll_interval: Duration,
    /// How long a zone may be silent before its streams are closed (offline).
    pub timeout: Duration,
}

impl Default for ZoneHealthCheckConfig {
    fn default() -> Self {
        ZoneHealthCheckConfig {
            poll_interval: d("0s"),
            timeout: d("0s"),
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
    /// The least time between two updates of the zone ingresses' `availableServices` (they
    /// are updated when Dataplanes change, not polled).
    pub ingress_update_interval: Duration,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            name: "default".into(),
            global_address: String::new(),
            kds: ZoneKdsConfig::default(),
            ingress_update_interval: d("1s"),
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
    /// Largest message.
    pub max_msg_size: u32,
}

impl Default for ZoneKdsConfig {
    fn default() -> Self {
        ZoneKdsConfig {
            refresh_interval: d("1s"),
            root_ca_file: String::new(),
            tls_skip_verify: false,
            max_msg_size: 10_485_760,
        }
    }
}

impl Config {
    /// Defaults, then `file` (YAML) if given, then the variables `env` returns.
    ///
    /// Pass `|k| std::env::var(k).ok()` for the process environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let cfg: Config = kuma_core::config::load(file, env)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Parses a YAML config; absent keys keep their defaults, unknown keys are errors.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        kuma_core::config::from_yaml(text)
    }

    /// Checks each section's rules (a usable store and DNS range, valid API settings, ...) and
    /// the rules across sections: supported environment, distinct ports, zone settings
    /// matching the mode.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        if self.environment != Environment::Universal {
            err.add(&Path::at("environment"), "only \"universal\" is supported");
        }
        // Each section's own rules.
        self.store.validate(&Path::at("store"), &mut err);
        self.api_server.validate(&Path::at("apiServer"), &mut err);
        self.access.validate(&Path::at("access"), &mut err);
        self.dns_server.validate(&Path::at("dnsServer"), &mut err);
        self.monitoring_assignment_server
            .validate(&Path::at("monitoringAssignmentServer"), &mut err);
        // The assembly's sections and the rules across sections.
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
                "dpServer.readHeaderTimeout",
                &self.dp_server.read_header_timeout,
            ),
            ("dpServer.idleTimeout", &self.dp_server.idle_timeout),
        ] {
            if timeout.get().is_zero() {
                err.add(&Path::at(path), "must be longer than zero");
            }
        }
        if self.mode == Mode::Zone {
            validate_name(
                &Path::at("multizone").field("zone").field("name"),
                &self.multizone.zone.name,
                &mut err,
            );
        }
        let hc = &self.multizone.global.kds.zone_health_check;
        if !hc.timeout.get().is_zero() && hc.poll_interval.get().is_zero() {
            err.add(
                &Path::at("multizone.global.kds.zoneHealthCheck.pollInterval"),
                "must be longer than zero when the timeout is set",
            );
        }
        for (key, size) in [
            (
                "multizone.global.kds.maxMsgSize",
                self.multizone.global.kds.max_msg_size,
            ),
            (
                "multizone.zone.kds.maxMsgSize",
                self.multizone.zone.kds.max_msg_size,
            ),
        ] {
            if size < 1024 {
                err.add(&Path::at(key), "must be at least 1024 bytes");
            }
        }
        if self.mode != Mode::Zone && !self.multizone.zone.global_address.is_empty() {
            err.add(
                &Path::at("multizone").field("zone").field("globalAddress"),
                "can only be set in zone mode",
            );
        }
        if self.general.tls_cert_file.is_empty() != self.general.tls_key_file.is_empty() {
            err.add(
                &Path::at("general"),
                "tlsCertFile and tlsKeyFile must be set together",
            );
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

    /// Whether this is a zone connected to global (`multizone.zone.globalAddress` is set).
    pub fn is_federated_zone(&self) -> bool {
        self.mode == Mode::Zone && !self.multizone.zone.global_address.is_empty()
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
