//! User tokens for the HTTP API, and the admin token made at first start.
//!
//! A user token is an RS256 JWT with claims `Name` and `Groups`, signed with the newest global
//! secret `user-token-signing-key-<serial>`. A token whose `jti` is listed (comma-separated) in
//! the global secret `user-token-revocations` is refused. At first start the control plane
//! stores a ten-year admin token in the global secret `admin-user-token`; an admin reads it with
//! `GET /global-secrets/admin-user-token` (from localhost).

use std::time::Duration;

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::StoreError;
use serde_json::{Map, Value, json};

use crate::TokenError;
use crate::jwt;
use crate::signing_key::SigningKeys;

/// Prefix of the user-token signing keys.
pub const SIGNING_KEY_PREFIX: &str = "user-token-signing-key";
/// Global secret listing revoked token ids.
pub const REVOCATIONS: &str = "user-token-revocations";
/// Global secret holding the bootstrapped admin token.
pub const ADMIN_USER_TOKEN: &str = "admin-user-token";
/// Lifetime of the bootstrapped admin token (as Kuma's: ten years).
pub const ADMIN_TOKEN_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The user a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl User {
    /// Kuma's admin: `mesh-system:admin` in group `mesh-system:admin`.
    pub fn admin() -> Self {
        User {
            name: "mesh-system:admin".into(),
            groups: vec!["mesh-system:admin".into()],
        }
    }
}

/// Issues and validates user tokens against the keys in a store.
pub struct UserTokens {
    manager: ResourceManager,
    keys: SigningKeys,
}

impl UserTokens {
    /// Tokens signed with the user-token keys in `manager`'s store.
    pub fn new(manager: ResourceManager) -> Self {
        UserTokens {
            keys: SigningKeys::new(manager.clone(), SIGNING_KEY_PREFIX),
            manager,
        }
    }

    /// A token for `user`, valid for `valid_for`.
    pub async fn issue(&self, user: &User, valid_for: Duration) -> Result<String, TokenError> {
        let key = self.keys.latest().await?;
        let mut claims = Map::new();
        claims.insert("Name".into(), json!(user.name));
        claims.insert("Groups".into(), json!(user.groups));
        jwt::issue(&key, claims, valid_for, jwt::now())
    }

    /// The user `token` names, if it verifies now and is not revoked.
    pub async fn validate(&self, token: &str) -> Result<User, TokenError> {
        self.validate_at(token, jwt::now()).await
    }

    /// As [`UserTokens::validate`], at `now` (seconds since the epoch).
    pub async fn validate_at(&self, token: &str, now: u64) -> Result<User, TokenError> {
        let unverified = jwt::parse(token)?;
        let key = self.keys.get(unverified.kid()).await?;
        let claims = unverified.verify(&key, now)?;
        if let Some(jti) = claims.get("jti").and_then(Value::as_str)
            && self.revoked(jti).await?
        {
            return Err(TokenError::Revoked);
        }
        let name = match claims.get("Name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(TokenError::Claims("Name must be a non-empty string".into())),
        };
        let groups = match claims.get("Groups") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| TokenError::Claims("Groups must be strings".into()))?,
            Some(_) => return Err(TokenError::Claims("Groups must be a list".into())),
        };
        Ok(User { name, groups })
    }

    /// Makes the signing key and the `admin-user-token` secret unless they exist; whether the
    /// token was created now.
    pub async fn bootstrap_admin_token(&self) -> Result<bool, TokenError> {
        self.keys.ensure_default().await?;
        let key = ResourceKey::global(ResourceType::GlobalSecret, ADMIN_USER_TOKEN);
        match self.manager.get(&key).await {
            Ok(_) => return Ok(false),
            Err(ManagerError::Store(StoreError::NotFound(_))) => {}
            Err(e) => return Err(e.into()),
        }
        let token = self.issue(&User::admin(), ADMIN_TOKEN_VALIDITY).await?;
        let secret = Resource::new(
            "",
            ADMIN_USER_TOKEN,
            Spec::GlobalSecret(SecretSpec::from_bytes(token.as_bytes())),
        );
        match self.manager.create(secret).await {
            Ok(_) => Ok(true),
            Err(ManagerError::Store(StoreError::AlreadyExists(_))) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn revoked(&self, jti: &str) -> Result<bool, TokenError> {
        let key = ResourceKey::global(ResourceType::GlobalSecret, REVOCATIONS);
        crate::revoked(&self.manager, &key, jti).await
    }
}

#[cfg(test)]
mod tests;
