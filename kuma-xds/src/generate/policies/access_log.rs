//! MeshAccessLog: access logs of outbound (`to`) and inbound (`from`/`rules`) traffic.
//!
//! File backends become Envoy file access logs on the listener's HTTP connection manager or
//! TCP proxy, in Kuma's default plain formats unless a `plain` or `json` format is given.
//! Kuma's placeholders are filled in here: `%KUMA_MESH%`, `%KUMA_SOURCE_SERVICE%`,
//! `%KUMA_DESTINATION_SERVICE%`, `%KUMA_SOURCE_ADDRESS%` and
//! `%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%`.
//!
//! TCP backends work as in Kuma: Envoy writes one JSON object per entry,
//! `{"address": "<collector>", "message": <line or JSON object>}`, to kuma-dp's access-log pipe
//! ([`access_log_pipe`](crate::generate::access_log_pipe) in the work directory the proxy
//! reported), and kuma-dp forwards each message to its collector over TCP. OpenTelemetry
//! backends need a collector cluster and are not generated yet (skipped, not an error).

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};
use kuma_core::model::policy::{
    AccessLogBackendType, AccessLogConf, LogFormat, LogFormatType, TcpBackend,
};
use kuma_core::resource::ResourceType;

use super::{from_conf, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::context::{ProxyContext, access_log_pipe};
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::{ResourceSet, Terminal};
use xds_server::envoy::{any, ordered_map, string_struct};

/// Kuma's default format of HTTP access log lines.
const HTTP_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\"\n";
/// Kuma's default format of TCP access log lines.
const TCP_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes\n";

/// Applies MeshAccessLog.
#[derive(Debug, Clone, Copy)]
pub struct MeshAccessLog;

/// Values for Kuma's placeholders.
struct Placeholders<'a> {
    mesh: &'a str,
    source_service: &'a str,
    destination_service: &'a str,
    source_address: &'a str,
}

impl Placeholders<'_> {
    fn fill(&self, s: &str) -> String {
        s.replace("%KUMA_MESH%", self.mesh)
            .replace("%KUMA_SOURCE_SERVICE%", self.source_service)
            .replace("%KUMA_DESTINATION_SERVICE%", self.destination_service)
            .replace(
                "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%",
                if self.source_address.is_empty() {
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
                } else {
                    self.source_address
                },
            )
            .replace(
                "%KUMA_SOURCE_ADDRESS%",
                if self.source_address.is_empty() {
                    "%DOWNSTREAM_REMOTE_ADDRESS%"
                } else {
                    self.source_address
                },
            )
    }
}

fn string(s: String) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s)),
    }
}

/// One log entry as a format describes it, before its backend wraps it.
enum Entry {
    /// A text line, newline included.
    Line(String),
    /// A JSON object.
    Object(Struct),
}

/// The entry `format` asks for (Kuma's default line when none) and whether empty values are
/// left out.
fn entry(format: Option<&LogFormat>, http: bool, p: &Placeholders<'_>) -> (Entry, bool) {
    let line = |s: &str| {
        let mut line = p.fill(s);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        Entry::Line(line)
    };
    let default = if http { HTTP_FORMAT } else { TCP_FORMAT };
    match format {
        Some(f) if f.kind == LogFormatType::Json => {
            let fields = f
                .json
                .iter()
                .flatten()
                .map(|kv| (kv.key.clone(), p.fill(&kv.value)));
            (Entry::Object(string_struct(fields)), f.omit_empty_values)
        }
        Some(f) => (
            line(f.plain.as_deref().unwrap_or(default)),
            f.omit_empty_values,
        ),
        None => (line(default), false),
    }
}

/// A file backend's format: the entry itself.
fn file_format(
    format: Option<&LogFormat>,
    http: bool,
    p: &Placeholders<'_>,
) -> SubstitutionFormatString {
    let (entry, omit) = entry(format, http, p);
    let body = match entry {
        Entry::Line(line) => Format::TextFormatSource(DataSource {
            specifier: Some(Specifier::InlineString(line)),
            ..Default::default()
        }),
        Entry::Object(object) => Format::JsonFormat(object),
    };
    SubstitutionFormatString {
        format: Some(body),
        omit_empty_values: omit,
        ..Default::default()
    }
}

/// A TCP backend's format, what kuma-dp's pipe expects: `{"address", "message"}`, the message
/// the entry's line or object.
fn tcp_format(backend: &TcpBackend, http: bool, p: &Placeholders<'_>) -> SubstitutionFormatString {
    let (entry, omit) = entry(backend.format.as_ref(), http, p);
    let message = match entry {
        Entry::Line(line) => string(line),
        Entry::Object(object) => PbValue {
            kind: Some(Kind::StructValue(object)),
        },
    };
    let envelope = Struct {
        fields: ordered_map([
            ("address".to_string(), string(backend.address.clone())),
            ("message".to_string(), message),
        ]),
    };
    SubstitutionFormatString {
        format: Some(Format::JsonFormat(envelope)),
        omit_empty_values: omit,
        ..Default::default()
    }
}

fn file_log(path: String, format: SubstitutionFormatString) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(ConfigType::TypedConfig(any(&FileAccessLog {
            path,
            access_log_format: Some(AccessLogFormat::LogFormat(format)),
        }))),
        ..Default::default()
    }
}

/// The access logs `conf` asks for; TCP backends write to `pipe`.
fn logs(conf: &AccessLogConf, http: bool, p: &Placeholders<'_>, pipe: &str) -> Vec<AccessLog> {
    conf.backends
        .iter()
        .flatten()
        .filter_map(|b| match b.kind {
            AccessLogBackendType::File => b
                .file
                .as_ref()
                .map(|f| file_log(f.path.clone(), file_format(f.format.as_ref(), http, p))),
            AccessLogBackendType::Tcp => b
                .tcp
                .as_ref()
                .map(|t| file_log(pipe.to_string(), tcp_format(t, http, p))),
            AccessLogBackendType::OpenTelemetry => None,
        })
        .collect()
}

fn attach(terminal: &mut Terminal, conf: &AccessLogConf, p: &Placeholders<'_>, pipe: &str) {
    match terminal {
        Terminal::Tcp(tcp) => tcp.access_log.extend(logs(conf, false, p, pipe)),
        Terminal::Http(http) => http.hcm.access_log.extend(logs(conf, true, p, pipe)),
    }
}

impl ResourceGenerator for MeshAccessLog {
    fn name(&self) -> &str {
        "MeshAccessLog"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshAccessLog);
        if rules.is_empty() {
            return Ok(());
        }
        let pipe = access_log_pipe(
            ctx.metadata.workdir.as_deref().unwrap_or(""),
            ctx.name,
            ctx.mesh.mesh,
        );
        for i in &rs.inbounds {
            let Some(conf) = from_conf::<AccessLogConf>(&rules, i.port)? else {
                continue;
            };
            let Some(l) = rs.listeners.get_mut(&i.listener) else {
                continue;
            };
            let p = Placeholders {
                mesh: ctx.mesh.mesh,
                source_service: "unknown",
                destination_service: &i.service,
                source_address: "",
            };
            attach(&mut l.terminal, &conf, &p, &pipe);
        }
        Ok(())
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshAccessLog);
        // The view names the proxy whenever a MeshAccessLog selects it.
        let (false, Some(source)) = (rules.is_empty(), &ctx.view.source) else {
            return Ok(());
        };
        let pipe = access_log_pipe(
            source.workdir.as_deref().unwrap_or(""),
            &source.name,
            ctx.mesh.mesh,
        );
        for o in &rs.outbounds {
            let Some(conf) = to_conf::<AccessLogConf>(&rules, &o.service)? else {
                continue;
            };
            let Some(l) = rs.listeners.get_mut(&o.listener) else {
                continue;
            };
            let p = Placeholders {
                mesh: ctx.mesh.mesh,
                source_service: source.service(),
                destination_service: &o.service,
                source_address: &source.address,
            };
            attach(&mut l.terminal, &conf, &p, &pipe);
        }
        Ok(())
    }
}
