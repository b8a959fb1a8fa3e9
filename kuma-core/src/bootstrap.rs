//! The bootstrap request kuma-dp sends to the control plane (Kuma's `BootstrapRequest`), one
//! type for both sides.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body of `POST /bootstrap`: what kuma-dp sends, and what the bootstrap server reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BootstrapRequest {
    /// Mesh of the proxy.
    pub mesh: String,
    /// Dataplane name.
    pub name: String,
    /// `dataplane`, `ingress` or `egress`.
    pub proxy_type: String,
    /// Dataplane token (required unless `dpServer.authn.dpProxy.type` is `none`).
    pub dataplane_token: String,
    /// The Dataplane as YAML or JSON text.
    pub dataplane_resource: String,
    /// Versions of kuma-dp and Envoy.
    pub version: Value,
    /// CA of the control plane, as kuma-dp saw it.
    pub ca_cert: String,
    /// Port of kuma-dp's DNS proxy.
    pub dns_port: u32,
    /// Port of kuma-dp's readiness reporter.
    pub readiness_port: u32,
    /// kuma-dp's working directory.
    pub workdir: String,
    /// Features kuma-dp supports.
    pub features: Vec<String>,
}
