//! `GET /catalog`: where the split port layout's servers are, in Kuma 0.6/0.7's format
//! (`{"apis": {"bootstrap": {"url"}, "admin": {"localUrl", "publicUrl"}, ...}}`), so that
//! clients given only the API's address find the bootstrap and admin servers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{ApiState, request_host};

/// The ports the catalog points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Catalog {
    /// The plain-HTTP bootstrap server.
    pub bootstrap_port: u16,
    /// The admin server (tokens, secrets), on 127.0.0.1.
    pub admin_port: u16,
    /// MADS, when served.
    pub mads_port: Option<u16>,
}

impl Catalog {
    /// The catalog as a client on `host` (the host it reached the API by) reads it.
    pub fn to_json(&self, host: &str) -> Value {
        let admin = format!("http://127.0.0.1:{}", self.admin_port);
        let mads = self
            .mads_port
            .map(|p| format!("http://{host}:{p}"))
            .unwrap_or_default();
        json!({"apis": {
            "bootstrap": {"url": format!("http://{host}:{}", self.bootstrap_port)},
            "dataplaneToken": {"localUrl": admin, "publicUrl": ""},
            "admin": {"localUrl": admin, "publicUrl": ""},
            "monitoringAssignment": {"url": mads},
        }})
    }
}

pub(crate) async fn catalog(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Some(catalog) = &state.catalog else {
        return Err(ApiError::not_found(
            "no catalog: the servers it lists have ports of their own only in the split port layout",
        ));
    };
    Ok(Json(catalog.to_json(&request_host(&headers))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn urls_use_the_host_the_api_was_reached_by() {
        let c = Catalog {
            bootstrap_port: 5682,
            admin_port: 5679,
            mads_port: Some(5676),
        };
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "cp.example:5681".parse().unwrap());
        let v = c.to_json(&request_host(&h));
        assert_eq!(v["apis"]["bootstrap"]["url"], "http://cp.example:5682");
        assert_eq!(v["apis"]["admin"]["localUrl"], "http://127.0.0.1:5679");
        assert_eq!(
            v["apis"]["monitoringAssignment"]["url"],
            "http://cp.example:5676"
        );
        h.insert(header::HOST, "[::1]:5681".parse().unwrap());
        assert_eq!(request_host(&h), "[::1]");
        h.insert(header::HOST, "[::1]".parse().unwrap());
        assert_eq!(request_host(&h), "[::1]");
    }
}
