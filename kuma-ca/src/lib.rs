//! Certificate authorities, signing keys and tokens for a Kuma-compatible control plane.
//!
//! - [`ca`]: the [`CertificateAuthority`] trait, the builtin and provided CAs, and workload
//!   identities (SPIFFE and `kuma://` URI SANs; RSA 2048 or ECDSA P-256 keys);
//! - [`config`]: the `mtls` section of the configuration ([`MtlsConfig`]: key type and SAN
//!   layout of the certificates issued);
//! - [`mesh_ca`]: a mesh's CA by its mTLS backend type ([`CaManager`], [`CaManagers`]: `builtin`
//!   and `provided` bundled, others added by name), the builtin CA kept in the mesh-owned secrets
//!   Kuma uses;
//! - [`signing_key`]: RSA signing keys kept as global secrets `<prefix>-<serial>`, as Kuma keeps
//!   them (PEM, so keys move between Kuma and kuma-rs stores);
//! - [`jwt`]: RS256 JSON Web Tokens with the key's serial as `kid`;
//! - [`user_token`]: user tokens for the HTTP API and the admin token bootstrapped at first start;
//! - [`dataplane_token`]: dataplane tokens signed with per-mesh keys, and their checks;
//! - [`zone_token`]: zone tokens for zone proxies, signed on global, verified on zones.
//!
//! It keeps keys through a `ResourceManager` and serves nothing; signing and verification use
//! `ring` (the `rsa` crate only generates keys). No features.
//!
//! # Extension point: `CertificateAuthority`
//!
//! Anything that issues workload identities for a mesh; [`CaManager`] loads one per mesh
//! backend. The bundled builtin CA at work:
//!
//! ```
//! use std::collections::BTreeSet;
//! use std::time::Duration;
//!
//! use kuma_ca::ca::{BuiltinCa, CertificateAuthority, IdentityRequest, KeyType, SanLayout};
//!
//! let ca = BuiltinCa::generate("default", KeyType::EcdsaP256).unwrap();
//! let identity = ca
//!     .issue(&IdentityRequest {
//!         mesh: "default".into(),
//!         services: BTreeSet::from(["backend".to_string()]),
//!         tags: Default::default(),
//!         lifetime: Duration::from_secs(3600),
//!         layout: SanLayout::Kuma,
//!     })
//!     .unwrap();
//! assert!(identity.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(ca.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! ```

pub mod ca;
pub mod config;
pub mod dataplane_token;
pub mod jwt;
pub mod mesh_ca;
pub mod signing_key;
pub mod user_token;
pub mod zone_token;

pub use ca::{
    BuiltinCa, CaError, CertificateAuthority, Identity, IdentityRequest, KeyType, ProvidedCa,
};
pub use config::MtlsConfig;
pub use mesh_ca::{CaManager, CaManagers, MeshCaError};

/// Why a token or signing key was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// The store failed (the cause is the source).
    #[error("store")]
    Store(#[from] kuma_core::manager::ManagerError),
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
