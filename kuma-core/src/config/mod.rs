//! The configuration loader: Kuma's YAML file and `KUMA_*` environment overrides, for any
//! configuration type.
//!
//! Each crate owns the section of the configuration it reads (`kuma_store::config::StoreConfig`
//! is `store`, `kuma_dns::config::DnsServerConfig` is `dnsServer`, ...); an assembly such as
//! `kuma-cp` composes them into one serde type and loads it with [`load`]. Load order: the
//! type's defaults, then the YAML file (unknown keys are errors when the type denies them), then
//! environment variables. Each leaf key has one variable, derived from its path
//! (`apiServer.http.port` is `KUMA_API_SERVER_HTTP_PORT`) except where Kuma spells it otherwise
//! (see [`env_name`]). Rules across keys are the composed type's to check after loading.

mod env;

pub use env::env_name;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::validation::ValidationError;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML or has unknown keys or wrong types.
    #[error("config file: {0}")]
    File(ValidationError),
    /// An environment variable holds a value of the wrong type.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// The values are individually fine but break a rule.
    #[error("invalid configuration: {0}")]
    Invalid(ValidationError),
}

/// Defaults, then `file` (YAML) if given, then the variables `env` returns.
///
/// Pass `|k| std::env::var(k).ok()` for the process environment.
pub fn load<T>(
    file: Option<&std::path::Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let base = match file {
        None => T::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            from_yaml(&text)?
        }
    };
    env::apply(base, env)
}

/// Parses a YAML configuration; absent keys keep their defaults.
pub fn from_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    let value: serde_json::Value = match serde_norway::from_str(text) {
        Ok(serde_json::Value::Null) => return Ok(T::default()),
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigError::File(ValidationError::single(
                "",
                e.to_string(),
            )));
        }
    };
    crate::resource::decode_value(value).map_err(ConfigError::File)
}

#[cfg(test)]
mod tests;
