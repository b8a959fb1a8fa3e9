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
