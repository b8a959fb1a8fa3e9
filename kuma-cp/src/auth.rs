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

/// Issues zone tokens with [`ZoneTokens`](kuma_ca::zone_token::ZoneTokens) for
/// `POST /tokens/zone` (global and standalone).
pub struct ZoneTokenIssuer(pub kuma_ca::zone_token::ZoneTokens);

#[async_trait::async_trait]
impl kuma_api::tokens::ZoneTokenIssuer for ZoneTokenIssuer {
    async fn issue(
        &self,
        request: &kuma_api::tokens::ZoneTokenRequest,
        valid_for: std::time::Duration,
    ) -> Result<String, BoxError> {
        let identity = kuma_ca::zone_token::ZoneIdentity {
            zone: request.zone.clone(),
            scope: request.scope.clone(),
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

/// How zone proxies (ZoneIngress, ZoneEgress) authenticate: with a zone token for this zone
/// (`dpServer.authn.zoneProxy.type: zoneToken`, the default).
pub(crate) struct ZoneProxyAuthenticator {
    tokens: kuma_ca::zone_token::ZoneTokens,
    /// This control plane's zone, which the token must name.
    zone: String,
}

impl ZoneProxyAuthenticator {
    /// Tokens verified with `tokens`' keys, for zone `zone`.
    pub(crate) fn new(tokens: kuma_ca::zone_token::ZoneTokens, zone: &str) -> Self {
        ZoneProxyAuthenticator {
            tokens,
            zone: zone.to_string(),
        }
    }

    async fn verify(&self, credential: &str, scope: &str) -> Result<(), String> {
        let token = credential.trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        if token.is_empty() {
            return Err(
                "a zone token is required (kuma-dp --dataplane-token-file; the control plane runs with dpServer.authn.zoneProxy.type zoneToken)"
                    .into(),
            );
        }
        let identity = self
            .tokens
            .validate(token)
            .await
            .map_err(|e| format!("invalid zone token: {}", kuma_core::errors::Chain(&e)))?;
        identity
            .admits(&self.zone, scope)
            .map_err(|e| format!("the zone token does not match: {e}"))
    }
}

/// What a proxy's credential was checked for: the kind of proxy it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// A data-plane proxy (a Dataplane).
    Dataplane,
    /// A zone ingress (a ZoneIngress).
    Ingress,
    /// A zone egress (a ZoneEgress).
    Egress,
}

impl ProxyKind {
    /// The kind a bootstrap request's `proxyType` names (`None`: an unknown type).
    pub(crate) fn of_proxy_type(proxy_type: &str) -> Option<Self> {
        match proxy_type {
            "" | "dataplane" => Some(ProxyKind::Dataplane),
            "ingress" => Some(ProxyKind::Ingress),
            "egress" => Some(ProxyKind::Egress),
            _ => None,
        }
    }

    /// The kind of proxy `resource` stands for (`None`: not a proxy resource).
    pub(crate) fn of(resource: &Resource) -> Option<Self> {
        match resource.rtype() {
            ResourceType::Dataplane => Some(ProxyKind::Dataplane),
            ResourceType::ZoneIngress => Some(ProxyKind::Ingress),
            ResourceType::ZoneEgress => Some(ProxyKind::Egress),
            _ => None,
        }
    }

    /// The resource type of this kind's proxies.
    pub(crate) fn resource_type(self) -> ResourceType {
        match self {
            ProxyKind::Dataplane => ResourceType::Dataplane,
            ProxyKind::Ingress => ResourceType::ZoneIngress,
            ProxyKind::Egress => ResourceType::ZoneEgress,
        }
    }
}

/// What a verified credential grants.
#[derive(Debug)]
pub(crate) enum Granted {
    /// Any proxy of the kind (its authentication type is `none`).
    Any,
    /// The Dataplanes a dataplane token admits.
    Dataplane(DataplaneIdentity),
    /// A zone proxy of this zone, of the kind checked.
    ZoneProxy,
}

/// Admits a proxy only with a credential that lets it run: a Dataplane with what its
/// [`DataplaneAuthenticator`] verifies (and whose identity admits the Dataplane), a zone proxy
/// with a zone token for this zone and its scope. Each kind can have authentication turned
/// off (`dpServer.authn.dpProxy.type`, `dpServer.authn.zoneProxy.type`: `none`). Used by
/// `/bootstrap` and by ADS, where the credential arrives in the `authorization` metadata.
pub(crate) struct ProxyAdmission {
    /// `None`: data-plane proxies are not authenticated.
    authenticator: Option<Arc<dyn DataplaneAuthenticator>>,
    /// `None`: zone proxies are not authenticated.
    zone_proxies: Option<ZoneProxyAuthenticator>,
    manager: ResourceManager,
}

impl ProxyAdmission {
    /// Resources from `manager`'s store; Dataplanes' credentials checked by `authenticator`,
    /// zone proxies' by `zone_proxies` (each `None`: not checked).
    pub(crate) fn new(
        authenticator: Option<Arc<dyn DataplaneAuthenticator>>,
        zone_proxies: Option<ZoneProxyAuthenticator>,
        manager: ResourceManager,
    ) -> Self {
        ProxyAdmission {
            authenticator,
            zone_proxies,
            manager,
        }
    }

    /// Whether `credential` lets `resource` (a Dataplane, ZoneIngress or ZoneEgress) run; the
    /// error says why not (never the credential).
    pub(crate) async fn admit(&self, credential: &str, resource: &Resource) -> Result<(), String> {
        let kind = ProxyKind::of(resource)
            .ok_or_else(|| format!("a {} is not a proxy", resource.rtype()))?;
        Self::matches(&self.verify(kind, credential).await?, resource)
    }

    /// What `credential` grants a proxy of `kind`; needs no resource, so callers check it
    /// before they parse anything else the caller sent.
    pub(crate) async fn verify(
        &self,
        kind: ProxyKind,
        credential: &str,
    ) -> Result<Granted, String> {
        match kind {
            ProxyKind::Dataplane => match &self.authenticator {
                None => Ok(Granted::Any),
                Some(a) => a
                    .verify(credential)
                    .await
                    .map(Granted::Dataplane)
                    .map_err(|e| kuma_core::errors::chain(e.as_ref())),
            },
            ProxyKind::Ingress | ProxyKind::Egress => match &self.zone_proxies {
                None => Ok(Granted::Any),
                Some(z) => {
                    let scope = if kind == ProxyKind::Ingress {
                        kuma_ca::zone_token::INGRESS_SCOPE
                    } else {
                        kuma_ca::zone_token::EGRESS_SCOPE
                    };
                    z.verify(credential, scope)
                        .await
                        .map(|()| Granted::ZoneProxy)
                }
            },
        }
    }

    /// Whether a verified grant lets `resource` run.
    pub(crate) fn matches(granted: &Granted, resource: &Resource) -> Result<(), String> {
        match granted {
            Granted::Dataplane(identity) => identity
                .admits(resource)
                .map_err(|e| format!("the dataplane token does not match: {e}")),
            Granted::Any | Granted::ZoneProxy => Ok(()),
        }
    }

    /// The proxy resource a stream's node runs: from its metadata (what the proxy will
    /// register), else the stored one named by the node id (`<mesh>.<name>` for a Dataplane,
    /// `.<name>` for a zone proxy, which must then be registered already).
    async fn proxy_of(&self, node: &Node) -> Result<Resource, String> {
        if let Some(resource) = node_dataplane(Some(node))? {
            return Ok(resource);
        }
        let (mesh, name) = node
            .id
            .split_once('.')
            .ok_or_else(|| format!("node id {:?} is not <mesh>.<name>", node.id))?;
        if mesh.is_empty() {
            for rtype in [ResourceType::ZoneIngress, ResourceType::ZoneEgress] {
                if let Ok(r) = self.manager.get(&ResourceKey::global(rtype, name)).await {
                    return Ok(r);
                }
            }
            return Err(format!("no ZoneIngress or ZoneEgress {name:?}"));
        }
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
            .proxy_of(node)
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
