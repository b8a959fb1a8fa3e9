//! `POST /bootstrap`: the Envoy bootstrap ([`kuma_xds::bootstrap`]) for a data-plane proxy whose
//! token verifies and whose mesh exists, or for a zone proxy (`proxyType` `ingress` or
//! `egress`, carrying its ZoneIngress or ZoneEgress) whose zone token verifies.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kuma_core::manager::ResourceManager;
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_xds::bootstrap::{
    BootstrapRequest, ControlPlaneTarget, envoy_bootstrap, proxy_resource_of,
};
use serde_json::json;

use crate::auth::{ProxyAdmission, ProxyKind};

/// What the bootstrap handler needs.
#[derive(Clone)]
pub(crate) struct BootstrapState {
    /// Validating access to the store.
    pub(crate) manager: ResourceManager,
    /// Where Envoy reaches the control plane.
    pub(crate) target: ControlPlaneTarget,
    /// Checks the request's dataplane token (`None`: `dpServer.authn.dpProxy.type: none`).
    pub(crate) dp_auth: Option<std::sync::Arc<ProxyAdmission>>,
}

fn problem(status: StatusCode, title: &str, detail: String) -> Response {
    let body =
        json!({"type": "/std-errors", "status": status.as_u16(), "title": title, "detail": detail});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Handles `POST /bootstrap`: the request is JSON (read by the JSON parser); its token is
/// checked before the Dataplane it carries is parsed, and whether its mesh exists is told
/// only to a caller whose token verifies. Parsing runs off the async workers.
pub(crate) async fn handle(
    State(state): State<BootstrapState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed =
        kuma_api::body::off_worker(move || serde_json::from_slice::<BootstrapRequest>(&body)).await;
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                format!("invalid bootstrap request: {e}"),
            );
        }
    };
    let Some(kind) = ProxyKind::of_proxy_type(&req.proxy_type) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            format!(
                "proxyType {:?} is not one of dataplane, ingress, egress",
                req.proxy_type
            ),
        );
    };
    let refuse = |req: &BootstrapRequest, reason: String| {
        tracing::warn!(mesh = %req.mesh, name = %req.name, %reason, "refused a bootstrap request");
        problem(StatusCode::UNAUTHORIZED, "Unauthorized", reason)
    };
    let granted = match &state.dp_auth {
        Some(auth) => match auth.verify(kind, &req.dataplane_token).await {
            Ok(granted) => Some(granted),
            Err(reason) => return refuse(&req, reason),
        },
        None => None,
    };
    let (req, dataplane) = kuma_api::body::off_worker(move || {
        let dataplane = proxy_resource_of(&req, kind.resource_type());
        (req, dataplane)
    })
    .await;
    let dataplane = match dataplane {
        Ok(dp) => dp,
        Err(e) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Could not process a resource",
                e.to_string(),
            );
        }
    };
    if let Err(e) = dataplane.validate() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Could not process a resource",
            e.to_string(),
        );
    }
    if let Some(granted) = &granted
        && let Err(reason) = ProxyAdmission::matches(granted, &dataplane)
    {
        return refuse(&req, reason);
    }
    // A Dataplane's mesh must exist; zone proxies serve every mesh.
    if kind == ProxyKind::Dataplane {
        let mesh_key = ResourceKey::global(ResourceType::Mesh, &dataplane.meta.mesh);
        if state.manager.get(&mesh_key).await.is_err() {
            return problem(
                StatusCode::NOT_FOUND,
                "Not Found",
                format!("mesh {:?} does not exist", dataplane.meta.mesh),
            );
        }
    }
    let host = kuma_api::request_host(&headers);
    let bootstrap = envoy_bootstrap(
        &state.target,
        &req,
        &dataplane,
        host.trim_matches(['[', ']']),
    );
    let yaml = serde_norway::to_string(&bootstrap).unwrap_or_default();
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        let body = json!({
            "bootstrap": base64::engine::general_purpose::STANDARD.encode(&yaml),
            "kumaSidecarConfiguration": {"networking": {"isUsingTransparentProxy": false}},
        });
        (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/x-yaml")], yaml).into_response()
    }
}
