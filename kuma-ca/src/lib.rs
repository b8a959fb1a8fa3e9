//! Certificate authorities, signing keys and tokens for a Kuma-compatible control plane.
//!
//! - [`signing_key`]: RSA signing keys kept as global secrets `<prefix>-<serial>`, the way Kuma
//!   keeps them (PEM, so keys move between Kuma and kuma-rs stores);
//! - [`jwt`]: RS256 JSON Web Tokens with the key's serial as `kid`;
//! - [`user_token`]: user tokens for the HTTP API and the admin token bootstrapped at first start;
//! - [`ca`]: the `CertificateAuthority` trait, the builtin and provided CA backends, and
//!   workload identities (SPIFFE and `kuma://` URI SANs);
//! - [`mesh_ca`]: a mesh's builtin CA kept in the mesh-owned secrets Kuma uses;
//! - [`dataplane_token`]: dataplane tokens signed with per-mesh keys, and their checks.
//!
//! Signing and verification use `ring`; the `rsa` crate only generates keys.

pub mod ca;
pub mod dataplane_token;
pub mod jwt;
pub mod mesh_ca;
pub mod signing_key;
pub mod user_token;

/// Why a token or signing key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT (wrong number of parts, bad base64 or JSON).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than RS256.
    #[error("unsupported token alg {0:?}: the allowed algorithm is RS256")]
    UnsupportedAlgorithm(String),
    /// The header has no `kid`.
    #[error("the token has no kid header")]
    MissingKeyId,
    /// No signing key with the token's `kid`.
    #[error(
        "there is no signing key with KID {kid}: GlobalSecret {name:?} is not found; if the signing key was rotated, regenerate the token"
    )]
    SigningKeyNotFound {
        /// The key id.
        kid: String,
        /// The secret that would hold it.
        name: String,
    },
    /// The signature does not verify with the key.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet: check the clock of the instance that issued it")]
    NotYetValid,
    /// Its `jti` is on the revocation list.
    #[error("the token is revoked")]
    Revoked,
    /// The claims lack what this kind of token needs.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// A signing key that cannot be read or made.
    #[error("signing key: {0}")]
    Key(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl From<kuma_core::manager::ManagerError> for TokenError {
    fn from(e: kuma_core::manager::ManagerError) -> Self {
        TokenError::Store(e.to_string())
    }
}

/// Whether `jti` is listed in the revocation secret at `key` (comma-separated token ids; no
/// secret means nothing is revoked).
async fn revoked(
    manager: &kuma_core::manager::ResourceManager,
    key: &kuma_core::resource::ResourceKey,
    jti: &str,
) -> Result<bool, TokenError> {
    use kuma_core::manager::ManagerError;
    use kuma_core::resource::Spec;
    use kuma_core::store::StoreError;
    let resource = match manager.get(key).await {
        Ok(r) => r,
        Err(ManagerError::Store(StoreError::NotFound(_))) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let (Spec::GlobalSecret(secret) | Spec::Secret(secret)) = &resource.spec else {
        return Ok(false);
    };
    let list = secret.bytes().unwrap_or_default();
    Ok(String::from_utf8_lossy(&list)
        .split(',')
        .any(|id| id.trim() == jti))
}
