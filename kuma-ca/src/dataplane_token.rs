//! Dataplane tokens, as Kuma makes them: RS256 JWTs signed with the mesh's keys (mesh-owned
//! secrets `dataplane-token-signing-key-<mesh>[-<serial>]`, the serial as `kid`), with claims
//! `Name`, `Mesh`, `Tags` (`{tag: [values]}`), `Type`, `jti`, `iat`, `nbf`, `exp`; revoked by
//! listing their `jti` in the mesh secret `dataplane-token-revocations-<mesh>`.
//!
//! A proxy presents its token; [`DataplaneTokens::validate`] checks signature, times and
//! revocation, and [`DataplaneIdentity::admits`] checks that the token is for that Dataplane:
//! same mesh, same name when the token names one, and every tag of the token among the
//! Dataplane's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuma_core::manager::ResourceManager;
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType};
use serde_json::{Map, Value, json};

use crate::TokenError;
use crate::jwt;
use crate::signing_key::SigningKeys;

/// The signing-key secret prefix of `mesh`.
pub fn signing_key_prefix(mesh: &str) -> String {
    format!("dataplane-token-signing-key-{mesh}")
}

/// The revocation secret of `mesh`.
pub fn revocations_secret(mesh: &str) -> String {
    format!("dataplane-token-revocations-{mesh}")
}

/// What a dataplane token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneIdentity {
    /// The Dataplane's name (empty: any name).
    pub name: String,
    /// The mesh.
    pub mesh: String,
    /// Tags the Dataplane must carry.
    pub tags: BTreeMap<String, BTreeSet<String>>,
    /// `dataplane` (or `ingress`, `egress`).
    pub kind: String,
}

impl DataplaneIdentity {
    /// Whether this identity may run `dataplane`; the error says which claim does not match.
    pub fn admits(&self, dataplane: &Resource) -> Result<(), TokenError> {
        if dataplane.meta.mesh != self.mesh {
            return Err(TokenError::Claims(format!(
                "the token is for mesh {:?}, the Dataplane is in mesh {:?}",
                self.mesh, dataplane.meta.mesh
            )));
        }
        if !self.name.is_empty() && dataplane.meta.name != self.name {
            return Err(TokenError::Claims(format!(
                "the token is for Dataplane {:?}, not {:?}",
                self.name, dataplane.meta.name
            )));
        }
        let Some(spec) = dataplane.spec_as::<DataplaneSpec>() else {
            return Err(TokenError::Claims(
                "a dataplane token admits only Dataplanes".into(),
            ));
        };
        let mut carried: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for inbound in spec.inbounds() {
            for (k, v) in &inbound.tags {
                carried.entry(k).or_default().insert(v);
            }
        }
        if let Some(g) = spec.networking.as_ref().and_then(|n| n.gateway.as_ref()) {
            for (k, v) in &g.tags {
                carried.entry(k).or_default().insert(v);
            }
        }
        for (tag, values) in &self.tags {
            for v in values {
                if !carried
                    .get(tag.as_str())
                    .is_some_and(|c| c.contains(v.as_str()))
                {
                    return Err(TokenError::Claims(format!(
                        "the token requires tag {tag}={v}, which the Dataplane does not have"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Issues and validates dataplane tokens.
pub struct DataplaneTokens {
    manager: ResourceManager,
    /// Each mesh's signing keys, kept once a token of the mesh verified (or was issued), so a
    /// key is parsed once, not once per token. Unverified tokens add nothing: they may name
    /// any mesh.
    keys: Mutex<HashMap<String, Arc<SigningKeys>>>,
}

impl DataplaneTokens {
    /// Tokens kept in `manager`'s store.
    pub fn new(manager: ResourceManager) -> Self {
        DataplaneTokens {
            manager,
            keys: Mutex::default(),
        }
    }

    /// `mesh`'s signing keys: the kept ones, or new ones (see [`Self::keep`]).
    fn keys(&self, mesh: &str) -> Arc<SigningKeys> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get(mesh) {
            Some(kept) => kept.clone(),
            None => Arc::new(SigningKeys::in_mesh(
                self.manager.clone(),
                mesh,
                &signing_key_prefix(mesh),
            )),
        }
    }

    /// Keeps `keys` as `mesh`'s, if none are kept yet.
    fn keep(&self, mesh: &str, keys: Arc<SigningKeys>) {
        let mut kept = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        kept.entry(mesh.to_string()).or_insert(keys);
    }

    /// A token for `identity`, valid for `valid_for`; makes the mesh's first signing key if it
    /// has none. The mesh must exist.
    pub async fn issue(
        &self,
        identity: &DataplaneIdentity,
        valid_for: Duration,
    ) -> Result<String, TokenError> {
        let keys = self.keys(&identity.mesh);
        keys.ensure_default().await?;
        let key = keys.latest().await?;
        self.keep(&identity.mesh, keys);
        let mut claims = Map::new();
        claims.insert("Name".into(), json!(identity.name));
        claims.insert("Mesh".into(), json!(identity.mesh));
        claims.insert("Tags".into(), json!(identity.tags));
        let kind = if identity.kind.is_empty() {
            "dataplane"
        } else {
            identity.kind.as_str()
        };
        claims.insert("Type".into(), json!(kind));
        jwt::issue(&key, claims, valid_for, jwt::now())
    }

    /// The identity `token` grants, if it verifies now and is not revoked.
    pub async fn validate(&self, token: &str) -> Result<DataplaneIdentity, TokenError> {
        self.validate_at(token, jwt::now()).await
    }

    /// As [`DataplaneTokens::validate`], at `now` (seconds since the epoch).
    pub async fn validate_at(
        &self,
        token: &str,
        now: u64,
    ) -> Result<DataplaneIdentity, TokenError> {
        let unverified = jwt::parse(token)?;
        // The mesh names the key store; it is trusted only once the signature verifies.
        let mesh = unverified
            .claim_str("Mesh")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| TokenError::Claims("Mesh must be a non-empty string".into()))?
            .to_string();
        let keys = self.keys(&mesh);
        let key = keys.get(unverified.kid()).await?;
        let claims = unverified.verify(&key, now)?;
        self.keep(&mesh, keys);
        if let Some(jti) = claims.get("jti").and_then(Value::as_str)
            && self.revoked(&mesh, jti).await?
        {
            return Err(TokenError::Revoked);
        }
        let string = |k: &str| match claims.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(TokenError::Claims(format!("{k} must be a string"))),
        };
        let tags = match claims.get("Tags") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| TokenError::Claims("Tags must map tags to lists of values".into()))?,
        };
        Ok(DataplaneIdentity {
            name: string("Name")?,
            mesh,
            tags,
            kind: string("Type")?,
        })
    }

    async fn revoked(&self, mesh: &str, jti: &str) -> Result<bool, TokenError> {
        let key = ResourceKey::new(ResourceType::Secret, mesh, &revocations_secret(mesh));
        crate::revoked(&self.manager, &key, jti).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing_key::SigningKey;
    use kuma_core::manager::ManagerOptions;

    #[tokio::test]
    async fn a_meshs_keys_are_kept_once_a_token_verifies_and_never_for_an_unverified_mesh() {
        let manager = ResourceManager::new(
            Arc::new(kuma_store::MemoryStore::new()),
            ManagerOptions::default(),
        );
        manager.ensure_default_mesh().await.unwrap();
        let tokens = DataplaneTokens::new(manager);
        let identity = DataplaneIdentity {
            name: "web-1".into(),
            mesh: "default".into(),
            tags: BTreeMap::new(),
            kind: String::new(),
        };
        let token = tokens
            .issue(&identity, Duration::from_secs(60))
            .await
            .unwrap();
        let kept = tokens.keys("default");
        for _ in 0..3 {
            assert_eq!(tokens.validate(&token).await.unwrap().name, "web-1");
        }
        // The same keys every time, so the signing key was parsed once.
        assert!(Arc::ptr_eq(&kept, &tokens.keys("default")));

        // A token naming a mesh with no keys, signed by a key of its own: refused, and
        // nothing kept for it.
        let forger =
            SigningKey::from_pem("1", SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let mut claims = Map::new();
        claims.insert("Name".into(), json!("x"));
        claims.insert("Mesh".into(), json!("ghost"));
        let forged = jwt::issue(&forger, claims, Duration::from_secs(60), jwt::now()).unwrap();
        assert!(tokens.validate(&forged).await.is_err());
        let kept: Vec<String> = tokens.keys.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, ["default"]);
    }
}
