//! Policy matching, as the policy engine computes it for config generation:
//!
//! - `GET /meshes/{mesh}/dataplanes/{name}/_rules`: per policy type, the merged `to` rules
//!   (with the tags each applies to), the `from` rules per inbound, the proxy-wide rule, and the
//!   policies each came from, in merge order;
//! - `GET /meshes/{mesh}/dataplanes/{name}/_policies`: the proxy-wide confs (single-`default`
//!   policies such as MeshTrace or MeshMetric) with the KRIs of their policies;
//! - `GET /meshes/{mesh}/{policies}/{name}/_resources/dataplanes`: the data planes a policy's
//!   top-level targetRef selects, paged with `size` and `offset`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Scope};
use kuma_core::rules::{
    MeshPolicies, Origin, ProxyRules, ProxyView, Rule, selector, selects_proxy,
};
use kuma_core::store::ListQuery;
use serde_json::{Value, json};

use crate::access::{Identity, check_read};
use crate::error::ApiError;
use crate::resources::{ensure_mesh, list_query, next_url, page_body, short_name};
use crate::{ApiState, Scheme};

const TITLE: &str = "Could not compute the policies of a data plane";

fn meta(r: &Resource) -> Value {
    json!({
        "type": r.rtype().name(),
        "mesh": r.meta.mesh,
        "name": r.meta.name,
        "labels": r.meta.labels,
    })
}

/// Kuma's resource identifier of a policy in this (zone-less, namespace-less) control plane.
fn kri(o: &Origin) -> String {
    format!("kri_{}_{}___{}_", short_name(o.rtype), o.mesh, o.name)
}

/// The Dataplane `name` and the rules of every policy type with policies in `mesh` for it.
async fn load(
    state: &ApiState,
    who: &Identity,
    mesh: &str,
    name: &str,
) -> Result<(Resource, Vec<ProxyRules>), ApiError> {
    check_read(state, who, ResourceType::Dataplane)?;
    ensure_mesh(state, mesh).await?;
    let dp = state
        .manager
        .get(&ResourceKey::new(ResourceType::Dataplane, mesh, name))
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    let policies = state
        .manager
        .mesh_policies(mesh)
        .await
        .map_err(|e| ApiError::from_manager(TITLE, e))?;
    let engine = MeshPolicies::new(&policies);
    let view = ProxyView::of(&dp).ok_or_else(|| ApiError::internal(TITLE, "not a data plane"))?;
    let rules = engine.types().map(|t| engine.rules(t, &view)).collect();
    Ok((dp, rules))
}

fn rule_json(rule: &Rule) -> Value {
    let matchers: Vec<Value> = rule
        .subset
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "not": false}))
        .chain(
            rule.negated
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v, "not": true})),
        )
        .collect();
    json!({
        "matchers": matchers,
        "conf": rule.conf,
        "origin": rule.origins.iter().map(Origin::to_json).collect::<Vec<_>>(),
    })
}

fn inspect_rule(rules: &ProxyRules) -> Value {
    let mut out = json!({
        "type": rules.rtype.name(),
        "toRules": rules.to.iter().map(rule_json).collect::<Vec<_>>(),
        "toResourceRules": [],
    });
    let inbound = |i: &kuma_core::rules::InboundRules| {
        let mut v = json!({"port": i.port, "tags": i.tags});
        if let Some(n) = &i.name {
            v["name"] = json!(n);
        }
        v
    };
    let from: Vec<Value> = rules
        .from
        .iter()
        .filter(|i| !i.rules.is_empty())
        .map(|i| json!({"inbound": inbound(i), "rules": i.rules.iter().map(rule_json).collect::<Vec<_>>()}))
        .collect();
    let inbound_rules: Vec<Value> = rules
        .from
        .iter()
        .filter_map(|i| {
            let rule = i.rules.iter().find(|r| r.is_catch_all())?;
            let origin: Vec<Value> = rule
                .origins
                .iter()
                .map(|o| json!({"resourceMeta": o.to_json(), "ruleIndex": 0}))
                .collect();
            Some(json!({
                "inbound": inbound(i),
                "rules": [{"conf": [rule.conf], "origin": origin}],
            }))
        })
        .collect();
    out["fromRules"] = Value::Array(from);
    out["inboundRules"] = Value::Array(inbound_rules);
    if let Some(single) = &rules.single {
        out["proxyRule"] = json!({
            "conf": single.conf,
            "origin": single.origins.iter().map(Origin::to_json).collect::<Vec<_>>(),
        });
    }
    out
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_rules`.
pub(crate) async fn dataplane_rules(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (dp, rules) = load(&state, &who, &mesh, &name).await?;
    let rules: Vec<Value> = rules
        .iter()
        .filter(|r| !r.matched.is_empty())
        .map(inspect_rule)
        .collect();
    Ok(Json(json!({"resource": meta(&dp), "rules": rules, "httpMatches": []})).into_response())
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_policies`.
pub(crate) async fn dataplane_policies(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, rules) = load(&state, &who, &mesh, &name).await?;
    let list: Vec<Value> = rules
        .iter()
        .filter_map(|r| {
            let single = r.single.as_ref()?;
            Some(json!({
                "kind": r.rtype.name(),
                "conf": single.conf,
                "origins": single.origins.iter().map(|o| json!({"kri": kri(o)})).collect::<Vec<_>>(),
            }))
        })
        .collect();
    Ok(Json(json!({"policies": list})).into_response())
}

/// `GET /meshes/{mesh}/{policies}/{name}/_resources/dataplanes`.
pub(crate) async fn policy_dataplanes(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Identity>,
    Extension(scheme): Extension<Scheme>,
    Path((mesh, collection, name)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    const POLICY_TITLE: &str = "Could not list the data planes of a policy";
    let rtype = ResourceType::from_collection(&collection)
        .filter(|t| t.is_policy() && t.scope() == Scope::Mesh)
        .ok_or_else(|| ApiError::not_found(format!("no policy collection {collection:?}")))?;
    check_read(&state, &who, rtype)?;
    check_read(&state, &who, ResourceType::Dataplane)?;
    ensure_mesh(&state, &mesh).await?;
    let policy = state
        .manager
        .get(&ResourceKey::new(rtype, &mesh, &name))
        .await
        .map_err(|e| ApiError::from_manager(POLICY_TITLE, e))?;
    // The page parameters of any list; the offset here counts data planes.
    let page = list_query(ResourceType::Dataplane, uri.query())?;
    let size = page.size.unwrap_or(crate::resources::DEFAULT_PAGE_SIZE);
    let offset: usize = match page.offset.as_deref() {
        None | Some("") => 0,
        Some(o) => o.parse().map_err(|_| {
            ApiError::bad_field(POLICY_TITLE, "offset", format!("invalid offset {o:?}"))
        })?,
    };
    // A route-targeted policy selects the proxies of its route.
    let routes = if policy
        .spec
        .to_value()
        .pointer("/targetRef/kind")
        .and_then(Value::as_str)
        == Some("MeshHTTPRoute")
    {
        state
            .manager
            .list(&ListQuery::in_mesh(ResourceType::MeshHTTPRoute, &mesh))
            .await
            .map_err(|e| ApiError::from_manager(POLICY_TITLE, e))?
            .items
    } else {
        Vec::new()
    };
    let routes: Vec<&Resource> = routes.iter().collect();
    let top = selector(&policy, &routes);
    let dataplanes = state
        .manager
        .list(&ListQuery::in_mesh(ResourceType::Dataplane, &mesh))
        .await
        .map_err(|e| ApiError::from_manager(POLICY_TITLE, e))?
        .items;
    let selected: Vec<&Resource> = dataplanes
        .iter()
        .filter(|dp| {
            top.as_ref()
                .is_some_and(|top| ProxyView::of(dp).is_some_and(|v| selects_proxy(top, &v)))
        })
        .collect();
    let total = selected.len();
    let items: Vec<Value> = selected
        .iter()
        .skip(offset)
        .take(size)
        .map(|r| meta(r))
        .collect();
    let next = (offset + size < total)
        .then(|| next_url(scheme.0, &headers, &uri, &(offset + size).to_string()));
    Ok(Json(page_body(total, items, next)).into_response())
}
