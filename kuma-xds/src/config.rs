//! The sections of the control-plane configuration this crate's parts read (Kuma's keys):
//! `xdsServer` (the reconciler and lifecycle timers), `bootstrapServer` (what Envoy's
//! bootstrap says), `monitoringAssignmentServer` (MADS) and `metrics` (what DataplaneInsights
//! keep).

use kuma_core::duration::Duration;
use kuma_core::validation::{Path, ValidationError};
use serde::{Deserialize, Serialize};

fn d(text: &str) -> Duration {
    Duration::literal(text)
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

impl MadsConfig {
    /// Adds what is wrong with the section, under `at` (the section's key), to `err`: a
    /// certificate file and its key go together.
    pub fn validate(&self, at: &Path, err: &mut ValidationError) {
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            err.add(at, "tlsCertFile and tlsKeyFile must be set together");
        }
    }
}
