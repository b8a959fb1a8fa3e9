//! Kuma's error body: `{"type":"/std-errors","status","title","detail","invalid_parameters"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kuma_core::manager::ManagerError;
use kuma_core::store::StoreError;
use kuma_core::validation::{ValidationError, Violation};
use serde_json::json;

/// An API failure, rendered as Kuma renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Short summary of what was attempted.
    pub title: String,
    /// What went wrong this time.
    pub detail: String,
    /// Each invalid field and why.
    pub invalid_parameters: Vec<Violation>,
}

impl ApiError {
    /// An error with no field details.
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            title: title.into(),
            detail: detail.into(),
            invalid_parameters: Vec::new(),
        }
    }

    /// 400 listing every violation.
    pub fn invalid(title: impl Into<String>, err: &ValidationError) -> Self {
        ApiError {
            invalid_parameters: err.violations().to_vec(),
            ..Self::new(StatusCode::BAD_REQUEST, title, "Resource is not valid")
        }
    }

    /// 400 naming one field.
    pub fn bad_field(
        title: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::invalid(title, &ValidationError::single(field, reason))
    }

    /// 404.
    pub fn not_found(title: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, title, "Not found")
    }

    /// 401: the caller must authenticate.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthenticated", detail)
    }

    /// 403: the caller may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Access Denied", detail)
    }

    /// 405.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not Allowed", detail)
    }

    /// 500: the server failed (the detail is logged, not sent).
    pub fn internal(title: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            title,
            "Internal Server Error",
        )
    }

    /// Maps a manager failure; `title` says what was attempted.
    pub fn from_manager(title: &str, err: ManagerError) -> Self {
        match err {
            ManagerError::Invalid(e) => Self::invalid(title, &e),
            ManagerError::MeshInUse { .. } => Self::bad_field(title, "mesh", err.to_string()),
            ManagerError::Store(e) => Self::from_store(title, e),
        }
    }

    /// Maps a store failure; `title` says what was attempted.
    pub fn from_store(title: &str, err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => Self::not_found(title),
            StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "Conflict", err.to_string())
            }
            StoreError::OwnerNotFound(_) => {
                Self::new(StatusCode::BAD_REQUEST, title, "Mesh is not found")
            }
            StoreError::InvalidOffset(_) => Self::bad_field(title, "offset", err.to_string()),
            other => {
                tracing::error!(error = %kuma_core::errors::Chain(&other), "store failure");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, title, "Store unavailable")
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.detail)?;
        for v in &self.invalid_parameters {
            write!(f, "; {}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "/std-errors",
            "status": self.status.as_u16(),
            "title": self.title,
            "detail": self.detail,
            "details": self.detail,
        });
        if !self.invalid_parameters.is_empty() {
            body["invalid_parameters"] = json!(self.invalid_parameters);
            // Kuma's deprecated `causes` (field + message), still read by older clients.
            body["causes"] = self
                .invalid_parameters
                .iter()
                .map(|v| json!({"field": v.field, "message": v.message}))
                .collect();
        }
        (self.status, Json(body)).into_response()
    }
}
