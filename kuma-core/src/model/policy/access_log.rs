//! MeshAccessLog: where and how proxies write access logs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    MatchedRule, TargetRef, TargetRefKind, TargetRefKind::*, TargetRefRules, TargetedConf, kinds,
    require_sections, validate_entries, validate_rule_matches, validate_top,
};
use crate::model::common::Tags;
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshAccessLog`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshAccessLogSpec {
    /// Proxies the policy applies to.
    pub target_ref: Option<TargetRef>,
    /// Logging per destination.
    pub to: Option<Vec<TargetedConf<AccessLogConf>>>,
    /// Logging per source.
    pub from: Option<Vec<TargetedConf<AccessLogConf>>>,
    /// Match-based inbound logging.
    pub rules: Option<Vec<MatchedRule<AccessLogConf>>>,
}

/// Access-log settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogConf {
    /// Where logs go.
    pub backends: Option<Vec<AccessLogBackend>>,
}

/// An access-log sink.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogBackend {
    /// `Tcp`, `File` or `OpenTelemetry`.
    #[serde(rename = "type")]
    pub kind: AccessLogBackendType,
    /// TCP sink.
    pub tcp: Option<TcpBackend>,
    /// File sink.
    pub file: Option<FileBackend>,
    /// OpenTelemetry collector.
    pub open_telemetry: Option<OtelBackend>,
}

/// Access-log sink kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogBackendType {
    /// A TCP collector.
    Tcp,
    /// A file on the proxy's host.
    File,
    /// An OpenTelemetry collector.
    OpenTelemetry,
}

/// A TCP sink.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpBackend {
    /// Line format.
    pub format: Option<LogFormat>,
    /// `host:port` of the collector.
    pub address: String,
}

/// A file sink.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileBackend {
    /// Line format.
    pub format: Option<LogFormat>,
    /// File path.
    pub path: String,
}

/// An OpenTelemetry sink.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelBackend {
    /// Log record attributes.
    pub attributes: Option<Vec<KeyValue>>,
    /// Log record body (any JSON).
    pub body: Option<Value>,
    /// Collector `host:port`.
    #[serde(default)]
    pub endpoint: String,
    /// A `MeshOpenTelemetryBackend` to use instead of `endpoint`.
    pub backend_ref: Option<BackendResourceRef>,
}

/// A reference to a backend resource by labels.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendResourceRef {
    /// Kind (`MeshOpenTelemetryBackend`).
    pub kind: String,
    /// Labels selecting the resource.
    pub labels: Option<Tags>,
}

/// A log line format.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormat {
    /// `Plain` or `Json`.
    #[serde(rename = "type")]
    pub kind: LogFormatType,
    /// Envoy format string.
    pub plain: Option<String>,
    /// JSON fields.
    pub json: Option<Vec<KeyValue>>,
    /// Leave out empty values.
    #[serde(default)]
    pub omit_empty_values: bool,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormatType {
    /// Text.
    Plain,
    /// JSON object.
    Json,
}

/// A key and a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value (may hold Envoy `%COMMAND%` operators).
    pub value: String,
}

fn validate_format(p: &Path, f: &LogFormat, err: &mut ValidationError) {
    match f.kind {
        LogFormatType::Plain => match &f.plain {
            None => err.add(&p.field("plain"), "must be defined"),
            Some(s) if s.is_empty() => err.add(&p.field("plain"), "must not be empty"),
            Some(_) => {}
        },
        LogFormatType::Json => match &f.json {
            None => err.add(&p.field("json"), "must be defined"),
            Some(j) if j.is_empty() => err.add(&p.field("json"), "must not be empty"),
            Some(j) => {
                for (i, kv) in j.iter().enumerate() {
                    if kv.key.is_empty() {
                        err.add(
                            &p.field("json").index(i).field("key"),
                            "key cannot be empty",
                        );
                    }
                    if kv.value.is_empty() {
                        err.add(
                            &p.field("json").index(i).field("value"),
                            "value cannot be empty",
                        );
                    }
                }
            }
        },
    }
}

/// `host:port` or a URL with a host (what Kuma's address check accepts in practice).
fn is_address(a: &str) -> bool {
    let rest = a.split_once("://").map_or(a, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    !host_port.is_empty() && !host_port.contains(char::is_whitespace)
}

fn validate_otel_attribute_key(p: &Path, key: &str, err: &mut ValidationError) {
    let valid = key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
        && !key.contains("..")
        && !key.contains("__")
        && !key.contains("._")
        && !key.contains("_.")
        && !key.starts_with("otel.");
    if key.is_empty() {
        err.add(p, "must be defined");
    } else if !valid {
        err.add(
            p,
            "must consist of lowercase letters, digits, '_' and '.', start with a letter, end with a letter or digit and not use the 'otel.' prefix",
        );
    }
}

impl AccessLogConf {
    fn validate(&self, p: &Path, err: &mut ValidationError) {
        let Some(backends) = &self.backends else {
            err.add(&p.field("backends"), "must be defined");
            return;
        };
        for (i, b) in backends.iter().enumerate() {
            let bp = p.field("backends").index(i);
            match b.kind {
                AccessLogBackendType::File => match &b.file {
                    None => err.add(&bp.field("file"), "must be defined"),
                    Some(f) => {
                        if let Some(fmt) = &f.format {
                            validate_format(&bp.field("file").field("format"), fmt, err);
                        }
                        if f.path.is_empty() || f.path.contains('\0') {
                            err.add(
                                &bp.field("file").field("path"),
                                "file backend requires a valid path",
                            );
                        }
                    }
                },
                AccessLogBackendType::Tcp => match &b.tcp {
                    None => err.add(&bp.field("tcp"), "must be defined"),
                    Some(t) => {
                        if let Some(fmt) = &t.format {
                            validate_format(&bp.field("tcp").field("format"), fmt, err);
                        }
                        if !is_address(&t.address) {
                            err.add(
                                &bp.field("tcp").field("address"),
                                "tcp backend requires valid address",
                            );
                        }
                    }
                },
                AccessLogBackendType::OpenTelemetry => match &b.open_telemetry {
                    None => err.add(&bp.field("openTelemetry"), "must be defined"),
                    Some(o) => {
                        let op = bp.field("openTelemetry");
                        match (&o.backend_ref, o.endpoint.is_empty()) {
                            (Some(_), false) => {
                                err.add(&op, "endpoint and backendRef are mutually exclusive")
                            }
                            (None, true) => err.add(&op.field("endpoint"), "must be defined"),
                            _ => {}
                        }
                        for (ai, a) in o.attributes.iter().flatten().enumerate() {
                            validate_otel_attribute_key(
                                &op.field("attributes").index(ai).field("key"),
                                &a.key,
                                err,
                            );
                        }
                    }
                },
            }
        }
    }
}

impl MeshAccessLogSpec {
    /// Checks the policy.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let spec = Path::at("spec");
        let n = |v: Option<usize>| v.unwrap_or(0);
        let (n_to, n_from, n_rules) = (
            n(self.to.as_ref().map(Vec::len)),
            n(self.from.as_ref().map(Vec::len)),
            n(self.rules.as_ref().map(Vec::len)),
        );
        if n_rules > 0 && (n_to > 0 || n_from > 0) {
            err.add(
                &spec,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        require_sections(
            &[
                ("from", n_from > 0),
                ("to", n_to > 0),
                ("rules", n_rules > 0),
            ],
            &mut err,
        );
        let top = TargetRefRules {
            kinds: kinds::TOP_NO_ROUTE,
            gateway_listener_tags: true,
            inbound_policy: n_from + n_rules > 0,
            top_level: true,
        };
        let top_kind = validate_top(self.target_ref.as_ref(), top, &mut err);
        if let Some(from) = &self.from {
            let rules = TargetRefRules {
                kinds: kinds::FROM_MESH,
                ..Default::default()
            };
            validate_entries("from", from, rules, &mut err, |p, e, err| {
                e.default.validate(p, err)
            });
        }
        if let Some(rules) = &self.rules {
            validate_rule_matches(rules, &mut err, |p, r, err| r.default.validate(p, err));
        }
        if let Some(to) = &self.to {
            let kinds: &[TargetRefKind] = if top_kind == MeshGateway {
                &[Mesh]
            } else {
                &[
                    Mesh,
                    MeshService,
                    MeshExternalService,
                    MeshMultiZoneService,
                    MeshHTTPRoute,
                ]
            };
            validate_entries(
                "to",
                to,
                TargetRefRules {
                    kinds,
                    ..Default::default()
                },
                &mut err,
                |p, e, err| e.default.validate(p, err),
            );
        }
        err
    }
}
