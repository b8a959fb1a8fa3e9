//! The Mesh resource: mTLS backends, metrics, logging, tracing, networking, routing, constraints.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{DataSource, TagRules, Tags, validate_port, validate_tags};
use crate::duration::{Duration, parse_mesh_duration};
use crate::validation::{Path, ValidationContext, ValidationError};

/// The spec of a `Mesh`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// Mutual TLS between proxies.
    pub mtls: Option<Mtls>,
    /// Tracing backends.
    pub tracing: Option<Tracing>,
    /// Access-log backends.
    pub logging: Option<Logging>,
    /// Metrics backends.
    pub metrics: Option<Metrics>,
    /// Outbound passthrough.
    pub networking: Option<MeshNetworking>,
    /// Routing options.
    pub routing: Option<Routing>,
    /// Which data planes may join.
    pub constraints: Option<Constraints>,
    /// Default policies not to create with the mesh (`["*"]` for none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_creating_initial_policies: Vec<String>,
    /// MeshService generation mode.
    pub mesh_services: Option<MeshServices>,
}

/// `mtls` of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    /// Name of the backend in use; mTLS is off when unset.
    pub enabled_backend: Option<String>,
    /// Certificate authorities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<CaBackend>,
    /// Skip validation of provided CA material.
    pub skip_validation: Option<bool>,
}

/// A certificate authority backend of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaBackend {
    /// Backend name.
    #[serde(default)]
    pub name: String,
    /// `builtin` or `provided`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Workload certificate settings.
    pub dp_cert: Option<DpCert>,
    /// Backend-specific configuration (see [`BuiltinCaConf`], [`ProvidedCaConf`]).
    pub conf: Option<Value>,
    /// `STRICT` (default) or `PERMISSIVE`.
    pub mode: Option<MtlsMode>,
    /// Root chain settings.
    pub root_chain: Option<RootChain>,
}

/// mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Only mTLS traffic is accepted.
    #[serde(rename = "STRICT")]
    Strict,
    /// Plaintext is accepted too.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

/// Workload certificate settings of a CA backend.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCert {
    /// Rotation settings.
    pub rotation: Option<Rotation>,
    /// Timeout of a certificate request.
    pub request_timeout: Option<Duration>,
}

/// Certificate rotation.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// Lifetime of a workload certificate (`24h`).
    pub expiration: Option<String>,
}

/// Root chain settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootChain {
    /// Timeout of a root chain request.
    pub request_timeout: Option<Duration>,
}

/// `conf` of a `builtin` CA backend.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltinCaConf {
    /// The CA certificate.
    pub ca_cert: Option<CaCertConf>,
}

/// `caCert` of a builtin CA.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCertConf {
    /// RSA key size (Kuma: 2048).
    #[serde(rename = "RSAbits")]
    pub rsa_bits: Option<u32>,
    /// CA lifetime (Kuma: `10y`).
    pub expiration: Option<String>,
}

/// `conf` of a `provided` CA backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidedCaConf {
    /// The CA certificate (PEM).
    pub cert: Option<DataSource>,
    /// The CA key (PEM).
    pub key: Option<DataSource>,
}

/// Outbound networking of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshNetworking {
    /// Outbound settings.
    pub outbound: Option<MeshOutbound>,
}

/// `networking.outbound` of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshOutbound {
    /// Whether unknown destinations pass through (default true).
    pub passthrough: Option<bool>,
}

/// Routing options of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Routing {
    /// Prefer endpoints in the local zone.
    pub locality_aware_load_balancing: Option<bool>,
    /// Route cross-zone and external traffic through zone egress.
    pub zone_egress: Option<bool>,
    /// Forbid MeshExternalService access unless permitted.
    pub default_forbid_mesh_external_service_access: Option<bool>,
}

/// Data plane constraints.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constraints {
    /// Constraints on Dataplane tags.
    pub dataplane_proxy: Option<DataplaneProxyConstraints>,
}

/// Requirements and restrictions on Dataplane inbound tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneProxyConstraints {
    /// A Dataplane must match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<TagRule>,
    /// A Dataplane must match none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restrictions: Vec<TagRule>,
}

/// A tag selector in constraints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagRule {
    /// Tags (values may be `*`).
    #[serde(default)]
    pub tags: Tags,
}

/// MeshService generation.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServices {
    /// The mode.
    pub mode: Option<MeshServicesMode>,
}

/// MeshService generation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshServicesMode {
    /// No MeshServices.
    Disabled,
    /// MeshServices everywhere.
    Everywhere,
    /// Only for reachable backends.
    ReachableBackends,
    /// MeshServices only (no kuma.io/service).
    Exclusive,
}

/// `metrics` of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// Name of the backend in use.
    pub enabled_backend: Option<String>,
    /// Backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<MetricsBackend>,
}

/// A metrics backend (only `prometheus` exists).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsBackend {
    /// Backend name.
    pub name: Option<String>,
    /// `prometheus`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// See [`PrometheusConf`].
    pub conf: Option<Value>,
}

/// `conf` of a prometheus metrics backend.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusConf {
    /// Port of the metrics listener (Kuma: 5670).
    pub port: Option<u32>,
    /// Path of the metrics endpoint (Kuma: `/metrics`).
    pub path: Option<String>,
    /// Extra labels.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Serve metrics without mTLS.
    #[serde(rename = "skipMTLS")]
    pub skip_mtls: Option<bool>,
    /// Application metrics merged into the proxy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<PrometheusAggregate>,
    /// Envoy stats filtering.
    pub envoy: Option<PrometheusEnvoy>,
    /// TLS of the metrics listener.
    pub tls: Option<PrometheusTls>,
}

/// An application endpoint aggregated into the proxy's metrics.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusAggregate {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Port.
    #[serde(default)]
    pub port: u32,
    /// Path.
    pub path: Option<String>,
    /// Enabled.
    pub enabled: Option<bool>,
    /// Address.
    pub address: Option<String>,
}

/// Envoy stats settings of the metrics backend.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusEnvoy {
    /// Regex of stats to keep.
    pub filter_regex: Option<String>,
    /// Only stats that were updated.
    pub used_only: Option<bool>,
}

/// TLS of the metrics listener.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusTls {
    /// `activeMTLSBackend`, `providedTLS` or `disabled`.
    pub mode: Option<String>,
}

/// `logging` of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// Backend used when a policy names none.
    pub default_backend: Option<String>,
    /// Backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<LoggingBackend>,
}

/// An access-log backend (`file` or `tcp`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingBackend {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Log line format.
    pub format: Option<String>,
    /// `file` or `tcp`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `{path}` for file, `{address}` for tcp.
    pub conf: Option<Value>,
}

/// `tracing` of a Mesh.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Backend used when a policy names none.
    pub default_backend: Option<String>,
    /// Backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<TracingBackend>,
}

/// A tracing backend (`zipkin` or `datadog`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingBackend {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Percentage of traced requests.
    pub sampling: Option<f64>,
    /// `zipkin` or `datadog`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Backend configuration.
    pub conf: Option<Value>,
}

fn decode_conf<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    conf: Option<&Value>,
    err: &mut ValidationError,
) -> Option<T> {
    match conf {
        None | Some(Value::Null) => Some(T::default()),
        Some(v) => match crate::resource::decode_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                err.extend_at(path, e);
                None
            }
        },
    }
}

impl CaBackend {
    /// The typed configuration of a `builtin` backend.
    pub fn builtin_conf(&self) -> Result<BuiltinCaConf, ValidationError> {
        let mut err = ValidationError::new();
        let conf = decode_conf(&Path::at("conf"), self.conf.as_ref(), &mut err);
        conf.ok_or(err)
    }

    /// The typed configuration of a `provided` backend.
    pub fn provided_conf(&self) -> Result<ProvidedCaConf, ValidationError> {
        let mut err = ValidationError::new();
        let conf = decode_conf(&Path::at("conf"), self.conf.as_ref(), &mut err);
        conf.ok_or(err)
    }

    /// The mTLS mode (STRICT unless set).
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or(MtlsMode::Strict)
    }
}

impl MetricsBackend {
    /// The typed configuration of a `prometheus` backend.
    pub fn prometheus_conf(&self) -> Result<PrometheusConf, ValidationError> {
        let mut err = ValidationError::new();
        let conf = decode_conf(&Path::at("conf"), self.conf.as_ref(), &mut err);
        conf.ok_or(err)
    }

    fn validate_common(&self, path: &Path, err: &mut ValidationError) {
        if self.kind != "prometheus" {
            err.add(
                &path.field("type"),
                "unknown backend type. Available backends: \"prometheus\"",
            );
            return;
        }
        let cp = path.field("conf");
        if let Some(conf) = decode_conf::<PrometheusConf>(&cp, self.conf.as_ref(), err) {
            if let Some(port) = conf.port {
                validate_port(&cp.field("port"), port, err);
            }
            if let Some(p) = &conf.path
                && !p.starts_with('/')
            {
                err.add(&cp.field("path"), "must be an absolute path");
            }
            if let Some(mode) = conf.tls.as_ref().and_then(|t| t.mode.as_deref())
                && !["activeMTLSBackend", "providedTLS", "disabled"].contains(&mode)
            {
                err.add(
                    &cp.field("tls").field("mode"),
                    "must be one of activeMTLSBackend, providedTLS, disabled",
                );
            }
            for (i, a) in conf.aggregate.iter().enumerate() {
                let ap = cp.field("aggregate").index(i);
                if a.name.is_empty() {
                    err.add(&ap.field("name"), "cannot be empty");
                }
                validate_port(&ap.field("port"), a.port, err);
            }
        }
    }

    /// Checks a Dataplane's metrics override.
    pub fn validate_for_dataplane(&self, path: &Path, err: &mut ValidationError) {
        self.validate_common(path, err);
    }
}

fn validate_backend_names<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a str>,
    err: &mut ValidationError,
) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for (i, n) in names.enumerate() {
        let p = path.index(i).field("name");
        if n.is_empty() {
            err.add(&p, "cannot be empty");
        } else if seen.contains(&n) {
            err.add(
                &p,
                format!("{n:?} name is already used for another backend"),
            );
        }
        seen.push(n);
    }
    seen
}

/// Checks a `{backends, <selected>}` section: unique names, an existing selection. Returns the
/// path of its `backends` list.
fn validate_backend_section<'a>(
    section: &str,
    selected_field: &str,
    names: impl Iterator<Item = &'a str>,
    selected: Option<&str>,
    err: &mut ValidationError,
) -> Path {
    let sp = Path::at(section);
    let bp = sp.field("backends");
    let names = validate_backend_names(&bp, names, err);
    validate_enabled_backend(&sp.field(selected_field), selected, &names, err);
    bp
}

fn validate_enabled_backend(
    path: &Path,
    enabled: Option<&str>,
    names: &[&str],
    err: &mut ValidationError,
) {
    if let Some(e) = enabled
        && !e.is_empty()
        && !names.contains(&e)
    {
        err.add(path, "has to be set to one of the backends in the mesh");
    }
}

/// Where a proxy serves its Prometheus metrics: the mesh's enabled `prometheus` backend with
/// the Dataplane's own `prometheus` settings laid over it (see
/// [`MeshSpec::prometheus_endpoint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusEndpoint {
    /// The name of the mesh's backend.
    pub backend: String,
    /// The merged configuration, defaults not applied (see the methods).
    pub conf: PrometheusConf,
}

impl PrometheusEndpoint {
    /// Kuma's default metrics port.
    pub const DEFAULT_PORT: u32 = 5670;
    /// Kuma's default metrics path.
    pub const DEFAULT_PATH: &str = "/metrics";

    /// The port of the metrics listener (5670 unless set).
    pub fn port(&self) -> u32 {
        self.conf.port.unwrap_or(Self::DEFAULT_PORT)
    }

    /// The path metrics are served on (`/metrics` unless set).
    pub fn path(&self) -> &str {
        self.conf.path.as_deref().unwrap_or(Self::DEFAULT_PATH)
    }

    /// `https` when the listener serves a provided certificate, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.conf.tls.as_ref().and_then(|t| t.mode.as_deref()) {
            Some("providedTLS") => "https",
            _ => "http",
        }
    }
}

impl PrometheusConf {
    /// Lays `over` on this configuration as Kuma merges a Dataplane's metrics settings into
    /// the mesh's: scalars set in `over` win, tags merge, aggregate entries replace those of
    /// the same name.
    fn merged(mut self, over: PrometheusConf) -> PrometheusConf {
        if over.port.is_some_and(|p| p != 0) {
            self.port = over.port;
        }
        if over.path.as_deref().is_some_and(|p| !p.is_empty()) {
            self.path = over.path;
        }
        self.tags.extend(over.tags);
        if over.skip_mtls.is_some() {
            self.skip_mtls = over.skip_mtls;
        }
        for a in over.aggregate {
            match self.aggregate.iter_mut().find(|m| m.name == a.name) {
                Some(m) => *m = a,
                None => self.aggregate.push(a),
            }
        }
        if let Some(envoy) = over.envoy {
            let mine = self.envoy.get_or_insert_with(Default::default);
            if envoy.filter_regex.is_some() {
                mine.filter_regex = envoy.filter_regex;
            }
            if envoy.used_only.is_some() {
                mine.used_only = envoy.used_only;
            }
        }
        if let Some(tls) = over.tls
            && tls.mode.is_some()
        {
            self.tls = Some(tls);
        }
        self
    }
}

impl MeshSpec {
    /// The Prometheus endpoint of a proxy whose Dataplane has the `own` metrics settings:
    /// none unless the mesh enables a `prometheus` backend (as in Kuma, a Dataplane cannot
    /// turn metrics on by itself); the Dataplane's `prometheus` settings override the mesh's.
    /// An error names the configuration that does not decode.
    pub fn prometheus_endpoint(
        &self,
        own: Option<&MetricsBackend>,
    ) -> Result<Option<PrometheusEndpoint>, ValidationError> {
        let Some(metrics) = self.metrics.as_ref() else {
            return Ok(None);
        };
        let Some(enabled) = metrics.enabled_backend.as_deref().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let Some(backend) = metrics
            .backends
            .iter()
            .find(|b| b.name.as_deref() == Some(enabled) && b.kind == "prometheus")
        else {
            return Ok(None);
        };
        let mut conf = backend.prometheus_conf()?;
        if let Some(own) = own.filter(|o| o.kind == "prometheus") {
            conf = conf.merged(own.prometheus_conf()?);
        }
        Ok(Some(PrometheusEndpoint {
            backend: enabled.to_string(),
            conf,
        }))
    }

    /// The enabled mTLS backend, if mTLS is on.
    pub fn enabled_ca_backend(&self) -> Option<&CaBackend> {
        let mtls = self.mtls.as_ref()?;
        let name = mtls.enabled_backend.as_deref().filter(|n| !n.is_empty())?;
        mtls.backends.iter().find(|b| b.name == name)
    }

    /// True when mTLS is enabled.
    pub fn mtls_enabled(&self) -> bool {
        self.mtls
            .as_ref()
            .and_then(|m| m.enabled_backend.as_deref())
            .is_some_and(|n| !n.is_empty())
    }

    /// The enabled Prometheus backend, if any.
    pub fn enabled_metrics_backend(&self) -> Option<&MetricsBackend> {
        let m = self.metrics.as_ref()?;
        let name = m.enabled_backend.as_deref().filter(|n| !n.is_empty())?;
        m.backends.iter().find(|b| b.name.as_deref() == Some(name))
    }

    /// Checks the Mesh the way Kuma does; paths are relative to the resource root.
    pub fn validate(&self) -> ValidationError {
        self.validate_in(&ValidationContext::default())
    }

    /// [`MeshSpec::validate`], also accepting the CA backend types `context` adds.
    pub fn validate_in(&self, context: &ValidationContext) -> ValidationError {
        let mut err = ValidationError::new();
        if let Some(mtls) = &self.mtls {
            let bp = validate_backend_section(
                "mtls",
                "enabledBackend",
                mtls.backends.iter().map(|b| b.name.as_str()),
                mtls.enabled_backend.as_deref(),
                &mut err,
            );
            for (i, b) in mtls.backends.iter().enumerate() {
                validate_ca_backend(&bp.index(i), b, context, &mut err);
            }
        }
        // The zone egress routes by the SNI of mesh mTLS: without it nothing could pass.
        if self.routing.as_ref().and_then(|r| r.zone_egress) == Some(true) && !self.mtls_enabled() {
            err.add(
                &Path::at("routing").field("zoneEgress"),
                "requires mTLS (mtls.enabledBackend): the zone egress tells destinations apart by the SNI of mesh mTLS",
            );
        }
        if let Some(metrics) = &self.metrics {
            let bp = validate_backend_section(
                "metrics",
                "enabledBackend",
                metrics
                    .backends
                    .iter()
                    .map(|b| b.name.as_deref().unwrap_or("")),
                metrics.enabled_backend.as_deref(),
                &mut err,
            );
            for (i, b) in metrics.backends.iter().enumerate() {
                b.validate_common(&bp.index(i), &mut err);
            }
        }
        if let Some(logging) = &self.logging {
            let bp = validate_backend_section(
                "logging",
                "defaultBackend",
                logging.backends.iter().map(|b| b.name.as_str()),
                logging.default_backend.as_deref(),
                &mut err,
            );
            for (i, b) in logging.backends.iter().enumerate() {
                validate_logging_backend(&bp.index(i), b, &mut err);
            }
        }
        if let Some(tracing) = &self.tracing {
            let bp = validate_backend_section(
                "tracing",
                "defaultBackend",
                tracing.backends.iter().map(|b| b.name.as_str()),
                tracing.default_backend.as_deref(),
                &mut err,
            );
            for (i, b) in tracing.backends.iter().enumerate() {
                let p = bp.index(i);
                if !["zipkin", "datadog"].contains(&b.kind.as_str()) {
                    err.add(
                        &p.field("type"),
                        "unknown backend type. Available backends: \"zipkin\", \"datadog\"",
                    );
                }
                if let Some(s) = b.sampling
                    && !(0.0..=100.0).contains(&s)
                {
                    err.add(&p.field("sampling"), "has to be in [0.0 - 100.0] range");
                }
            }
        }
        if let Some(dpc) = self
            .constraints
            .as_ref()
            .and_then(|c| c.dataplane_proxy.as_ref())
        {
            let cp = Path::at("constraints").field("dataplaneProxy");
            for (name, rules) in [
                ("requirements", &dpc.requirements),
                ("restrictions", &dpc.restrictions),
            ] {
                for (i, r) in rules.iter().enumerate() {
                    validate_tags(
                        &cp.field(name).index(i).field("tags"),
                        &r.tags,
                        TagRules {
                            selector: true,
                            ..Default::default()
                        },
                        &mut err,
                    );
                }
            }
        }
        err
    }

    /// Checks a change from `old` to `self`: while mTLS is on, the enabled backend may not be
    /// switched to another one (Kuma has no rotation between CAs).
    pub fn validate_update(&self, old: &MeshSpec) -> ValidationError {
        let mut err = ValidationError::new();
        let old_enabled = old
            .mtls
            .as_ref()
            .and_then(|m| m.enabled_backend.as_deref())
            .filter(|n| !n.is_empty());
        let new_enabled = self
            .mtls
            .as_ref()
            .and_then(|m| m.enabled_backend.as_deref())
            .filter(|n| !n.is_empty());
        if let (Some(o), Some(n)) = (old_enabled, new_enabled)
            && o != n
        {
            err.add(
                &Path::at("mtls").field("enabledBackend"),
                "changing mTLS backend is forbidden. Disable mTLS first and then enable the new backend",
            );
        }
        err
    }
}

fn validate_ca_backend(
    path: &Path,
    b: &CaBackend,
    context: &ValidationContext,
    err: &mut ValidationError,
) {
    if let Some(exp) = b
        .dp_cert
        .as_ref()
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| r.expiration.as_deref())
        && let Err(e) = parse_mesh_duration(exp)
    {
        err.add(
            &path.field("dpCert").field("rotation").field("expiration"),
            e,
        );
    }
    let cp = path.field("conf");
    match b.kind.as_str() {
        "builtin" => {
            if let Some(conf) = decode_conf::<BuiltinCaConf>(&cp, b.conf.as_ref(), err)
                && let Some(ca) = conf.ca_cert
            {
                if let Some(exp) = ca.expiration.as_deref()
                    && let Err(e) = parse_mesh_duration(exp)
                {
                    err.add(&cp.field("caCert").field("expiration"), e);
                }
                if let Some(bits) = ca.rsa_bits
                    && !(2048..=8192).contains(&bits)
                {
                    err.add(
                        &cp.field("caCert").field("RSAbits"),
                        "must be between 2048 and 8192",
                    );
                }
            }
        }
        "provided" => {
            if let Some(conf) = decode_conf::<ProvidedCaConf>(&cp, b.conf.as_ref(), err) {
                for (name, ds) in [("cert", &conf.cert), ("key", &conf.key)] {
                    match ds {
                        Some(ds) => ds.validate(&cp.field(name), err),
                        None => err.add(&cp.field(name), "has to be defined"),
                    }
                }
            }
        }
        "" => err.add(&path.field("type"), "cannot be empty"),
        other => match context.ca_backend(other) {
            Some(check) => check(&cp, b.conf.as_ref(), err),
            None => {
                let available: Vec<String> = ["builtin", "provided"]
                    .into_iter()
                    .chain(context.ca_backend_types())
                    .map(|t| format!("{t:?}"))
                    .collect();
                err.add(
                    &path.field("type"),
                    format!(
                        "unknown backend type {other:?}. Available backends: {}",
                        available.join(", ")
                    ),
                )
            }
        },
    }
}

fn validate_logging_backend(path: &Path, b: &LoggingBackend, err: &mut ValidationError) {
    let conf = b.conf.as_ref().and_then(Value::as_object);
    match b.kind.as_str() {
        "file" => {
            if conf
                .and_then(|c| c.get("path"))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                err.add(&path.field("conf").field("path"), "cannot be empty");
            }
        }
        "tcp" => match conf.and_then(|c| c.get("address")).and_then(Value::as_str) {
            Some(a)
                if a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {}
            _ => err.add(
                &path.field("conf").field("address"),
                "has to be in format of HOST:PORT",
            ),
        },
        _ => err.add(
            &path.field("type"),
            "unknown backend type. Available backends: \"tcp\", \"file\"",
        ),
    }
}
