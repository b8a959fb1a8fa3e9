//! Zone tokens, as Kuma makes them: RS256 JWTs with claims `Zone` and `Scope` (`ingress`,
//! `egress`), signed with the global secrets `zone-token-signing-key-<serial>` of the global
//! (or standalone) control plane, the serial as `kid`; revoked by listing their `jti` in the
//! global secret `zone-token-revocations`. Zone proxies (ZoneIngress, ZoneEgress) present one.
//!
//! A federated zone never holds the private keys: global sends it their public halves as
//! `zone-token-signing-public-key-<serial>` (see [`public_secret_name`]), and the zone verifies
//! with those ([`ZoneTokens::federated`]).

use std::time::Duration;

use kuma_core::manager::ResourceManager;
use kuma_core::resource::{ResourceKey, ResourceType};
use serde_json::{Map, Value, json};

use crate::TokenError;
use crate::jwt;
use crate::signing_key::SigningKeys;

/// Prefix of the global secrets holding zone-token signing keys.
pub const SIGNING_KEY_PREFIX: &str = "zone-token-signing-key";
/// Prefix of their public halves, on federated zones.
pub const PUBLIC_KEY_PREFIX: &str = "zone-token-signing-public-key";
/// The global secret listing revoked zone tokens.
pub const REVOCATIONS_SECRET: &str = "zone-token-revocations";
/// The scope of zone ingresses.
pub const INGRESS_SCOPE: &str = "ingress";
/// The scope of zone egresses.
pub const EGRESS_SCOPE: &str = "egress";

/// The name under which a federated zone keeps the public half of the signing key secret
/// `name` (`None`: `name` is not a zone-token signing key).
pub fn public_secret_name(name: &str) -> Option<String> {
    let serial = name.strip_prefix(SIGNING_KEY_PREFIX)?;
    (serial.is_empty() || serial.starts_with('-')).then(|| format!("{PUBLIC_KEY_PREFIX}{serial}"))
}

/// What a zone token grants: proxies of `zone` of the kinds in `scope`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneIdentity {
    /// The zone.
    pub zone: String,
    /// `ingress`, `egress` or both (empty in a request: both).
    pub scope: Vec<String>,
}

impl ZoneIdentity {
    /// Whether this identity may run a zone proxy of kind `scope` (`ingress` or `egress`) in
    /// zone `zone`; the error says which claim does not match.
    pub fn admits(&self, zone: &str, scope: &str) -> Result<(), TokenError> {
        if self.zone != zone {
            return Err(TokenError::Claims(format!(
                "the zone token is for zone {:?}, this control plane is zone {zone:?}",
                self.zone
            )));
        }
        if !self.scope.iter().any(|s| s == scope) {
            return Err(TokenError::Claims(format!(
                "the zone token's scope {:?} does not include {scope:?}",
                self.scope
            )));
        }
        Ok(())
    }
}

/// Issues and validates zone tokens.
pub struct ZoneTokens {
    manager: ResourceManager,
    keys: SigningKeys,
    /// Whether tokens can be issued here (global and standalone: the private keys are here).
    issuer: bool,
}

impl ZoneTokens {
    /// On a global or standalone control plane: issues tokens with the private keys (the
    /// first made on the first issue) and verifies with them.
    pub fn issuing(manager: ResourceManager) -> Self {
        ZoneTokens {
            keys: SigningKeys::new(manager.clone(), SIGNING_KEY_PREFIX),
            manager,
            issuer: true,
        }
    }

    /// On a federated zone: verifies with the public keys global sent; issues nothing.
    pub fn federated(manager: ResourceManager) -> Self {
        ZoneTokens {
            keys: SigningKeys::public(manager.clone(), PUBLIC_KEY_PREFIX),
            manager,
            issuer: false,
        }
    }

    /// Makes the first signing key unless one exists (global and standalone start with one,
    /// so global can send zones its public half before any token is issued).
    pub async fn ensure_signing_key(&self) -> Result<bool, TokenError> {
        if !self.issuer {
            return Ok(false);
        }
        self.keys.ensure_default().await
    }

    /// A token for `identity` (an empty scope: both), valid for `valid_for`.
    pub async fn issue(
        &self,
        identity: &ZoneIdentity,
        valid_for: Duration,
    ) -> Result<String, TokenError> {
        if !self.issuer {
            return Err(TokenError::Key(
                "zone tokens are issued by the global control plane".into(),
            ));
        }
        if identity.zone.is_empty() {
            return Err(TokenError::Claims("zone must be given".into()));
        }
        for s in &identity.scope {
            if s != INGRESS_SCOPE && s != EGRESS_SCOPE {
                return Err(TokenError::Claims(format!(
                    "scope {s:?} is not one of {INGRESS_SCOPE:?}, {EGRESS_SCOPE:?}"
                )));
            }
        }
        let scope = if identity.scope.is_empty() {
            vec![INGRESS_SCOPE.to_string(), EGRESS_SCOPE.to_string()]
        } else {
            identity.scope.clone()
        };
        self.keys.ensure_default().await?;
        let key = self.keys.latest().await?;
        let mut claims = Map::new();
        claims.insert("Zone".into(), json!(identity.zone));
        claims.insert("Scope".into(), json!(scope));
        jwt::issue(&key, claims, valid_for, jwt::now())
    }

    /// The identity `token` grants, if it verifies now and is not revoked.
    pub async fn validate(&self, token: &str) -> Result<ZoneIdentity, TokenError> {
        self.validate_at(token, jwt::now()).await
    }

    /// As [`ZoneTokens::validate`], at `now` (seconds since the epoch).
    pub async fn validate_at(&self, token: &str, now: u64) -> Result<ZoneIdentity, TokenError> {
        let unverified = jwt::parse(token)?;
        let key = self.keys.get(unverified.kid()).await?;
        let claims = unverified.verify(&key, now)?;
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            let key = ResourceKey::global(ResourceType::GlobalSecret, REVOCATIONS_SECRET);
            if crate::revoked(&self.manager, &key, jti).await? {
                return Err(TokenError::Revoked);
            }
        }
        let zone = match claims.get("Zone") {
            Some(Value::String(z)) if !z.is_empty() => z.clone(),
            _ => return Err(TokenError::Claims("Zone must be a non-empty string".into())),
        };
        let scope = match claims.get("Scope") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| TokenError::Claims("Scope must be a list of strings".into()))?,
        };
        Ok(ZoneIdentity { zone, scope })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::signing_key::{SigningKey, public_key_pem};
    use kuma_core::manager::ManagerOptions;
    use kuma_core::model::system::SecretSpec;
    use kuma_core::resource::{Resource, Spec};
    use std::sync::Arc;

    fn manager() -> ResourceManager {
        ResourceManager::new(
            Arc::new(kuma_store::MemoryStore::new()),
            ManagerOptions::default(),
        )
    }

    #[tokio::test]
    async fn a_zone_verifies_globals_tokens_with_the_public_half_alone() {
        let global = manager();
        let tokens = ZoneTokens::issuing(global.clone());
        assert!(tokens.ensure_signing_key().await.unwrap());
        let identity = ZoneIdentity {
            zone: "zone-1".into(),
            scope: vec![INGRESS_SCOPE.into()],
        };
        let token = tokens
            .issue(&identity, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(tokens.validate(&token).await.unwrap(), identity);

        // The zone holds what global sends it: the public key under its public name.
        let private = global
            .get(&ResourceKey::global(
                ResourceType::GlobalSecret,
                "zone-token-signing-key-1",
            ))
            .await
            .unwrap();
        let Spec::GlobalSecret(secret) = &private.spec else {
            panic!("a global secret")
        };
        let public = public_key_pem(&secret.bytes().unwrap()).unwrap();
        assert!(public.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        let zone = manager();
        let name = public_secret_name(&private.meta.name).unwrap();
        assert_eq!(name, "zone-token-signing-public-key-1");
        zone.create(Resource::new(
            "",
            &name,
            Spec::GlobalSecret(SecretSpec::from_bytes(public.as_bytes())),
        ))
        .await
        .unwrap();
        let federated = ZoneTokens::federated(zone.clone());
        let granted = federated.validate(&token).await.unwrap();
        assert!(granted.admits("zone-1", INGRESS_SCOPE).is_ok());
        let other_zone = granted.admits("zone-2", INGRESS_SCOPE).unwrap_err();
        assert!(other_zone.to_string().contains("zone-2"), "{other_zone}");
        let egress = granted.admits("zone-1", EGRESS_SCOPE).unwrap_err();
        assert!(egress.to_string().contains("egress"), "{egress}");
        // A zone cannot issue, and a public key cannot sign.
        assert!(
            federated
                .issue(&identity, Duration::from_secs(60))
                .await
                .is_err()
        );
        let key = SigningKey::from_public_pem("1", public.as_bytes()).unwrap();
        assert!(key.sign(b"x").is_err());

        // A token signed by another key, an expired one, a revoked one: refused.
        let forger =
            SigningKey::from_pem("1", SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let mut claims = Map::new();
        claims.insert("Zone".into(), json!("zone-1"));
        let forged = jwt::issue(&forger, claims, Duration::from_secs(60), jwt::now()).unwrap();
        assert_eq!(
            federated.validate(&forged).await.unwrap_err(),
            TokenError::BadSignature
        );
        let later = jwt::now() + 3600;
        assert_eq!(
            federated.validate_at(&token, later).await.unwrap_err(),
            TokenError::Expired
        );
        let jti = jwt::parse(&token)
            .unwrap()
            .claim_str("jti")
            .unwrap()
            .to_string();
        zone.create(Resource::new(
            "",
            REVOCATIONS_SECRET,
            Spec::GlobalSecret(SecretSpec::from_bytes(format!("other,{jti}").as_bytes())),
        ))
        .await
        .unwrap();
        assert_eq!(
            federated.validate(&token).await.unwrap_err(),
            TokenError::Revoked
        );
    }

    #[tokio::test]
    async fn requests_name_a_zone_and_known_scopes() {
        let tokens = ZoneTokens::issuing(manager());
        let no_zone = ZoneIdentity::default();
        assert!(
            tokens
                .issue(&no_zone, Duration::from_secs(1))
                .await
                .is_err()
        );
        let bad_scope = ZoneIdentity {
            zone: "z".into(),
            scope: vec!["dataplane".into()],
        };
        let err = tokens
            .issue(&bad_scope, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("dataplane"), "{err}");
        let both = ZoneIdentity {
            zone: "z".into(),
            scope: vec![],
        };
        let token = tokens.issue(&both, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            tokens.validate(&token).await.unwrap().scope,
            [INGRESS_SCOPE, EGRESS_SCOPE]
        );
        assert!(public_secret_name("zone-token-signing-keys").is_none());
        assert!(public_secret_name("user-token-signing-key-1").is_none());
    }
}
