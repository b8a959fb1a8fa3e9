//! Who is calling, and what they may do, as Kuma decides it.
//!
//! - A request from a loopback address is an admin (unless `localhostIsAdmin` is off).
//! - Otherwise `Authorization: Bearer <user token>` names the user; a token that does not
//!   verify is refused with 401 whatever the request.
//! - Without a token the caller is `mesh-system:anonymous`: it may read, but not write (401), and
//!   never touch secrets (403).
//! - Secrets (`Secret`, `GlobalSecret`) are for admins only (`access.static.adminResources`:
//!   the `mesh-system:admin` user and group by default); so is issuing dataplane tokens
//!   (`generateDpToken`). The config a proxy is served is for `viewConfigDump` (everyone by
//!   default, as in Kuma; its private keys are always redacted).
//! - In read-only mode every write is refused with 405.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::AccessList;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kuma_core::resource::ResourceType;

use crate::ApiState;
use crate::error::ApiError;

/// The group whose members are admins.
pub const ADMIN_GROUP: &str = "mesh-system:admin";
/// The name of the admin Kuma's local requests act as.
pub const ADMIN_USER: &str = "mesh-system:admin";
/// The name of an unauthenticated caller.
pub const ANONYMOUS_USER: &str = "mesh-system:anonymous";
/// The group of an unauthenticated caller.
pub const UNAUTHENTICATED_GROUP: &str = "mesh-system:unauthenticated";
/// The group every authenticated caller is in.
pub const AUTHENTICATED_GROUP: &str = "mesh-system:authenticated";

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl Identity {
    /// The local admin.
    pub fn admin() -> Self {
        Identity {
            name: ADMIN_USER.into(),
            groups: vec![ADMIN_GROUP.into(), AUTHENTICATED_GROUP.into()],
        }
    }

    /// An unauthenticated caller.
    pub fn anonymous() -> Self {
        Identity {
            name: ANONYMOUS_USER.into(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
        }
    }

    /// Whether the caller authenticated.
    pub fn is_authenticated(&self) -> bool {
        !self.groups.iter().any(|g| g == UNAUTHENTICATED_GROUP)
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }
}

/// Verifies user tokens. The control plane provides one backed by its signing keys.
#[async_trait::async_trait]
pub trait UserTokenValidator: Send + Sync + 'static {
    /// The identity `token` carries, or why it is refused (expired, bad signature, revoked…).
    async fn validate(&self, token: &str) -> Result<Identity, crate::BoxError>;
}

/// Middleware: decides the caller's [`Identity`] and stores it in the request's extensions.
pub async fn identify(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let identity = if let Some(token) = bearer {
        let Some(validator) = &state.tokens else {
            return ApiError::unauthenticated("user tokens are not enabled").into_response();
        };
        match validator.validate(token).await {
            Ok(identity) => identity,
            Err(reason) => {
                let reason = kuma_core::errors::chain(reason.as_ref());
                return ApiError::unauthenticated(format!("invalid user token: {reason}"))
                    .into_response();
            }
        }
    } else if state.localhost_is_admin && remote.is_some_and(|a| a.ip().is_loopback()) {
        Identity::admin()
    } else {
        Identity::anonymous()
    };
    req.extensions_mut().insert(identity);
    next.run(req).await
}

/// Whether `rtype` is an admin resource (`access.static.adminResources` guards it).
pub fn is_admin_resource(rtype: ResourceType) -> bool {
    matches!(rtype, ResourceType::Secret | ResourceType::GlobalSecret)
}

impl Identity {
    /// Whether the caller is on `list`.
    pub fn is_on(&self, list: &AccessList) -> bool {
        list.allows(&self.name, &self.groups)
    }
}

/// May `who` read resources of `rtype`?
pub fn check_read(state: &ApiState, who: &Identity, rtype: ResourceType) -> Result<(), ApiError> {
    if is_admin_resource(rtype) && !who.is_on(&state.access.admin_resources) {
        return Err(ApiError::forbidden(format!(
            "user {:?} cannot access {rtype}: it is for admins only (access.static.adminResources)",
            who.name
        )));
    }
    Ok(())
}

/// May `who` see the config a proxy is served (`access.static.viewConfigDump`)?
pub fn check_config_dump(state: &ApiState, who: &Identity) -> Result<(), ApiError> {
    if !who.is_on(&state.access.view_config_dump) {
        return Err(ApiError::forbidden(format!(
            "user {:?} cannot view proxy configs (access.static.viewConfigDump)",
            who.name
        )));
    }
    Ok(())
}

/// May `who` write resources of `rtype`?
pub fn check_write(state: &ApiState, who: &Identity, rtype: ResourceType) -> Result<(), ApiError> {
    if state.read_only {
        return Err(ApiError::method_not_allowed(
            "the API server is in read-only mode",
        ));
    }
    if !who.is_authenticated() {
        return Err(ApiError::unauthenticated(
            "writes need a user token (Authorization: Bearer <token>) or a request from localhost",
        ));
    }
    check_read(state, who, rtype)
}
