//! Tokens for admins, as Kuma's API issues them; the answer is the token as text.
//!
//! - `POST /tokens/dataplane`: the body is `{"name", "mesh", "tags": {tag: [values]}, "type",
//!   "validFor"}`;
//! - `POST /tokens/zone`: the body is `{"zone", "scope": ["ingress", "egress"], "validFor"}`
//!   (zone proxies' tokens, issued by global or a standalone control plane).
//!
//! `validFor` is in Go duration syntax, default 10 years as in kumactl.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::ApiState;
use crate::access::Identity;
use crate::error::ApiError;

const TITLE: &str = "Could not issue a dataplane token";
const ZONE_TITLE: &str = "Could not issue a zone token";

/// What a token is requested for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneTokenRequest {
    /// The Dataplane's name (empty: any).
    #[serde(default)]
    pub name: String,
    /// The mesh.
    #[serde(default)]
    pub mesh: String,
    /// Tags the Dataplane must carry.
    #[serde(default)]
    pub tags: BTreeMap<String, BTreeSet<String>>,
    /// `dataplane` (default), `ingress` or `egress`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// How long it is valid (`24h`); empty: 10 years.
    #[serde(default)]
    pub valid_for: String,
}

/// Issues dataplane tokens. The control plane provides one backed by the mesh signing keys.
#[async_trait::async_trait]
pub trait DataplaneTokenIssuer: Send + Sync + 'static {
    /// The token, or why none can be issued (the mesh does not exist, ...).
    async fn issue(
        &self,
        request: &DataplaneTokenRequest,
        valid_for: std::time::Duration,
    ) -> Result<String, crate::BoxError>;
}

/// What a zone token is requested for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneTokenRequest {
    /// The zone.
    #[serde(default)]
    pub zone: String,
    /// `ingress`, `egress` (empty: both).
    #[serde(default)]
    pub scope: Vec<String>,
    /// How long it is valid (`24h`); empty: 10 years.
    #[serde(default)]
    pub valid_for: String,
}

/// Issues zone tokens. Global and standalone control planes provide one backed by the
/// zone-token signing keys.
#[async_trait::async_trait]
pub trait ZoneTokenIssuer: Send + Sync + 'static {
    /// The token, or why none can be issued.
    async fn issue(
        &self,
        request: &ZoneTokenRequest,
        valid_for: std::time::Duration,
    ) -> Result<String, crate::BoxError>;
}

/// Ten years, kumactl's default validity.
const DEFAULT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

pub(crate) async fn issue_dataplane_token(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if !who.is_on(&state.access.generate_dp_token) {
        return Err(ApiError::forbidden(format!(
            "user {:?} may not generate dataplane tokens (access.static.generateDpToken)",
            who.name
        )));
    }
    let Some(issuer) = &state.dataplane_tokens else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            TITLE,
            "this control plane does not issue dataplane tokens",
        ));
    };
    let request: DataplaneTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field(TITLE, "body", e.to_string()))?;
    if request.mesh.is_empty() {
        return Err(ApiError::bad_field(TITLE, "mesh", "cannot be empty"));
    }
    if !matches!(
        request.kind.as_str(),
        "" | "dataplane" | "ingress" | "egress"
    ) {
        return Err(ApiError::bad_field(
            TITLE,
            "type",
            "must be dataplane, ingress or egress",
        ));
    }
    let valid_for = validity(TITLE, &request.valid_for)?;
    // Before anything else: a mesh's first token makes its signing key, which is costly.
    let mesh = kuma_core::resource::ResourceKey::global(
        kuma_core::resource::ResourceType::Mesh,
        &request.mesh,
    );
    match state.manager.get(&mesh).await {
        Ok(_) => {}
        Err(kuma_core::manager::ManagerError::Store(kuma_core::store::StoreError::NotFound(_))) => {
            return Err(ApiError::bad_field(
                TITLE,
                "mesh",
                format!("mesh {:?} does not exist", request.mesh),
            ));
        }
        Err(e) => return Err(ApiError::from_manager(TITLE, e)),
    }
    let token = issuer
        .issue(&request, valid_for)
        .await
        .map_err(|e| ApiError::bad_field(TITLE, "mesh", kuma_core::errors::chain(e.as_ref())))?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], token).into_response())
}

/// `validFor` as a duration (empty: [`DEFAULT_VALIDITY`]); an error names the field.
fn validity(title: &str, valid_for: &str) -> Result<std::time::Duration, ApiError> {
    if valid_for.is_empty() {
        return Ok(DEFAULT_VALIDITY);
    }
    let d: kuma_core::duration::Duration = valid_for
        .parse()
        .map_err(|e: String| ApiError::bad_field(title, "validFor", e))?;
    if d.get().is_zero() {
        return Err(ApiError::bad_field(title, "validFor", "must be positive"));
    }
    Ok(d.get())
}

pub(crate) async fn issue_zone_token(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if !who.is_on(&state.access.generate_zone_token) {
        return Err(ApiError::forbidden(format!(
            "user {:?} may not generate zone tokens (access.static.generateZoneToken)",
            who.name
        )));
    }
    let Some(issuer) = &state.zone_tokens else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ZONE_TITLE,
            "this control plane does not issue zone tokens (the global control plane does)",
        ));
    };
    let request: ZoneTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field(ZONE_TITLE, "body", e.to_string()))?;
    if request.zone.is_empty() {
        return Err(ApiError::bad_field(ZONE_TITLE, "zone", "cannot be empty"));
    }
    if let Some(bad) = request
        .scope
        .iter()
        .find(|s| !matches!(s.as_str(), "ingress" | "egress"))
    {
        return Err(ApiError::bad_field(
            ZONE_TITLE,
            "scope",
            format!("{bad:?} is not one of ingress, egress"),
        ));
    }
    let valid_for = validity(ZONE_TITLE, &request.valid_for)?;
    let token = issuer.issue(&request, valid_for).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ZONE_TITLE,
            kuma_core::errors::chain(e.as_ref()),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], token).into_response())
}
