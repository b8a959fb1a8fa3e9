//! RSA signing keys stored as global secrets, as Kuma stores them.
//!
//! A key named `<prefix>-<serial>` (e.g. `user-token-signing-key-1`) holds a PEM RSA private key
//! (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`); the bare `<prefix>` is serial 0. Tokens
//! are signed with the highest serial and carry it as `kid`, so rotating means adding the next
//! serial and removing the old one once its tokens are gone.
//!
//! A key can also be held as its public half alone (PEM `RSA PUBLIC KEY` or `PUBLIC KEY`):
//! it verifies and cannot sign. Federated zones verify zone tokens this way, with the
//! `zone-token-signing-public-key-<serial>` secrets global derives from its private keys
//! ([`public_key_pem`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::{ListQuery, StoreError};
use ring::signature::{self, RsaKeyPair};
use rsa::pkcs1::{
    DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _, EncodeRsaPrivateKey as _,
    EncodeRsaPublicKey as _,
};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

use crate::TokenError;

/// Size of generated keys, as Kuma's.
pub const KEY_BITS: usize = 2048;
/// The key id of the first key.
pub const DEFAULT_KEY_ID: &str = "1";

/// One RSA key, able to verify RS256 and, when it holds the private half, to sign.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    /// The public key as PKCS#1 `RSAPublicKey` DER (what ring verifies with).
    public: Arc<[u8]>,
    /// The private key, when held.
    pair: Option<Arc<RsaKeyPair>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random RSA key as PKCS#1 PEM (what Kuma stores).
    pub fn generate_pem() -> Result<String, TokenError> {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, KEY_BITS)
            .map_err(|e| TokenError::Key(format!("could not generate an RSA key: {e}")))?;
        let pem = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| TokenError::Key(format!("could not encode the RSA key: {e}")))?;
        Ok(pem.to_string())
    }

    /// Reads a PEM RSA private key (PKCS#1 or PKCS#8).
    pub fn from_pem(kid: &str, pem: &[u8]) -> Result<Self, TokenError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| TokenError::Key("the key is not PEM text".into()))?;
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(text)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(text))
            .map_err(|_| TokenError::Key("not a PEM RSA private key (PKCS#1 or PKCS#8)".into()))?;
        let der = key
            .to_pkcs1_der()
            .map_err(|e| TokenError::Key(format!("could not encode the RSA key: {e}")))?;
        let pair = RsaKeyPair::from_der(der.as_bytes())
            .map_err(|e| TokenError::Key(format!("unusable RSA key: {e}")))?;
        Ok(SigningKey {
            kid: kid.to_string(),
            public: pair.public().as_ref().into(),
            pair: Some(Arc::new(pair)),
        })
    }

    /// Reads a PEM RSA public key (PKCS#1 `RSA PUBLIC KEY` or SPKI `PUBLIC KEY`): a key that
    /// verifies and cannot sign.
    pub fn from_public_pem(kid: &str, pem: &[u8]) -> Result<Self, TokenError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| TokenError::Key("the key is not PEM text".into()))?;
        let key = rsa::RsaPublicKey::from_pkcs1_pem(text)
            .or_else(|_| rsa::RsaPublicKey::from_public_key_pem(text))
            .map_err(|_| TokenError::Key("not a PEM RSA public key (PKCS#1 or SPKI)".into()))?;
        let der = key
            .to_pkcs1_der()
            .map_err(|e| TokenError::Key(format!("could not encode the RSA key: {e}")))?;
        Ok(SigningKey {
            kid: kid.to_string(),
            public: der.as_bytes().into(),
            pair: None,
        })
    }

    /// The key id tokens signed with it carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let pair = self.pair.as_ref().ok_or_else(|| {
            TokenError::Key(format!("key {} is a public key: it cannot sign", self.kid))
        })?;
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            message,
            &mut sig,
        )
        .map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(sig)
    }

    /// Whether `sig` is this key's RS256 signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.public)
            .verify(message, sig)
            .is_ok()
    }
}

/// The public half of a PEM RSA private key (PKCS#1 or PKCS#8), as PKCS#1 `RSA PUBLIC KEY`
/// PEM (what Kuma's global sends zones for zone tokens).
pub fn public_key_pem(private_pem: &[u8]) -> Result<String, TokenError> {
    let text = std::str::from_utf8(private_pem)
        .map_err(|_| TokenError::Key("the key is not PEM text".into()))?;
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(text)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(text))
        .map_err(|_| TokenError::Key("not a PEM RSA private key (PKCS#1 or PKCS#8)".into()))?;
    rsa::RsaPublicKey::from(&key)
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| TokenError::Key(format!("could not encode the public key: {e}")))
}

/// The serial of a key named `name`, if it is one of `prefix`'s keys.
pub fn serial_of(prefix: &str, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix('-')?.parse().ok()
}

/// The secret name holding key `kid` of `prefix`.
pub fn secret_name(prefix: &str, kid: &str) -> String {
    if kid == "0" {
        prefix.to_string()
    } else {
        format!("{prefix}-{kid}")
    }
}

/// The signing keys with one prefix, read from global secrets, or from one mesh's secrets
/// (parsed keys are cached by content, so rotation and deletion are seen at once).
pub struct SigningKeys {
    manager: ResourceManager,
    prefix: String,
    /// `None`: global secrets; `Some(mesh)`: that mesh's secrets.
    mesh: Option<String>,
    /// The secrets hold public keys (they verify, never sign).
    public: bool,
    parsed: Mutex<HashMap<String, (String, SigningKey)>>,
}

impl SigningKeys {
    /// Keys named `<prefix>-<serial>` in `manager`'s store.
    pub fn new(manager: ResourceManager, prefix: &str) -> Self {
        SigningKeys {
            manager,
            prefix: prefix.to_string(),
            mesh: None,
            public: false,
            parsed: Mutex::default(),
        }
    }

    /// Public keys named `<prefix>-<serial>` among global secrets: they verify tokens signed
    /// elsewhere (a federated zone's copy of global's zone-token keys).
    pub fn public(manager: ResourceManager, prefix: &str) -> Self {
        SigningKeys {
            public: true,
            ..Self::new(manager, prefix)
        }
    }

    /// Keys named `<prefix>-<serial>` among `mesh`'s secrets (owned by the mesh).
    pub fn in_mesh(manager: ResourceManager, mesh: &str, prefix: &str) -> Self {
        SigningKeys {
            mesh: Some(mesh.to_string()),
            ..Self::new(manager, prefix)
        }
    }

    fn key_of(&self, name: &str) -> ResourceKey {
        match &self.mesh {
            None => ResourceKey::global(ResourceType::GlobalSecret, name),
            Some(mesh) => ResourceKey::new(ResourceType::Secret, mesh, name),
        }
    }

    /// The key with the highest serial.
    pub async fn latest(&self) -> Result<SigningKey, TokenError> {
        let query = match &self.mesh {
            None => ListQuery::all(ResourceType::GlobalSecret),
            Some(mesh) => ListQuery::in_mesh(ResourceType::Secret, mesh),
        };
        let page = self.manager.list(&query).await?;
        let newest = page
            .items
            .iter()
            .filter_map(|r| serial_of(&self.prefix, &r.meta.name).map(|s| (s, r)))
            .max_by_key(|(s, _)| *s);
        match newest {
            Some((serial, resource)) => self.parse(&serial.to_string(), resource),
            None => Err(TokenError::SigningKeyNotFound {
                kid: DEFAULT_KEY_ID.into(),
                name: secret_name(&self.prefix, DEFAULT_KEY_ID),
            }),
        }
    }

    /// The key with id `kid`.
    pub async fn get(&self, kid: &str) -> Result<SigningKey, TokenError> {
        let name = secret_name(&self.prefix, kid);
        let not_found = || TokenError::SigningKeyNotFound {
            kid: kid.into(),
            name: name.clone(),
        };
        if kid.parse::<u64>().is_err() {
            return Err(not_found());
        }
        match self.manager.get(&self.key_of(&name)).await {
            Ok(resource) => self.parse(kid, &resource),
            Err(ManagerError::Store(StoreError::NotFound(_))) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates key [`DEFAULT_KEY_ID`] unless some key exists; whether it created one.
    pub async fn ensure_default(&self) -> Result<bool, TokenError> {
        if self.public {
            return Err(TokenError::Key(format!(
                "{} keys are public keys: they are made where their private keys are",
                self.prefix
            )));
        }
        match self.latest().await {
            Ok(_) => return Ok(false),
            Err(TokenError::SigningKeyNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // RSA key generation takes a fraction of a second: not on an async worker.
        let pem = tokio::task::spawn_blocking(SigningKey::generate_pem)
            .await
            .map_err(|e| TokenError::Key(format!("key generation did not finish: {e}")))??;
        let data = SecretSpec::from_bytes(pem.as_bytes());
        let name = secret_name(&self.prefix, DEFAULT_KEY_ID);
        let secret = match &self.mesh {
            None => Resource::new("", &name, Spec::GlobalSecret(data)),
            Some(mesh) => Resource::new(mesh, &name, Spec::Secret(data)),
        };
        match self.manager.create(secret).await {
            Ok(_) => Ok(true),
            // Another instance made it first: theirs is as good.
            Err(ManagerError::Store(StoreError::AlreadyExists(_))) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn parse(&self, kid: &str, resource: &Resource) -> Result<SigningKey, TokenError> {
        let (Spec::GlobalSecret(secret) | Spec::Secret(secret)) = &resource.spec else {
            return Err(TokenError::Key(format!(
                "{} is not a secret",
                resource.meta.name
            )));
        };
        let data = secret.data.clone().unwrap_or_default();
        let mut parsed = self
            .parsed
            .lock()
            .map_err(|_| TokenError::Key("signing key cache poisoned".into()))?;
        if let Some((seen, key)) = parsed.get(&resource.meta.name)
            && *seen == data
        {
            return Ok(key.clone());
        }
        let pem = secret.bytes().ok_or_else(|| {
            TokenError::Key(format!("{}: data is not base64", resource.meta.name))
        })?;
        let key = if self.public {
            SigningKey::from_public_pem(kid, &pem)
        } else {
            SigningKey::from_pem(kid, &pem)
        };
        let key = key.map_err(|e| TokenError::Key(format!("{}: {e}", resource.meta.name)))?;
        parsed.insert(resource.meta.name.clone(), (data, key.clone()));
        Ok(key)
    }
}
