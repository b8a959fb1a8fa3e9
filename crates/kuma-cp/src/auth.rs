//! User-token authentication for the HTTP API, backed by the signing keys in the store.

use std::sync::Arc;

use kuma_api::access::{AUTHENTICATED_GROUP, Identity, UserTokenValidator};
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
