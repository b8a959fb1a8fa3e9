//! The Kubernetes admission webhook: `AdmissionReview` requests (v1, and v1beta1 for older API
//! servers) for Kuma's resource kinds are checked with the rules the API applies, and a
//! denial carries every field error, the way Kuma's webhook reports them.
//!
//! Kuma serves it at `POST /validate-kuma-io-v1alpha1` on 5443 (HTTPS): the Kubernetes object
//! (`apiVersion: kuma.io/v1alpha1`, `metadata`, `spec`, and `mesh` for the older kinds) is
//! read as the resource it stands for, then validated. Kinds Kuma does not know, other groups
//! and deletions are allowed.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use kuma_core::resource::{Resource, ResourceType, Scope};
use kuma_core::validation::ValidationError;
use serde_json::{Map, Value, json};

/// Where the webhook is served (Kuma's path).
pub const PATH: &str = "/validate-kuma-io-v1alpha1";

/// The label that names a resource's mesh on Kubernetes.
const MESH_LABEL: &str = "kuma.io/mesh";

/// The webhook's routes.
pub fn router() -> Router {
    Router::new().route(PATH, axum::routing::post(review))
}

async fn review(body: Bytes) -> Response {
    // Parsing and validating a review is CPU work: not on the async workers.
    match crate::body::off_worker(move || answer(&body)).await {
        Ok(review) => Json(review).into_response(),
        Err(reason) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"title": "Invalid AdmissionReview", "detail": reason})),
        )
            .into_response(),
    }
}

/// The `AdmissionReview` answering the one in `body`, or why `body` is not one.
pub fn answer(body: &[u8]) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !["admission.k8s.io/v1", "admission.k8s.io/v1beta1"].contains(&api_version) {
        return Err(format!(
            "apiVersion: must be admission.k8s.io/v1 or admission.k8s.io/v1beta1, not {api_version:?}"
        ));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err("kind: must be AdmissionReview".into());
    }
    let request = review
        .get("request")
        .and_then(Value::as_object)
        .ok_or("request: must be an object")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or("request.uid: must be a non-empty string")?;
    let mut response = decide(request);
    response.insert("uid".into(), json!(uid));
    Ok(json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// The `response` (without `uid`) for one admission request.
fn decide(request: &Map<String, Value>) -> Map<String, Value> {
    let kind = request.get("kind").unwrap_or(&Value::Null);
    let group = kind
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind_name = kind.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(rtype) = ResourceType::from_name(kind_name).filter(|_| group == "kuma.io") else {
        return allowed(); // not ours to judge
    };
    if request.get("operation").and_then(Value::as_str) == Some("DELETE") {
        return allowed();
    }
    let Some(object) = request.get("object").and_then(Value::as_object) else {
        return errored(400, "request.object: the object to admit is missing");
    };
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .or_else(|| request.get("name").and_then(Value::as_str))
        .unwrap_or_default();
    match check(rtype, object) {
        Ok(()) => allowed(),
        Err(err) => denied(&err, name, kind_name),
    }
}

/// Reads the Kubernetes `object` as a resource of `rtype` and validates it; errors are at
/// the object's paths (`spec.…`, `metadata.name`, `mesh`).
fn check(rtype: ResourceType, object: &Map<String, Value>) -> Result<(), ValidationError> {
    let metadata = object.get("metadata").and_then(Value::as_object);
    let name = metadata
        .and_then(|m| m.get("name"))
        .cloned()
        .unwrap_or(Value::Null);
    let labels = metadata
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or(Value::Null);
    let spec = match object.get("spec") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(s) => s.clone(),
    };
    let mut universal = Map::new();
    universal.insert("type".into(), json!(rtype.name()));
    universal.insert("name".into(), name);
    if rtype.scope() == Scope::Mesh {
        // The older kinds carry `mesh` beside `spec`; the newer ones a label.
        let mesh = object
            .get("mesh")
            .cloned()
            .or_else(|| labels.get(MESH_LABEL).cloned())
            .unwrap_or_else(|| json!("default"));
        universal.insert("mesh".into(), mesh);
    }
    universal.insert("labels".into(), labels);
    let spec_prefix = if rtype.is_policy() {
        universal.insert("spec".into(), spec);
        ""
    } else {
        let Value::Object(fields) = spec else {
            return Err(ValidationError::single("spec", "must be an object"));
        };
        // The spec cannot stand in for what the object's kind and metadata say.
        let mut err = ValidationError::new();
        for key in fields.keys() {
            if universal.contains_key(key)
                || ["creationTime", "modificationTime"].contains(&key.as_str())
            {
                err.extend(ValidationError::single(
                    format!("spec.{key}"),
                    "unknown field",
                ));
            }
        }
        err.into_result()?;
        universal.extend(fields);
        "spec."
    };
    let resource = Resource::from_value(Value::Object(universal))
        .map_err(|e| at_object_paths(e, spec_prefix))?;
    resource
        .validate()
        .map_err(|e| at_object_paths(e, spec_prefix))
}

/// Moves the violations of a universal resource to where they are in the Kubernetes object.
fn at_object_paths(err: ValidationError, spec_prefix: &str) -> ValidationError {
    let mut out = ValidationError::new();
    for v in err.violations() {
        let field = &v.field;
        let moved = if field == "name" {
            "metadata.name".to_string()
        } else if field == "mesh" {
            field.clone()
        } else if let Some(rest) = field.strip_prefix("labels") {
            format!("metadata.labels{rest}")
        } else if field.is_empty() {
            "spec".to_string()
        } else {
            format!("{spec_prefix}{field}")
        };
        out.extend(ValidationError::single(moved, v.message.clone()));
    }
    out
}

fn allowed() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("allowed".into(), json!(true));
    m
}

fn errored(code: u16, message: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("allowed".into(), json!(false));
    m.insert(
        "status".into(),
        json!({"metadata": {}, "message": message, "code": code}),
    );
    m
}

/// Kuma's denial: 422 Invalid, with one `FieldValueInvalid` cause per violation.
fn denied(err: &ValidationError, name: &str, kind: &str) -> Map<String, Value> {
    let causes: Vec<Value> = err
        .violations()
        .iter()
        .map(|v| json!({"reason": "FieldValueInvalid", "message": v.message, "field": v.field}))
        .collect();
    let mut m = Map::new();
    m.insert("allowed".into(), json!(false));
    m.insert(
        "status".into(),
        json!({
            "metadata": {},
            "status": "Failure",
            "message": err.to_string(),
            "reason": "Invalid",
            "details": {"name": name, "kind": kind, "causes": causes},
            "code": 422,
        }),
    );
    m
}
