//! Authentication backed by the signing keys in the store: user tokens for the HTTP API,
//! dataplane tokens for the dp-server.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{Resource, ResourceKey, ResourceType};

use crate::lifecycle::node_dataplane;

use kuma_api::access::{AUTHENTICATED_GROUP, Identity, UserTokenValidator};
use kuma_ca::dataplane_token::DataplaneIdentity;
use kuma_ca::user_token::UserTokens;

/// Verifies bearer tokens with [`UserTokens`]; every verified user is also in
/// `mesh-system:authenticated`, as in Kuma.
pub struct TokenAuthenticator(pub Arc<UserTokens>);

#[async_trait::async_trait]
impl UserTokenValidator for TokenAuthenticator {
    async fn validate(&self, token: &str) -> Result<Identity, String> {
        let user = self.0.validate(token).await.map_err(|e| e.to_string())?;
        let mut groups = user.groups;
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.into());
        }
        Ok(Identity {
            name: user.name,
            groups,
        })
    }
}

/// Issues dataplane tokens with [`DataplaneTokens`](kuma_ca::dataplane_token::DataplaneTokens)
/// for `POST /tokens/dataplane`.
pub struct DataplaneTokenIssuer(pub kuma_ca::dataplane_token::DataplaneTokens);

#[async_trait::async_trait]
impl kuma_api::tokens::DataplaneTokenIssuer for DataplaneTokenIssuer {
    async fn issue(
        &self,
        request: &kuma_api::tokens::DataplaneTokenRequest,
        valid_for: std::time::Duration,
    ) -> Result<String, String> {
        let identity = kuma_ca::dataplane_token::DataplaneIdentity {
            name: request.name.clone(),
            mesh: request.mesh.clone(),
            tags: request.tags.clone(),
            kind: request.kind.clone(),
        };
        self.0
            .issue(&identity, valid_for)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Admits a data-plane proxy only with a dataplane token that verifies, is not revoked and
/// grants the Dataplane it runs (`dpServer.authn.dpProxy.type: dpToken`, the default). Used by
/// `/bootstrap` and by ADS, where the token arrives in the `authorization` metadata.
pub struct DataplaneTokenAuthenticator {
    tokens: kuma_ca::dataplane_token::DataplaneTokens,
    manager: ResourceManager,
}

impl DataplaneTokenAuthenticator {
    /// Tokens and Dataplanes from `manager`'s store.
    pub fn new(manager: ResourceManager) -> Self {
        DataplaneTokenAuthenticator {
            tokens: kuma_ca::dataplane_token::DataplaneTokens::new(manager.clone()),
            manager,
        }
    }

    /// Whether `token` lets `dataplane` run; the error says why not (never the token).
    pub async fn admit(&self, token: &str, dataplane: &Resource) -> Result<(), String> {
        Self::matches(&self.verify(token).await?, dataplane)
    }

    /// What `token` grants, if it is a dataplane token that verifies now (signature, times,
    /// revocation); the error says why not (never the token). Needs no Dataplane, so callers
    /// check the token before they parse anything else the caller sent.
    pub async fn verify(&self, token: &str) -> Result<DataplaneIdentity, String> {
        let token = token.trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        if token.is_empty() {
            return Err(
                "a dataplane token is required (kuma-dp --dataplane-token-file; the control plane runs with dpServer.authn.dpProxy.type dpToken)"
                    .into(),
            );
        }
        let identity = self
            .tokens
            .validate(token)
            .await
            .map_err(|e| format!("invalid dataplane token: {e}"))?;
        if !identity.kind.is_empty() && identity.kind != "dataplane" {
            return Err(format!(
                "invalid dataplane token: it is for a proxy of type {:?}, not a dataplane",
                identity.kind
            ));
        }
        Ok(identity)
    }

    /// Whether a verified `identity` lets `dataplane` run.
    pub fn matches(identity: &DataplaneIdentity, dataplane: &Resource) -> Result<(), String> {
        identity
            .admits(dataplane)
            .map_err(|e| format!("the dataplane token does not match: {e}"))
    }

    /// The Dataplane a stream's node runs: from its metadata (what the proxy will register),
    /// else the stored one named by the node id `<mesh>.<name>`.
    async fn dataplane_of(&self, node: &Node) -> Result<Resource, String> {
        if let Some(dataplane) = node_dataplane(Some(node))? {
            return Ok(dataplane);
        }
        let (mesh, name) = node
            .id
            .split_once('.')
            .ok_or_else(|| format!("node id {:?} is not <mesh>.<name>", node.id))?;
        self.manager
            .get(&ResourceKey::new(ResourceType::Dataplane, mesh, name))
            .await
            .map_err(|_| format!("no Dataplane {name:?} in mesh {mesh:?}"))
    }
}

#[async_trait::async_trait]
impl kuma_xds::server::StreamAuthenticator for DataplaneTokenAuthenticator {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        node: &Node,
    ) -> Result<(), tonic::Status> {
        let dataplane = self
            .dataplane_of(node)
            .await
            .map_err(tonic::Status::permission_denied)?;
        // The stream is served the snapshot of `node.id`: it must be the Dataplane the token
        // is checked against, or a token for one proxy would fetch another's config.
        let expected = kuma_xds::generate::node_id(&dataplane.meta.mesh, &dataplane.meta.name);
        if node.id != expected {
            return Err(tonic::Status::permission_denied(format!(
                "node.id {:?} does not name the Dataplane in the node metadata ({expected:?})",
                node.id
            )));
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.admit(token, &dataplane)
            .await
            .map_err(tonic::Status::unauthenticated)
    }
}
