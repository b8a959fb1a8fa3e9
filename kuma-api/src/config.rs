//! The sections of the control-plane configuration the API reads (Kuma's keys): `apiServer`
//! (listeners, authentication, the GUI, timeouts) and `access` (who may do each guarded
//! action).

use std::net::IpAddr;

use kuma_core::duration::Duration;
use kuma_core::validation::{Path, ValidationError};
use serde::{Deserialize, Serialize};

fn d(text: &str) -> Duration {
    Duration::literal(text)
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
    /// `POST /tokens/zone`.
    pub generate_zone_token: AccessList,
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
            generate_zone_token: admins(),
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

impl ApiServerConfig {
    /// Adds what is wrong with the section, under `at` (the section's key), to `err`:
    /// timeouts must be longer than zero and interfaces must be IP addresses.
    pub fn validate(&self, at: &Path, err: &mut ValidationError) {
        for (key, timeout) in [
            ("readHeaderTimeout", &self.read_header_timeout),
            ("readTimeout", &self.read_timeout),
            ("idleTimeout", &self.idle_timeout),
        ] {
            if timeout.get().is_zero() {
                err.add(&at.field(key), "must be longer than zero");
            }
        }
        for (listener, iface) in [
            ("http", &self.http.interface),
            ("https", &self.https.interface),
        ] {
            if iface.parse::<IpAddr>().is_err() {
                err.add(
                    &at.field(listener).field("interface"),
                    format!("{iface:?} is not an IP address"),
                );
            }
        }
    }
}

impl AccessConfig {
    /// Adds what is wrong with the section, under `at` (the section's key), to `err`: only
    /// the `static` strategy exists.
    pub fn validate(&self, at: &Path, err: &mut ValidationError) {
        if self.kind != "static" {
            err.add(
                &at.field("type"),
                format!("{:?} is not supported (only \"static\")", self.kind),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_that_is_wrong() {
        let mut api = ApiServerConfig::default();
        let mut access = AccessConfig::default();
        let mut err = ValidationError::new();
        api.validate(&Path::at("apiServer"), &mut err);
        access.validate(&Path::at("access"), &mut err);
        assert!(err.is_empty(), "{err}");
        api.read_timeout = Duration::literal("0s");
        api.https.interface = "localhost".into();
        access.kind = "rbac".into();
        api.validate(&Path::at("apiServer"), &mut err);
        access.validate(&Path::at("access"), &mut err);
        let fields: Vec<_> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "apiServer.readTimeout",
                "apiServer.https.interface",
                "access.type"
            ]
        );
    }

    #[test]
    fn access_lists_allow_users_and_groups() {
        let access = StaticAccessConfig::default();
        assert!(access.admin_resources.allows("mesh-system:admin", &[]));
        assert!(
            access
                .admin_resources
                .allows("x", &["mesh-system:admin".to_string()])
        );
        assert!(!access.admin_resources.allows("x", &["ops".to_string()]));
    }
}
