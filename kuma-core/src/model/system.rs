//! System resources: Secret, GlobalSecret, Config.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::validation::{Path, ValidationError};

/// The spec of a `Secret` or `GlobalSecret`: base64-encoded bytes.
#[serde_with::skip_serializing_none]
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// The value, base64-encoded.
    pub data: Option<String>,
}

// Secrets never reach logs: Debug prints a mask.
impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpec")
            .field("data", &"*****")
            .finish()
    }
}

impl SecretSpec {
    /// A secret holding `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        SecretSpec {
            data: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The decoded value.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let data = self.data.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(data).ok()
    }

    /// Checks that `data` is present and valid base64.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        match self.data.as_deref() {
            None | Some("") => err.add(&Path::at("data"), "cannot be empty"),
            Some(d) if base64::engine::general_purpose::STANDARD.decode(d).is_err() => {
                err.add(&Path::at("data"), "must be valid base64")
            }
            Some(_) => {}
        }
        err
    }
}

/// The spec of a `Config`: an internal string value (e.g. the VIP map as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// The value.
    #[serde(default)]
    pub config: String,
}
