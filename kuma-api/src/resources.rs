//! CRUD for every resource type of the registry.
//!
//! - `GET|PUT|DELETE /meshes/{mesh}/{collection}/{name}` and `GET /meshes/{mesh}/{collection}`
//!   for mesh-scoped types;
//! - `GET|PUT|DELETE /{collection}/{name}` and `GET /{collection}` for global-scoped types;
//!   `GET /{collection}` of a mesh-scoped type lists across meshes.
//!
//! `PUT` creates (201) or replaces (200). An `If-Match: "<version>"` header (the `ETag` of a
//! `GET`) makes the replacement conditional: a stale version is refused with 409. Lists page
//! with `size` (default 100, at most 1000) and `offset`, and filter with `name` (substring),
//! `filter[labels.<key>]=<value>`, `tag=<key>:<value>` (repeatable, Dataplanes) and `gateway`
//! (`true`, `false`, `builtin`, `delegated`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kuma_core::manager::{Applied, ManagerError};
use kuma_core::resource::{
    KdsFlags, MAX_DOCUMENT_BYTES, ParseError, Resource, ResourceKey, ResourceType, Scope,
};
use kuma_core::store::{GatewayFilter, ListQuery, StoreError};
use kuma_core::validation::ValidationError;
use serde_json::{Value, json};

use crate::access::{Identity, check_read, check_write};
use crate::error::ApiError;
use crate::{ApiState, Scheme};

/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: usize = 1000;

const GET_TITLE: &str = "Could not retrieve a resource";
const LIST_TITLE: &str = "Could not list resources";
const PUT_TITLE: &str = "Could not process a resource";
const DELETE_TITLE: &str = "Could not delete a resource";

/// The type served under `collection` with the given scope.
fn resolve(collection: &str, scope: Option<Scope>) -> Result<ResourceType, ApiError> {
    ResourceType::from_collection(collection)
        .filter(|t| scope.is_none_or(|s| t.scope() == s))
        .ok_or_else(|| ApiError::not_found(format!("no resource collection {collection:?}")))
}

/// The list filters and page of a query string.
pub(crate) fn list_query(rtype: ResourceType, raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::all(rtype);
    q.size = Some(DEFAULT_PAGE_SIZE);
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "size" => {
                let size = value
                    .parse::<usize>()
                    .ok()
                    .filter(|s| (1..=MAX_PAGE_SIZE).contains(s));
                let Some(size) = size else {
                    return Err(ApiError::bad_field(
                        LIST_TITLE,
                        "size",
                        format!(
                            "invalid page size {value:?}: must be between 1 and {MAX_PAGE_SIZE}"
                        ),
                    ));
                };
                q.size = Some(size);
            }
            "offset" => q.offset = Some(value.into_owned()),
            "name" => q.name_contains = Some(value.into_owned()).filter(|n| !n.is_empty()),
            "tag" => {
                let Some((k, v)) = value.split_once(':') else {
                    return Err(ApiError::bad_field(
                        LIST_TITLE,
                        "tag",
                        format!("{value:?} must be key:value"),
                    ));
                };
                q.tags.insert(k.to_string(), v.to_string());
            }
            "gateway" => {
                q.gateway = Some(GatewayFilter::parse(&value).ok_or_else(|| {
                    ApiError::bad_field(
                        LIST_TITLE,
                        "gateway",
                        format!("{value:?} must be one of true, false, builtin, delegated"),
                    )
                })?);
            }
            k => {
                if let Some(label) = k
                    .strip_prefix("filter[labels.")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    q.labels.insert(label.to_string(), value.into_owned());
                }
                // Other parameters (e.g. `format`) are ignored, as Kuma does.
            }
        }
    }
    Ok(q)
}

/// The absolute URL of the next page: the request's URL with `offset` replaced.
pub(crate) fn next_url(
    scheme: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    offset: &str,
) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k != "offset" {
            query.append_pair(&k, &v);
        }
    }
    query.append_pair("offset", offset);
    format!("{scheme}://{host}{}?{}", uri.path(), query.finish())
}

/// A list page; `next` is left out on the last page (the API schema types it as a string).
pub(crate) fn page_body(total: usize, items: Vec<Value>, next: Option<String>) -> Value {
    let mut body = json!({"total": total, "items": items});
    if let Some(next) = next {
        body["next"] = Value::String(next);
    }
    body
}

async fn list(
    state: &ApiState,
    who: &Identity,
    rtype: ResourceType,
    mesh: Option<String>,
    scheme: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    check_read(state, who, rtype)?;
    let mut query = list_query(rtype, uri.query())?;
    if let Some(mesh) = &mesh {
        ensure_mesh(state, mesh).await?;
    }
    query.mesh = mesh;
    let page = state
        .manager
        .list(&query)
        .await
        .map_err(|e| ApiError::from_manager(LIST_TITLE, e))?;
    let next = page
        .next_offset
        .as_deref()
        .map(|o| next_url(scheme, headers, uri, o));
    let items = page.items.iter().map(Resource::to_value).collect();
    Ok(Json(page_body(page.total, items, next)).into_response())
}

/// 404 unless `mesh` exists.
pub(crate) async fn ensure_mesh(state: &ApiState, mesh: &str) -> Result<(), ApiError> {
    state
        .manager
        .get(&ResourceKey::global(ResourceType::Mesh, mesh))
        .await
        .map(|_| ())
        .map_err(|e| ApiError::from_manager("Failed to retrieve Mesh", e))
}

fn etag(r: &Resource) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{}\"", r.meta.version.0)).ok()
}

async fn get(state: &ApiState, who: &Identity, key: ResourceKey) -> Result<Response, ApiError> {
    check_read(state, who, key.rtype)?;
    let r = state
        .manager
        .get(&key)
        .await
        .map_err(|e| ApiError::from_manager(GET_TITLE, e))?;
    let mut response = Json(r.to_value()).into_response();
    if let Some(tag) = etag(&r) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

/// The resource in a `PUT`'s body, read and parsed only now that the caller may write.
async fn parse_body(headers: &HeaderMap, body: Body) -> Result<Resource, ApiError> {
    let bytes = crate::body::read(body, MAX_DOCUMENT_BYTES).await?;
    crate::body::parse_resource(bytes, crate::body::is_json(headers))
        .await
        .map_err(|e| match e {
            ParseError::Invalid(v) => ApiError::invalid(PUT_TITLE, &v),
            other => ApiError::new(StatusCode::BAD_REQUEST, PUT_TITLE, other.to_string()),
        })
}

/// The version an `If-Match` header asks for (`None`: unconditional).
fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        })
        .filter(|v| !v.is_empty() && v != "*")
}

/// Types only the control plane writes.
fn check_writable(rtype: ResourceType) -> Result<(), ApiError> {
    if matches!(
        rtype,
        ResourceType::DataplaneInsight
            | ResourceType::ZoneInsight
            | ResourceType::ZoneIngressInsight
            | ResourceType::ZoneEgressInsight
    ) {
        return Err(ApiError::method_not_allowed(format!(
            "{rtype} is maintained by the control plane and cannot be written"
        )));
    }
    Ok(())
}

async fn put(
    state: &ApiState,
    who: &Identity,
    key: ResourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_write(state, who, key.rtype)?;
    check_writable(key.rtype)?;
    state.federation.check_type(key.rtype)?;
    let mut resource = parse_body(headers, body).await?;
    let mut err = ValidationError::new();
    if resource.rtype() != key.rtype {
        err.add(
            &kuma_core::validation::Path::at("type"),
            format!(
                "type from the URL ({}) has to be the same as in the body ({})",
                key.rtype,
                resource.rtype()
            ),
        );
    }
    if resource.meta.name != key.name {
        err.add(
            &kuma_core::validation::Path::at("name"),
            "name from the URL has to be the same as in the body",
        );
    }
    if key.rtype.scope() == Scope::Mesh && resource.meta.mesh != key.mesh {
        err.add(
            &kuma_core::validation::Path::at("mesh"),
            "mesh from the URL has to be the same as in the body",
        );
    }
    if !err.is_empty() {
        return Err(ApiError::invalid(PUT_TITLE, &err));
    }
    state.federation.label(&mut resource, PUT_TITLE)?;
    if state.federation != crate::federation::Federation::Standalone {
        match state.manager.get(&key).await {
            Ok(existing) => state.federation.check_existing(&existing)?,
            Err(ManagerError::Store(StoreError::NotFound(_))) => {}
            Err(e) => return Err(ApiError::from_manager(PUT_TITLE, e)),
        }
    }
    let (status, written) = match if_match(headers) {
        // Without If-Match the last writer wins: the manager retries a write that raced
        // another.
        None => {
            let (written, applied) = state
                .manager
                .apply(resource)
                .await
                .map_err(|e| ApiError::from_manager(PUT_TITLE, e))?;
            let status = match applied {
                Applied::Created => StatusCode::CREATED,
                Applied::Updated => StatusCode::OK,
            };
            (status, written)
        }
        Some(expected) => {
            match state.manager.get(&key).await {
                Ok(_) => {}
                Err(ManagerError::Store(StoreError::NotFound(_))) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("{key} does not exist: If-Match cannot hold"),
                    ));
                }
                Err(e) => return Err(ApiError::from_manager(PUT_TITLE, e)),
            }
            resource.meta.version = kuma_core::resource::Version(expected);
            let written = state
                .manager
                .update(resource)
                .await
                .map_err(|e| ApiError::from_manager(PUT_TITLE, e))?;
            (StatusCode::OK, written)
        }
    };
    let mut response = (status, Json(json!({"warnings": []}))).into_response();
    if let Some(tag) = etag(&written) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

async fn delete(state: &ApiState, who: &Identity, key: ResourceKey) -> Result<Response, ApiError> {
    check_write(state, who, key.rtype)?;
    check_writable(key.rtype)?;
    state.federation.check_type(key.rtype)?;
    if state.federation != crate::federation::Federation::Standalone {
        match state.manager.get(&key).await {
            Ok(existing) => state.federation.check_existing(&existing)?,
            Err(ManagerError::Store(StoreError::NotFound(_))) => {}
            Err(e) => return Err(ApiError::from_manager(DELETE_TITLE, e)),
        }
    }
    state
        .manager
        .delete(&key, false)
        .await
        .map_err(|e| ApiError::from_manager(DELETE_TITLE, e))?;
    Ok(Json(json!({})).into_response())
}

type Ctx = State<Arc<ApiState>>;

/// `GET /meshes/{mesh}/{collection}`.
pub(crate) async fn list_in_mesh(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    Path((mesh, collection)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Mesh))?;
    list(&state, &who, rtype, Some(mesh), scheme.0, &headers, &uri).await
}

/// `GET /{collection}`: a global type, or a mesh-scoped one across meshes.
pub(crate) async fn list_top(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    Path(collection): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, None)?;
    list(&state, &who, rtype, None, scheme.0, &headers, &uri).await
}

/// `GET /meshes/{mesh}/{collection}/{name}`.
pub(crate) async fn get_in_mesh(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    Path((mesh, collection, name)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Kuma's `/meshes/{mesh}/dataplanes/_overview` lists overviews. (A static route for it
    // does not win over this one in axum's router, so it is dispatched here.)
    if collection == "dataplanes" && name == "_overview" {
        return crate::inspect::list_overviews(
            State(state),
            Extension(who),
            Extension(scheme),
            Path(mesh),
            uri,
            headers,
        )
        .await;
    }
    let rtype = resolve(&collection, Some(Scope::Mesh))?;
    get(&state, &who, ResourceKey::new(rtype, &mesh, &name)).await
}

/// `GET /{collection}/{name}`.
pub(crate) async fn get_global(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Path((collection, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Global))?;
    get(&state, &who, ResourceKey::global(rtype, &name)).await
}

/// `PUT /meshes/{mesh}/{collection}/{name}`.
pub(crate) async fn put_in_mesh(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Path((mesh, collection, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Mesh))?;
    put(
        &state,
        &who,
        ResourceKey::new(rtype, &mesh, &name),
        &headers,
        body,
    )
    .await
}

/// `PUT /{collection}/{name}`.
pub(crate) async fn put_global(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Path((collection, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Global))?;
    put(
        &state,
        &who,
        ResourceKey::global(rtype, &name),
        &headers,
        body,
    )
    .await
}

/// `DELETE /meshes/{mesh}/{collection}/{name}`.
pub(crate) async fn delete_in_mesh(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Path((mesh, collection, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Mesh))?;
    delete(&state, &who, ResourceKey::new(rtype, &mesh, &name)).await
}

/// `DELETE /{collection}/{name}`.
pub(crate) async fn delete_global(
    State(state): Ctx,
    Extension(who): Extension<Identity>,
    Path((collection, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rtype = resolve(&collection, Some(Scope::Global))?;
    delete(&state, &who, ResourceKey::global(rtype, &name)).await
}

/// `GET /_resources`: the resource types this server knows.
pub(crate) async fn catalogue() -> Json<Value> {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .filter_map(|t| {
            let path = t.collection()?;
            let (singular, plural) = display_names(t.name());
            let mut entry = json!({
                "name": t.name(),
                "scope": match t.scope() { Scope::Mesh => "Mesh", Scope::Global => "Global" },
                "path": path,
                "readOnly": matches!(t, ResourceType::DataplaneInsight
            | ResourceType::ZoneInsight
            | ResourceType::ZoneIngressInsight
            | ResourceType::ZoneEgressInsight),
                "singularDisplayName": singular,
                "pluralDisplayName": plural,
                "shortName": short_name(*t),
                "includeInFederation": t.kds_flags().has(KdsFlags::GLOBAL_TO_ZONES),
            });
            if let Some((to, from, rules, from_as_rules)) = policy_target_refs(*t) {
                entry["policy"] = json!({
                    "isTargetRef": true,
                    "hasToTargetRef": to,
                    "hasFromTargetRef": from,
                    "hasRulesTargetRef": rules,
                    "isFromAsRules": from_as_rules,
                });
            }
            Some(entry)
        })
        .collect();
    Json(json!({ "resources": resources }))
}

/// "MeshHTTPRoute" -> ("Mesh HTTP Route", "Mesh HTTP Routes").
fn display_names(name: &str) -> (String, String) {
    let chars: Vec<char> = name.chars().collect();
    let mut singular = String::new();
    for (i, c) in chars.iter().enumerate() {
        let starts_word = i > 0
            && c.is_uppercase()
            && (chars[i - 1].is_lowercase() || chars.get(i + 1).is_some_and(|n| n.is_lowercase()));
        if starts_word {
            singular.push(' ');
        }
        singular.push(*c);
    }
    let plural = if let Some(stem) = singular.strip_suffix('y') {
        format!("{stem}ies")
    } else if singular.ends_with("ch") || singular.ends_with('s') || singular.ends_with('S') {
        format!("{singular}es")
    } else {
        format!("{singular}s")
    };
    (singular, plural)
}

/// Kuma's short name of a policy type; the initials of other types.
pub(crate) fn short_name(t: ResourceType) -> String {
    let known = match t {
        ResourceType::MeshAccessLog => "mal",
        ResourceType::MeshCircuitBreaker => "mcb",
        ResourceType::MeshFaultInjection => "mfi",
        ResourceType::MeshHealthCheck => "mhc",
        ResourceType::MeshHTTPRoute => "mhttpr",
        ResourceType::MeshLoadBalancingStrategy => "mlbs",
        ResourceType::MeshMetric => "mm",
        ResourceType::MeshPassthrough => "mp",
        ResourceType::MeshProxyPatch => "mpp",
        ResourceType::MeshRateLimit => "mrl",
        ResourceType::MeshRetry => "mr",
        ResourceType::MeshTCPRoute => "mtcpr",
        ResourceType::MeshTimeout => "mt",
        ResourceType::MeshTLS => "mtls",
        ResourceType::MeshTrace => "mtr",
        ResourceType::MeshTrafficPermission => "mtp",
        _ => "",
    };
    if !known.is_empty() {
        return known.into();
    }
    t.name()
        .chars()
        .filter(|c| c.is_uppercase())
        .collect::<String>()
        .to_lowercase()
}

/// Which target references a policy type has: (`to`, `from`, `rules`, `from` merged as rules).
fn policy_target_refs(t: ResourceType) -> Option<(bool, bool, bool, bool)> {
    use ResourceType::*;
    Some(match t {
        MeshAccessLog | MeshCircuitBreaker | MeshRateLimit | MeshTimeout => {
            (true, true, true, true)
        }
        MeshFaultInjection => (true, true, true, false),
        MeshHealthCheck | MeshHTTPRoute | MeshLoadBalancingStrategy | MeshRetry | MeshTCPRoute => {
            (true, false, false, false)
        }
        MeshTLS => (false, true, true, true),
        MeshTrafficPermission => (false, true, true, false),
        t if t.is_policy() => (false, false, false, false),
        _ => return None,
    })
}

/// `GET /policies`: the policy types.
pub(crate) async fn policies() -> Json<Value> {
    let policies: Vec<Value> = ResourceType::ALL
        .iter()
        .filter(|t| t.is_policy())
        .filter_map(|t| {
            let path = t.collection()?;
            Some(json!({
                "name": t.name(),
                "readOnly": false,
                "path": path,
                "singularDisplayName": t.name(),
                "pluralDisplayName": path,
                "isExperimental": false,
                "isTargetRefBased": true,
                "isInbound": false,
                "isOutbound": false,
            }))
        })
        .collect();
    Json(json!({ "policies": policies }))
}
