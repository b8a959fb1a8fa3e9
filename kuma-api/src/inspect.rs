//! Proxy inspection: Dataplane overviews (the Dataplane with its DataplaneInsight), the
//! global insight, and the Envoy config a proxy is being served.
//!
//! - `GET /zones+insights[/{name}]`, `GET /zones/{name}/_overview`: zones with their insight
//! - `GET /zoneingresses+insights[/{name}]`, `GET /zoneegressoverviews[/{name}]`: zone
//!   proxies with theirs (`ZoneIngressOverview`, `ZoneEgressOverview`)
//! - `GET /meshes/{mesh}/dataplanes+insights[/{name}]`, `GET /meshes/{mesh}/dataplanes/_overview`
//!   and `GET /meshes/{mesh}/dataplanes/{name}/_overview`: `DataplaneOverview`s, paged and
//!   filtered like Dataplane lists;
//! - `GET /meshes/{mesh}/dataplanes/{name}/_config`: `{"xds": {typeUrl: {name: resource}}}`;
//! - `GET /global-insight`: counts of meshes, data planes (online, offline, partially
//!   degraded), services, policies and every resource type.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kuma_core::model::common::SERVICE_TAG;
use kuma_core::model::dataplane::{DataplaneSpec, GatewayType};
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::ListQuery;
use serde_json::{Map, Value, json};

use crate::access::{Identity, check_config_dump, check_read};
use crate::error::ApiError;
use crate::resources::{ensure_mesh, list_query, next_url, page_body};
use crate::{ApiState, Scheme};

/// Where the API finds the Envoy config each proxy is served.
pub trait ProxyConfigSource: Send + Sync + 'static {
    /// The config served to Dataplane `name` of `mesh` as type URL -> resource name ->
    /// resource (canonical protobuf JSON); `None` when it is served nothing (yet).
    fn proxy_config(&self, mesh: &str, name: &str) -> Option<Result<Value, String>>;
}

const TITLE: &str = "Could not retrieve the dataplane overview";

/// Whether an insight has a subscription that has not ended (the proxy is connected).
pub fn is_online(insight: Option<&Resource>) -> bool {
    let Some(Spec::DataplaneInsight(spec)) = insight.map(|r| &r.spec) else {
        return false;
    };
    spec.to_object()
        .get("subscriptions")
        .and_then(Value::as_array)
        .is_some_and(|subs| {
            subs.iter()
                .any(|s| s.get("connectTime").is_some() && s.get("disconnectTime").is_none())
        })
}

fn overview(dataplane: &Resource, insight: Option<&Resource>) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!("DataplaneOverview"));
    let full = dataplane.to_value();
    let mut spec = Map::new();
    if let Value::Object(fields) = full {
        for (k, v) in fields {
            match k.as_str() {
                "mesh" | "name" | "creationTime" | "modificationTime" | "labels" => {
                    out.insert(k, v);
                }
                "type" => {}
                _ => {
                    spec.insert(k, v);
                }
            }
        }
    }
    out.insert("dataplane".into(), Value::Object(spec));
    let insight = match insight.map(|r| &r.spec) {
        Some(Spec::DataplaneInsight(s)) => Value::Object(s.to_object()),
        _ => json!({}),
    };
    out.insert("dataplaneInsight".into(), insight);
    Value::Object(out)
}

async fn insights_of(state: &ApiState, items: &[Resource]) -> HashMap<(String, String), Resource> {
    let mut out = HashMap::new();
    for dp in items {
        let key = ResourceKey::new(ResourceType::DataplaneInsight, &dp.meta.mesh, &dp.meta.name);
        if let Ok(insight) = state.manager.get(&key).await {
            out.insert((dp.meta.mesh.clone(), dp.meta.name.clone()), insight);
        }
    }
    out
}

/// `GET /meshes/{mesh}/dataplanes+insights`.
pub(crate) async fn list_overviews(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    Path(mesh): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_read(&state, &who, ResourceType::Dataplane)?;
    let mut query = list_query(ResourceType::Dataplane, uri.query())?;
    ensure_mesh(&state, &mesh).await?;
    query.mesh = Some(mesh);
    let page = state
        .manager
        .list(&query)
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    let insights = insights_of(&state, &page.items).await;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|dp| {
            overview(
                dp,
                insights.get(&(dp.meta.mesh.clone(), dp.meta.name.clone())),
            )
        })
        .collect();
    let next = page
        .next_offset
        .as_deref()
        .map(|o| next_url(scheme.0, &headers, &uri, o));
    Ok(Json(page_body(page.total, items, next)).into_response())
}

/// `GET /meshes/{mesh}/dataplanes+insights/{name}` and `.../dataplanes/{name}/_overview`.
pub(crate) async fn get_overview(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_read(&state, &who, ResourceType::Dataplane)?;
    ensure_mesh(&state, &mesh).await?;
    let dp = state
        .manager
        .get(&ResourceKey::new(ResourceType::Dataplane, &mesh, &name))
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    let insights = insights_of(&state, std::slice::from_ref(&dp)).await;
    Ok(Json(overview(&dp, insights.get(&(mesh, name)))).into_response())
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_config`.
pub(crate) async fn proxy_config(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    const CONFIG_TITLE: &str = "Could not inspect the proxy config";
    check_config_dump(&state, &who)?;
    ensure_mesh(&state, &mesh).await?;
    state
        .manager
        .get(&ResourceKey::new(ResourceType::Dataplane, &mesh, &name))
        .await
        .map_err(|e| ApiError::from_manager(CONFIG_TITLE, e))?;
    let Some(source) = &state.proxy_configs else {
        return Err(ApiError::not_found(
            "proxy config inspection is not available",
        ));
    };
    match source.proxy_config(&mesh, &name) {
        Some(Ok(xds)) => Ok(Json(json!({"xds": xds})).into_response()),
        Some(Err(e)) => Err(ApiError::internal(CONFIG_TITLE, e)),
        None => Ok(Json(json!({"xds": {}})).into_response()),
    }
}

#[derive(Default)]
struct Status {
    total: u64,
    online: u64,
    offline: u64,
    degraded: u64,
}

impl Status {
    fn add(&mut self, online: bool, degraded: bool) {
        self.total += 1;
        match (online, degraded) {
            (false, _) => self.offline += 1,
            (true, true) => self.degraded += 1,
            (true, false) => self.online += 1,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "online": self.online,
            "offline": self.offline,
            "partiallyDegraded": self.degraded,
        })
    }
}

async fn all(state: &ApiState, rtype: ResourceType) -> Result<Vec<Resource>, ApiError> {
    state
        .manager
        .list(&ListQuery::all(rtype))
        .await
        .map(|p| p.items)
        .map_err(|e| ApiError::from_manager("Could not compute the global insight", e))
}

/// `GET /global-insight`.
pub(crate) async fn global_insight(
    State(state): State<Arc<ApiState>>,
) -> Result<Response, ApiError> {
    let mut resources = Map::new();
    let mut policies = 0u64;
    for rtype in ResourceType::ALL {
        let query = ListQuery {
            size: Some(1),
            ..ListQuery::all(*rtype)
        };
        let total = state
            .manager
            .list(&query)
            .await
            .map(|p| p.total)
            .map_err(|e| ApiError::from_manager("Could not compute the global insight", e))?;
        if rtype.is_policy() {
            policies += total as u64;
        }
        resources.insert(rtype.name().to_string(), json!({"total": total}));
    }
    let meshes = resources
        .get("Mesh")
        .and_then(|m| m["total"].as_u64())
        .unwrap_or_default();

    let dataplanes = all(&state, ResourceType::Dataplane).await?;
    // Every insight is needed: one list, not a read per data plane.
    let insights: HashMap<(String, String), Resource> = all(&state, ResourceType::DataplaneInsight)
        .await?
        .into_iter()
        .map(|r| ((r.meta.mesh.clone(), r.meta.name.clone()), r))
        .collect();
    let (mut standard, mut builtin, mut delegated) =
        (Status::default(), Status::default(), Status::default());
    // Per service (mesh, kind, name): (instances online, instances).
    let mut services: BTreeMap<(String, &'static str, String), (u64, u64)> = BTreeMap::new();
    for dp in &dataplanes {
        let Some(spec) = dp.spec_as::<DataplaneSpec>() else {
            continue;
        };
        let online = is_online(insights.get(&(dp.meta.mesh.clone(), dp.meta.name.clone())));
        let Some(networking) = &spec.networking else {
            continue;
        };
        let inbounds = &networking.inbound;
        let unhealthy = inbounds
            .iter()
            .any(|i| i.health.as_ref().is_some_and(|h| h.ready == Some(false)));
        let (status, kind, tags) = match &networking.gateway {
            Some(g) if g.kind == Some(GatewayType::Builtin) => {
                (&mut builtin, "builtin", vec![&g.tags])
            }
            Some(g) => (&mut delegated, "delegated", vec![&g.tags]),
            None => (
                &mut standard,
                "internal",
                inbounds.iter().map(|i| &i.tags).collect(),
            ),
        };
        status.add(online, unhealthy);
        for tags in tags {
            if let Some(service) = tags.get(SERVICE_TAG) {
                let entry = services
                    .entry((dp.meta.mesh.clone(), kind, service.clone()))
                    .or_default();
                entry.1 += 1;
                if online {
                    entry.0 += 1;
                }
            }
        }
    }
    let mut by_kind: HashMap<&'static str, Status> = HashMap::new();
    for ((_, kind, _), (online, total)) in &services {
        let s = by_kind.entry(kind).or_default();
        s.total += 1;
        if *online == 0 {
            s.offline += 1;
        } else if online < total {
            s.degraded += 1;
        } else {
            s.online += 1;
        }
    }
    let kind = |k: &str| {
        by_kind
            .get(k)
            .map(Status::to_json)
            .unwrap_or_else(|| Status::default().to_json())
    };
    let external = resources
        .get("ExternalService")
        .and_then(|m| m["total"].as_u64())
        .unwrap_or_default();
    let zone_count = |name: &str| {
        resources
            .get(name)
            .and_then(|m| m["total"].as_u64())
            .unwrap_or_default()
    };
    let body = json!({
        "createdAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "services": {
            "total": services.len() as u64 + external,
            "internal": kind("internal"),
            "external": {"total": external},
            "gatewayBuiltin": kind("builtin"),
            "gatewayDelegated": kind("delegated"),
        },
        "zones": {
            "controlPlanes": {"online": 0, "total": zone_count("Zone")},
            "zoneEgresses": {"online": 0, "total": zone_count("ZoneEgress")},
            "zoneIngresses": {"online": 0, "total": zone_count("ZoneIngress")},
        },
        "dataplanes": {
            "standard": standard.to_json(),
            "gatewayBuiltin": builtin.to_json(),
            "gatewayDelegated": delegated.to_json(),
        },
        "policies": {"total": policies},
        "meshes": {"total": meshes},
        "resources": resources,
    });
    Ok(Json(body).into_response())
}

/// Kuma's overview of a global resource with an insight: `{type, name, <spec_key>: its spec,
/// <insight_key>: its insight}`.
fn global_overview(kind: &OverviewKind, resource: &Resource, insight: Option<&Resource>) -> Value {
    let full = resource.to_value();
    let mut out = Map::new();
    out.insert("type".into(), json!(kind.overview));
    let mut spec = Map::new();
    if let Value::Object(fields) = full {
        for (k, v) in fields {
            match k.as_str() {
                "name" | "creationTime" | "modificationTime" | "labels" => {
                    out.insert(k, v);
                }
                "type" | "mesh" => {}
                _ => {
                    spec.insert(k, v);
                }
            }
        }
    }
    out.insert(kind.spec_key.into(), Value::Object(spec));
    let insight = insight.map_or_else(|| json!({}), |r| r.spec.to_value());
    out.insert(kind.insight_key.into(), insight);
    Value::Object(out)
}

/// What Kuma's overview of a global resource with an insight is made of.
struct OverviewKind {
    /// The resource's type (Zone, ZoneIngress, ZoneEgress).
    rtype: ResourceType,
    /// Its insight's type.
    insight: ResourceType,
    /// The overview's `type`.
    overview: &'static str,
    /// Where the resource's spec goes.
    spec_key: &'static str,
    /// Where its insight goes.
    insight_key: &'static str,
}

const ZONE: OverviewKind = OverviewKind {
    rtype: ResourceType::Zone,
    insight: ResourceType::ZoneInsight,
    overview: "ZoneOverview",
    spec_key: "zone",
    insight_key: "zoneInsight",
};

const ZONE_INGRESS: OverviewKind = OverviewKind {
    rtype: ResourceType::ZoneIngress,
    insight: ResourceType::ZoneIngressInsight,
    overview: "ZoneIngressOverview",
    spec_key: "zoneIngress",
    insight_key: "zoneIngressInsight",
};

const ZONE_EGRESS: OverviewKind = OverviewKind {
    rtype: ResourceType::ZoneEgress,
    insight: ResourceType::ZoneEgressInsight,
    overview: "ZoneEgressOverview",
    spec_key: "zoneEgress",
    insight_key: "zoneEgressInsight",
};

/// The overview of `resource` (of `kind`), with its insight read.
async fn overview_of(state: &ApiState, kind: &OverviewKind, resource: &Resource) -> Value {
    let key = ResourceKey::global(kind.insight, &resource.meta.name);
    let insight = state.manager.get(&key).await.ok();
    global_overview(kind, resource, insight.as_ref())
}

/// The overviews of the resources of `kind`, paged and filtered like their list.
async fn list_global_overviews(
    state: Arc<ApiState>,
    who: Identity,
    scheme: Scheme,
    uri: axum::http::Uri,
    headers: HeaderMap,
    kind: &OverviewKind,
) -> Result<Response, ApiError> {
    check_read(&state, &who, kind.rtype)?;
    let query = list_query(kind.rtype, uri.query())?;
    let page = state
        .manager
        .list(&query)
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    let mut items = Vec::with_capacity(page.items.len());
    for resource in &page.items {
        items.push(overview_of(&state, kind, resource).await);
    }
    let next = page
        .next_offset
        .as_deref()
        .map(|o| next_url(scheme.0, &headers, &uri, o));
    Ok(Json(page_body(page.total, items, next)).into_response())
}

/// The overview of the resource of `kind` named `name`.
async fn get_global_overview(
    state: Arc<ApiState>,
    who: Identity,
    name: String,
    kind: &OverviewKind,
) -> Result<Response, ApiError> {
    check_read(&state, &who, kind.rtype)?;
    let resource = state
        .manager
        .get(&ResourceKey::global(kind.rtype, &name))
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    Ok(Json(overview_of(&state, kind, &resource).await).into_response())
}

/// `GET /zoneingresses+insights`.
pub(crate) async fn list_zone_ingress_overviews(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_global_overviews(state, who, scheme, uri, headers, &ZONE_INGRESS).await
}

/// `GET /zoneingresses+insights/{name}`.
pub(crate) async fn get_zone_ingress_overview(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_global_overview(state, who, name, &ZONE_INGRESS).await
}

/// `GET /zoneegressoverviews`.
pub(crate) async fn list_zone_egress_overviews(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_global_overviews(state, who, scheme, uri, headers, &ZONE_EGRESS).await
}

/// `GET /zoneegressoverviews/{name}`.
pub(crate) async fn get_zone_egress_overview(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_global_overview(state, who, name, &ZONE_EGRESS).await
}

/// `GET /zones+insights`.
pub(crate) async fn list_zone_overviews(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_global_overviews(state, who, scheme, uri, headers, &ZONE).await
}

/// `GET /zones+insights/{name}` and `/zones/{name}/_overview`.
pub(crate) async fn get_zone_overview(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_global_overview(state, who, name, &ZONE).await
}
