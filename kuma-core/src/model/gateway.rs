//! MeshGateway: listeners of Kuma's builtin gateway.

use serde::{Deserialize, Serialize};

use super::common::{
    DataSource, SERVICE_TAG, TagRules, Tags, is_dns_name, validate_port, validate_tags,
};
use crate::validation::{Path, ValidationError};

/// The spec of a `MeshGateway`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewaySpec {
    /// Which builtin-gateway Dataplanes this configures.
    #[serde(default)]
    pub selectors: Vec<Selector>,
    /// Tags of the gateway.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Listeners.
    pub conf: Option<GatewayConf>,
}

/// A tag selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Tags to match (values may be `*`).
    #[serde(default, rename = "match")]
    pub match_tags: Tags,
}

/// `conf` of a MeshGateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConf {
    /// Listeners (at least one).
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

/// One gateway listener.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    /// Hostname served (`*` or a DNS name, may start with `*.`).
    pub hostname: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TCP` or `TLS`.
    pub protocol: Option<GatewayProtocol>,
    /// TLS settings (HTTPS, TLS).
    pub tls: Option<GatewayTls>,
    /// Extra tags of the listener.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Whether other meshes may use it.
    pub cross_mesh: Option<bool>,
    /// Resource limits.
    pub resources: Option<GatewayResources>,
}

/// Protocol of a gateway listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GatewayProtocol {
    /// Unset (invalid).
    None,
    /// TCP.
    Tcp,
    /// TLS.
    Tls,
    /// HTTP.
    Http,
    /// HTTPS.
    Https,
}

/// TLS of a gateway listener.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTls {
    /// `NONE`, `TERMINATE` or `PASSTHROUGH`.
    pub mode: Option<String>,
    /// Certificates (1 or 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<DataSource>,
    /// Options.
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Resource limits of a listener.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayResources {
    /// Maximum concurrent connections.
    #[serde(alias = "connection_limit")]
    pub connection_limit: Option<u32>,
}

impl MeshGatewaySpec {
    /// Checks the MeshGateway.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let sp = Path::at("selectors");
        if self.selectors.is_empty() {
            err.add(&sp, "must have at least one element");
        }
        for (i, s) in self.selectors.iter().enumerate() {
            validate_tags(
                &sp.index(i).field("match"),
                &s.match_tags,
                TagRules {
                    selector: true,
                    require_one: true,
                    ..Default::default()
                },
                &mut err,
            );
        }
        validate_tags(&Path::at("tags"), &self.tags, TagRules::default(), &mut err);
        if self.tags.contains_key(SERVICE_TAG) {
            err.add(&Path::at("tags").key(SERVICE_TAG), "tag is not allowed");
        }
        let lp = Path::at("conf").field("listeners");
        let listeners = self
            .conf
            .as_ref()
            .map_or(&[][..], |c| c.listeners.as_slice());
        if listeners.is_empty() {
            err.add(&lp, "cannot be empty");
        }
        for (i, l) in listeners.iter().enumerate() {
            let p = lp.index(i);
            validate_port(&p.field("port"), l.port, &mut err);
            match l.protocol {
                None | Some(GatewayProtocol::None) => {
                    err.add(&p.field("protocol"), "cannot be empty")
                }
                Some(GatewayProtocol::Https | GatewayProtocol::Tls) => {
                    if l.tls.is_none() {
                        err.add(&p.field("tls"), "cannot be empty");
                    }
                }
                Some(_) => {}
            }
            if let Some(h) = l.hostname.as_deref()
                && h != "*"
                && !is_dns_name(h.strip_prefix("*.").unwrap_or(h))
            {
                err.add(&p.field("hostname"), "invalid wildcard domain");
            }
            if let Some(tls) = &l.tls {
                let tp = p.field("tls");
                if let Some(m) = tls.mode.as_deref()
                    && !["NONE", "TERMINATE", "PASSTHROUGH"].contains(&m)
                {
                    err.add(
                        &tp.field("mode"),
                        "must be one of NONE, TERMINATE, PASSTHROUGH",
                    );
                }
                if tls.mode.as_deref() == Some("TERMINATE") && tls.certificates.is_empty() {
                    err.add(
                        &tp.field("certificates"),
                        "cannot be empty in TLS termination mode",
                    );
                }
                if tls.certificates.len() > 2 {
                    err.add(&tp.field("certificates"), "must have at most 2 elements");
                }
                for (j, c) in tls.certificates.iter().enumerate() {
                    c.validate(&tp.field("certificates").index(j), &mut err);
                }
            }
            validate_tags(&p.field("tags"), &l.tags, TagRules::default(), &mut err);
        }
        err
    }
}
