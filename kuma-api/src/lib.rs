//! Kuma's HTTP API as an axum [`Router`] any program can mount.
//!
//! ```no_run
//! # async fn run(manager: kuma_core::manager::ResourceManager) {
//! use std::sync::Arc;
//! let state = kuma_api::ApiState::new(manager, kuma_api::ServerInfo::local("my-cp"));
//! let app = kuma_api::router(Arc::new(state));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5681").await.unwrap();
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await
//! .unwrap();
//! # }
//! ```
//!
//! - [`resources`]: CRUD for every registered type, paging and filters;
//! - [`access`]: who the caller is (localhost admin, user token, anonymous) and what they may do;
//! - [`error`]: Kuma's error body with `invalid_parameters`;
//! - [`config`]: the `apiServer` and `access` sections of the configuration;
//! - [`inspect`]: Dataplane overviews, the global insight and the config a proxy is served;
//! - [`diagnostics`]: the diagnostics port's `/ready` and `/healthy`;
//! - [`gui`]: Kuma's GUI (built in), [`admission`]: the Kubernetes admission webhook,
//!   [`catalog`]: the split layout's `/catalog`, [`tokens`]: `POST /tokens/dataplane`, `POST /tokens/zone`.
//!
//! It does not listen (mount the router on your listener), keep resources (every write goes
//! through the `ResourceManager` it is given) or issue
//! tokens itself: [`access::UserTokenValidator`] and [`tokens::DataplaneTokenIssuer`] are the
//! extension points the state takes (`kuma-cp` plugs in `kuma-ca`'s tokens). No features.
//!
//! Serve it with [`axum::Router::into_make_service_with_connect_info`]`::<SocketAddr>` so the
//! caller's address is known (over a custom listener such as TLS, wrap it with
//! `axum::serve::ListenerExt::tap_io`, which gives it that connect info); without it every
//! caller is remote.

pub mod access;
pub mod admission;
pub mod body;
pub mod catalog;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod federation;
pub mod gui;
pub mod inspect;
mod matching;
pub mod resources;
pub mod tokens;

pub use access::{Identity as UserIdentity, UserTokenValidator};

pub use error::ApiError;
pub use kuma_core::errors::BoxError;
pub use tokens::DataplaneTokenIssuer;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, header};
use axum::routing::get;
use axum::{Json, Router, middleware};
use kuma_core::manager::ResourceManager;
use kuma_core::resource::MAX_DOCUMENT_BYTES;
use serde_json::{Value, json};

use crate::access::Identity;

/// What `GET /` says about this control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Host name.
    pub hostname: String,
    /// Unique id of this instance.
    pub instance_id: String,
    /// Id of the cluster (all instances sharing one store).
    pub cluster_id: String,
    /// Product name.
    pub product: String,
    /// Version.
    pub version: String,
    /// Mode (`standalone`, `zone`, `global`).
    pub mode: String,
    /// Zone name, when in a zone.
    pub zone: String,
}

impl ServerInfo {
    /// Info for a standalone instance on `hostname`.
    pub fn local(hostname: &str) -> Self {
        ServerInfo {
            hostname: hostname.to_string(),
            instance_id: format!("{hostname}-{}", std::process::id()),
            cluster_id: String::new(),
            product: "Kuma".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            mode: "standalone".into(),
            zone: String::new(),
        }
    }
}

/// Everything the API handlers share.
pub struct ApiState {
    /// Validating access to the store.
    pub manager: ResourceManager,
    /// What `GET /` reports.
    pub info: ServerInfo,
    /// The running configuration, secrets already masked (`GET /config`).
    pub config: Value,
    /// Refuse every write.
    pub read_only: bool,
    /// Requests from a loopback address are admin.
    pub localhost_is_admin: bool,
    /// Verifies user tokens; without it, bearer tokens are refused.
    pub tokens: Option<Arc<dyn UserTokenValidator>>,
    /// The Envoy config served to proxies (`_config`); without it `_config` is 404.
    pub proxy_configs: Option<Arc<dyn inspect::ProxyConfigSource>>,
    /// Issues dataplane tokens (`POST /tokens/dataplane`); without it that route is 404.
    pub dataplane_tokens: Option<Arc<dyn tokens::DataplaneTokenIssuer>>,
    /// Issues zone tokens (`POST /tokens/zone`); without it that route is 404.
    pub zone_tokens: Option<Arc<dyn tokens::ZoneTokenIssuer>>,
    /// Where the split layout's servers are (`GET /catalog`); without it that route is 404.
    pub catalog: Option<catalog::Catalog>,
    /// Who may do the guarded actions (`access.static`).
    pub access: crate::config::StaticAccessConfig,
    /// The API's place in a multi-zone deployment (what it may write, how it labels).
    pub federation: federation::Federation,
}

impl ApiState {
    /// State with Kuma's defaults: writable, localhost is admin, no user tokens.
    pub fn new(manager: ResourceManager, info: ServerInfo) -> Self {
        ApiState {
            manager,
            info,
            config: json!({}),
            read_only: false,
            localhost_is_admin: true,
            tokens: None,
            proxy_configs: None,
            dataplane_tokens: None,
            zone_tokens: None,
            catalog: None,
            access: crate::config::StaticAccessConfig::default(),
            federation: federation::Federation::Standalone,
        }
    }
}

/// The URL scheme of the listener a request came in on (for absolute `next` links). Add it
/// as an [`Extension`] layer per listener; `http` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme(pub &'static str);

/// The API's routes over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    use resources::*;
    let router = Router::new()
        .route("/", get(index))
        .route("/config", get(config))
        .route("/who-am-i", get(who_am_i))
        .route("/catalog", get(catalog::catalog))
        .route(
            "/tokens/dataplane",
            axum::routing::post(tokens::issue_dataplane_token),
        )
        .route(
            "/tokens/zone",
            axum::routing::post(tokens::issue_zone_token),
        )
        .route("/policies", get(policies))
        .route("/_resources", get(catalogue))
        .route("/global-insight", get(inspect::global_insight))
        .route("/zones+insights", get(inspect::list_zone_overviews))
        .route("/zones+insights/{name}", get(inspect::get_zone_overview))
        .route(
            "/zoneingresses+insights",
            get(inspect::list_zone_ingress_overviews),
        )
        .route(
            "/zoneingresses+insights/{name}",
            get(inspect::get_zone_ingress_overview),
        )
        .route(
            "/zoneegressoverviews",
            get(inspect::list_zone_egress_overviews),
        )
        .route(
            "/zoneegressoverviews/{name}",
            get(inspect::get_zone_egress_overview),
        )
        .route("/zones/{name}/_overview", get(inspect::get_zone_overview))
        .route(
            "/meshes/{mesh}/dataplanes+insights",
            get(inspect::list_overviews),
        )
        .route(
            "/meshes/{mesh}/dataplanes+insights/{name}",
            get(inspect::get_overview),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_overview",
            get(inspect::get_overview),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_config",
            get(inspect::proxy_config),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_rules",
            get(matching::dataplane_rules),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_policies",
            get(matching::dataplane_policies),
        )
        .route(
            "/meshes/{mesh}/{collection}/{name}/_resources/dataplanes",
            get(matching::policy_dataplanes),
        )
        .route("/meshes/{mesh}/{collection}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{collection}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .merge(gui::router())
        .route("/{collection}", get(list_top))
        .route(
            "/{collection}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") });
    with_api_layers(router, state)
}

/// The admin server of the split port layout: dataplane tokens (`POST /tokens`, Kuma 0.x's
/// path, and `POST /tokens/dataplane`) and secrets (`/meshes/{mesh}/secrets[/{name}]`,
/// `/global-secrets[/{name}]`), with the API's access rules. Everything else is 404.
pub fn admin_router(state: Arc<ApiState>) -> Router {
    use resources::*;
    let issue = axum::routing::post(tokens::issue_dataplane_token);
    let router = Router::new()
        .route("/tokens", issue.clone())
        .route("/tokens/dataplane", issue)
        .route(
            "/tokens/zone",
            axum::routing::post(tokens::issue_zone_token),
        )
        .route("/meshes/{mesh}/{collection}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{collection}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/{collection}", get(list_top))
        .route(
            "/{collection}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .route_layer(middleware::from_fn(only_admin_paths))
        .fallback(|| async { ApiError::not_found("the admin server serves tokens and secrets") });
    with_api_layers(router, state)
}

/// Lets through the admin server's paths: tokens and secrets.
async fn only_admin_paths(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let segments: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let allowed = matches!(
        segments.as_slice(),
        ["tokens"]
            | ["tokens", "dataplane"]
            | ["tokens", "zone"]
            | ["meshes", _, "secrets"]
            | ["meshes", _, "secrets", _]
            | ["global-secrets"]
            | ["global-secrets", _]
    );
    if allowed {
        next.run(req).await
    } else {
        ApiError::not_found("the admin server serves tokens and secrets").into_response()
    }
}

/// Who the caller is, the document size limit and the default scheme, over `router`.
fn with_api_layers(router: Router<Arc<ApiState>>, state: Arc<ApiState>) -> Router {
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::identify,
        ))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES))
        .layer(middleware::from_fn(body::reject_oversized))
        .layer(middleware::from_fn(default_scheme))
        .with_state(state)
}

/// The host a request reached this server by: its `Host` header without the port
/// (`[::1]:5681` -> `[::1]`, `cp:5681` -> `cp`), `127.0.0.1` when it has none.
pub fn request_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    match host.rsplit_once(':') {
        // An IPv6 literal without a port ends with `]`.
        Some((h, port)) if !port.contains(']') => h.to_string(),
        _ => host.to_string(),
    }
}

async fn default_scheme(
    mut req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if req.extensions().get::<Scheme>().is_none() {
        req.extensions_mut().insert(Scheme("http"));
    }
    next.run(req).await
}

async fn index(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let i = &state.info;
    Json(json!({
        "hostname": i.hostname,
        "product": i.product,
        "version": i.version,
        "instanceId": i.instance_id,
        "clusterId": i.cluster_id,
        "gui": "/gui",
        "basedOnKuma": i.version,
    }))
}

async fn config(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(state.config.clone())
}

async fn who_am_i(Extension(who): Extension<Identity>) -> Json<Value> {
    Json(json!({"name": who.name, "groups": who.groups}))
}
