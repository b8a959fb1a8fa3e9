//! The `store` section of the control-plane configuration (Kuma's keys, `KUMA_STORE_*`).

use kuma_core::validation::{Path, ValidationError};
use serde::{Deserialize, Serialize};

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

/// `store`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory`, `postgres` or `sqlite`.
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

impl StoreConfig {
    /// Adds what is wrong with the section, under `at` (the section's key), to `err`: a
    /// PostgreSQL store needs a host and a port, and its TLS files go together.
    pub fn validate(&self, at: &Path, err: &mut ValidationError) {
        if self.kind != StoreType::Postgres {
            return;
        }
        let p = at.field("postgres");
        if self.postgres.host.is_empty() {
            err.add(
                &p.field("host"),
                "must not be empty when store.type is postgres",
            );
        }
        if self.postgres.port == 0 {
            err.add(&p.field("port"), "must be set when store.type is postgres");
        }
        let tls = &self.postgres.tls;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_settings_are_checked_only_for_postgres() {
        let mut c = StoreConfig::default();
        c.postgres.host.clear();
        let mut err = ValidationError::new();
        c.validate(&Path::at("store"), &mut err);
        assert!(err.is_empty(), "memory store: {err}");
        c.kind = StoreType::Postgres;
        c.postgres.tls.mode = PostgresTlsMode::VerifyFull;
        c.postgres.tls.cert_path = "/c.pem".into();
        c.validate(&Path::at("store"), &mut err);
        let fields: Vec<_> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "store.postgres.host",
                "store.postgres.tls.caPath",
                "store.postgres.tls.keyPath"
            ]
        );
    }

    #[test]
    fn password_is_not_debug_printed() {
        let c = StoreConfig::default();
        assert!(!format!("{c:?}").contains("\"kuma\", db_name"));
        assert!(format!("{c:?}").contains("password: \"*****\""));
    }
}
