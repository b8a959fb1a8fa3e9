//! The data-plane agent of a Kuma-compatible service mesh, as a library: what `kuma-dp run`
//! does for one proxy.
//!
//! [`run`] takes a [`RunConfig`] (Kuma's kuma-dp flags, parsed) and
//! - renders the Dataplane template ([`config::render`]) and fetches the Envoy bootstrap from the
//!   control plane ([`bootstrap`]: the dp-server over TLS, or the split layout's bootstrap server,
//!   with the request type the server reads, [`kuma_core::bootstrap::BootstrapRequest`]);
//! - runs Envoy as Kuma runs it ([`envoy`]: drain strategy, no hot restart, killed with its
//!   agent) and forwards SIGINT and SIGTERM to it;
//! - reports readiness ([`readiness`]), forwards MeshAccessLog TCP entries ([`access_logs`]) and,
//!   for a transparent proxy, serves the DNS proxy ([`dns_proxy`]);
//! - returns Envoy's exit status when Envoy exits.
//!
//! It does not link the control plane: no store, no API server, no config generation
//! (`cargo tree -p kuma-dp -e normal` lists neither PostgreSQL nor SQLite). Flag parsing is the
//! binary's (`examples/src/bin/kuma-dp.rs`).
//!
//! ```no_run
//! use kuma_dp::{RunConfig, Template, Token};
//!
//! # async fn agent() -> Result<(), kuma_dp::Error> {
//! let config = RunConfig {
//!     cp_address: "https://localhost:5678".into(),
//!     template: Template::File("dataplane.yaml".into()),
//!     token: Some(Token::File("token".into())),
//!     ..RunConfig::default()
//! };
//! let status = kuma_dp::run(config).await?;
//! println!("Envoy exited: {status}");
//! # Ok(()) }
//! ```

pub mod access_logs;
pub mod bootstrap;
pub mod config;
pub mod dns_proxy;
pub mod envoy;
pub mod readiness;
mod run;
pub mod tls;

pub use config::{Ca, RunConfig, Template, Token};
pub use run::run;

/// Why the agent stopped before Envoy did (or could not start it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, a pipe, a port or Envoy's process could not be used.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The Dataplane, the settings or the control plane's answer did not allow going on.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Failed(message)
    }
}
