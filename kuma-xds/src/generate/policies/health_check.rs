//! MeshHealthCheck: active health checks on the clusters of destination services.
//!
//! The checker follows the service's protocol: HTTP (HTTP/1 or HTTP/2 codec) for http and
//! http2, gRPC for grpc, TCP for tcp; a disabled HTTP or gRPC checker falls back to TCP when
//! that is configured. Kuma's defaults: interval 1m, timeout 15s, 5 failures to mark unhealthy,
//! 1 success to mark healthy, path `/`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, ZoneAwareLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload as PayloadKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck, HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use kuma_core::model::common::IntOrString;
use kuma_core::model::policy::HealthCheckConf;
use kuma_core::resource::ResourceType;

use super::{header_values, to_conf};
use crate::generate::ResourceGenerator;
use crate::generate::context::Protocol;
use crate::generate::outbound::OutboundContext;
use crate::generate::resources::{ClusterDraft, ResourceSet};
use xds_server::envoy::{any, duration};

/// Applies MeshHealthCheck.
#[derive(Debug, Clone, Copy)]
pub struct MeshHealthCheck;

impl ResourceGenerator for MeshHealthCheck {
    fn name(&self) -> &str {
        "MeshHealthCheck"
    }

    fn apply_outbound(
        &self,
        ctx: &OutboundContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let rules = ctx.rules(ResourceType::MeshHealthCheck);
        if rules.is_empty() {
            return Ok(());
        }
        for draft in rs.clusters.values_mut() {
            let Some(service) = draft.service().map(str::to_string) else {
                continue;
            };
            if let Some(conf) = to_conf::<HealthCheckConf>(&rules, &service)? {
                configure(draft, &conf);
            }
        }
        Ok(())
    }
}

enum Checker {
    Http,
    Grpc,
    Tcp,
}

fn checker(protocol: Protocol, conf: &HealthCheckConf) -> Option<Checker> {
    let on = |disabled: Option<bool>| disabled != Some(true);
    let http = conf.http.as_ref().map(|h| on(h.disabled));
    let grpc = conf.grpc.as_ref().map(|g| on(g.disabled));
    let tcp = conf.tcp.as_ref().map(|t| on(t.disabled));
    match protocol {
        Protocol::Http | Protocol::Http2 if http == Some(true) => Some(Checker::Http),
        Protocol::Grpc if grpc == Some(true) => Some(Checker::Grpc),
        Protocol::Tcp | Protocol::Kafka if tcp == Some(true) => Some(Checker::Tcp),
        Protocol::Http | Protocol::Http2 if http == Some(false) && tcp == Some(true) => {
            Some(Checker::Tcp)
        }
        Protocol::Grpc if grpc == Some(false) && tcp == Some(true) => Some(Checker::Tcp),
        _ => None,
    }
}

fn configure(draft: &mut ClusterDraft, conf: &HealthCheckConf) {
    let cluster = &mut draft.cluster;
    if let Some(p) = conf
        .healthy_panic_threshold
        .as_ref()
        .and_then(IntOrString::as_f64)
    {
        cluster
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .healthy_panic_threshold = Some(Percent { value: p });
    }
    if let Some(fail) = conf.fail_traffic_on_panic {
        let lb = cluster
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default);
        if let LocalityConfigSpecifier::ZoneAwareLbConfig(z) =
            lb.locality_config_specifier.get_or_insert_with(|| {
                LocalityConfigSpecifier::ZoneAwareLbConfig(ZoneAwareLbConfig::default())
            })
        {
            z.fail_traffic_on_panic = fail;
        }
    }
    let Some(kind) = checker(draft.protocol, conf) else {
        return;
    };
    let d = |v: &Option<kuma_core::duration::Duration>, default: Duration| {
        Some(duration(v.as_ref().map_or(default, |x| x.get())))
    };
    let threshold = |v: Option<i32>, default: u32| {
        Some(UInt32Value {
            value: v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default),
        })
    };
    let health_checker = match kind {
        Checker::Http => {
            let h = conf.http.clone().unwrap_or_default();
            HealthChecker::HttpHealthCheck(HttpHealthCheck {
                path: h.path.unwrap_or_else(|| "/".into()),
                request_headers_to_add: h
                    .request_headers_to_add
                    .as_ref()
                    .map(header_values)
                    .unwrap_or_default(),
                expected_statuses: h
                    .expected_statuses
                    .iter()
                    .flatten()
                    .map(|s| Int64Range {
                        start: i64::from(*s),
                        end: i64::from(*s) + 1,
                    })
                    .collect(),
                codec_client_type: if draft.protocol == Protocol::Http2 {
                    CodecClientType::Http2
                } else {
                    CodecClientType::Http1
                } as i32,
                ..Default::default()
            })
        }
        Checker::Grpc => {
            let g = conf.grpc.clone().unwrap_or_default();
            HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: g.service_name.unwrap_or_default(),
                authority: g.authority.unwrap_or_default(),
                ..Default::default()
            })
        }
        Checker::Tcp => {
            let t = conf.tcp.clone().unwrap_or_default();
            let hex = |s: &str| Payload {
                payload: Some(PayloadKind::Text(
                    s.bytes().map(|b| format!("{b:02x}")).collect(),
                )),
            };
            HealthChecker::TcpHealthCheck(TcpHealthCheck {
                send: t.send.as_deref().map(hex),
                receive: t.receive.iter().flatten().map(|r| hex(r)).collect(),
                ..Default::default()
            })
        }
    };
    let mut hc = HealthCheck {
        timeout: d(&conf.timeout, Duration::from_secs(15)),
        interval: d(&conf.interval, Duration::from_secs(60)),
        unhealthy_threshold: threshold(conf.unhealthy_threshold, 5),
        healthy_threshold: threshold(conf.healthy_threshold, 1),
        initial_jitter: conf.initial_jitter.as_ref().map(|x| duration(x.get())),
        interval_jitter: conf.interval_jitter.as_ref().map(|x| duration(x.get())),
        interval_jitter_percent: conf
            .interval_jitter_percent
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        no_traffic_interval: conf.no_traffic_interval.as_ref().map(|x| duration(x.get())),
        reuse_connection: conf.reuse_connection.map(|value| BoolValue { value }),
        always_log_health_check_failures: conf.always_log_health_check_failures.unwrap_or(false),
        health_checker: Some(health_checker),
        ..Default::default()
    };
    if let Some(path) = &conf.event_log_path {
        hc.event_logger.push(TypedExtensionConfig {
            name: "envoy.health_check.event_sinks.file".into(),
            typed_config: Some(any(&HealthCheckEventFileSink {
                event_log_path: path.clone(),
            })),
        });
    }
    cluster.health_checks.push(hc);
}
