//! Authentication backed by the signing keys in the store: user tokens for the HTTP API,
//! dataplane tokens for the dp-server.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{Resource, ResourceKey, ResourceType};

use kuma_xds::lifecycle::node_dataplane;

use kuma_api::access::{AUTHENTICATED_GROUP, Identity, UserTokenValidator};
use kuma_ca::dataplane_token::DataplaneIdentity;
use kuma_ca::user_token::UserTokens;

/// Verifies bearer tokens with [`UserTokens`]; every verified user is also in
/// `mesh-system:authenticated`, as in Kuma.
pub struct TokenAuthenticator(pub Arc<UserTokens>);

#[async_trait::async_trait]
impl UserTokenValidator for TokenAuthenticator {
    async fn validate(&self, token: &str) -> Result<Identity, BoxError> {
        let user = self.0.validate(token).await?;
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
    ) -> Result<String, BoxError> {
        let identity = kuma_ca::dataplane_token::DataplaneIdentity {
            name: request.name.clone(),
            mesh: request.mesh.clone(),
            tags: request.tags.clone(),
            kind: request.kind.clone(),
        };
        Ok(self.0.issue(&identity, valid_for).await?)
    }
}

pub use kuma_core::errors::BoxError;

/// Decides what a data-plane proxy's credential grants: the dataplane token kuma-dp sends in
/// its bootstrap request and in its ADS stream's `authorization` metadata (with or without
/// `Bearer `). The returned identity is then matched against the Dataplane the proxy runs
/// ([`DataplaneIdentity::admits`]: mesh, name when set, required tags).
///
/// The default, with `dpServer.authn.dpProxy.type: dpToken`, is [`DataplaneTokenAuthenticator`]
/// (Kuma's signed tokens); give another through
/// [`ControlPlaneBuilder::dataplane_authenticator`](crate::ControlPlaneBuilder::dataplane_authenticator).
///
/// ```
/// use kuma_ca::dataplane_token::DataplaneIdentity;
/// use kuma_cp::auth::{BoxError, DataplaneAuthenticator};
///
/// /// Admits any proxy of mesh `demo` that presents the shared secret.
/// struct SharedSecret(String);
///
/// #[async_trait::async_trait]
/// impl DataplaneAuthenticator for SharedSecret {
///     async fn verify(&self, credential: &str) -> Result<DataplaneIdentity, BoxError> {
///         if credential.trim_start_matches("Bearer ") != self.0 {
///             return Err("wrong shared secret".into());
///         }
///         Ok(DataplaneIdentity {
///             name: String::new(), // any Dataplane of the mesh
///             mesh: "demo".into(),
///             tags: Default::default(),
///             kind: "dataplane".into(),
///         })
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait DataplaneAuthenticator: Send + Sync + 'static {
    /// What `credential` grants, or why it grants nothing (the error never repeats the
    /// credential). Called before anything else the proxy sent is parsed.
    async fn verify(&self, credential: &str) -> Result<DataplaneIdentity, BoxError>;
}

/// Kuma's dataplane tokens, signed with the keys in the store, not revoked, for a proxy of type
/// `dataplane` (`dpServer.authn.dpProxy.type: dpToken`, the default).
pub struct DataplaneTokenAuthenticator(kuma_ca::dataplane_token::DataplaneTokens);

impl DataplaneTokenAuthenticator {
    /// Tokens verified with the signing keys in `manager`'s store.
    pub fn new(manager: ResourceManager) -> Self {
        DataplaneTokenAuthenticator(kuma_ca::dataplane_token::DataplaneTokens::new(manager))
    }
}

#[async_trait::async_trait]
impl DataplaneAuthenticator for DataplaneTokenAuthenticator {
    async fn verify(&self, token: &str) -> Result<DataplaneIdentity, BoxError> {
        let token = token.trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        if token.is_empty() {
            return Err(
                "a dataplane token is required (kuma-dp --dataplane-token-file; the control plane runs with dpServer.authn.dpProxy.type dpToken)"
                    .into(),
            );
        }
        let identity =
            self.0.validate(token).await.map_err(|e| {
                format!("invalid dataplane token: {}", kuma_core::errors::Chain(&e))
            })?;
        if !identity.kind.is_empty() && identity.kind != "dataplane" {
            return Err(format!(
                "invalid dataplane token: it is for a proxy of type {:?}, not a dataplane",
                identity.kind
            )
            .into());
        }
        Ok(identity)
    }
}

/// Admits a data-plane proxy only with a credential its [`DataplaneAuthenticator`] verifies and
/// whose identity admits the Dataplane the proxy runs. Used by `/bootstrap` and by ADS, where
/// the credential arrives in the `authorization` metadata.
pub(crate) struct ProxyAdmission {
    authenticator: Arc<dyn DataplaneAuthenticator>,
    manager: ResourceManager,
}

impl ProxyAdmission {
    /// Dataplanes from `manager`'s store, credentials checked by `authenticator`.
    pub(crate) fn new(
        authenticator: Arc<dyn DataplaneAuthenticator>,
        manager: ResourceManager,
    ) -> Self {
        ProxyAdmission {
            authenticator,
            manager,
        }
    }

    /// Whether `credential` lets `dataplane` run; the error says why not (never the credential).
    pub(crate) async fn admit(&self, credential: &str, dataplane: &Resource) -> Result<(), String> {
        Self::matches(&self.verify(credential).await?, dataplane)
    }

    /// What `credential` grants; needs no Dataplane, so callers check it before they parse
    /// anything else the caller sent.
    pub(crate) async fn verify(&self, credential: &str) -> Result<DataplaneIdentity, String> {
        self.authenticator
            .verify(credential)
            .await
            .map_err(|e| kuma_core::errors::chain(e.as_ref()))
    }

    /// Whether a verified `identity` lets `dataplane` run.
    pub(crate) fn matches(
        identity: &DataplaneIdentity,
        dataplane: &Resource,
    ) -> Result<(), String> {
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
impl xds_server::server::StreamAuthenticator for ProxyAdmission {
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
