//! A small client of the control plane's HTTP API.

use std::time::Duration;

use serde_json::Value;

use crate::config::ApiServer;

/// The API of one control plane.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An API answer that is not a success, with Kuma's error body when there is one.
#[derive(Debug)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The body (Kuma's `title`, `detail`, `invalid_parameters` when it is an API error).
    pub body: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let title = self.body["title"].as_str().unwrap_or("request failed");
        let detail = self.body["detail"].as_str().unwrap_or_default();
        write!(f, "{title} (status {})", self.status)?;
        if !detail.is_empty() {
            write!(f, ": {detail}")?;
        }
        if let Some(params) = self.body["invalid_parameters"].as_array() {
            for p in params {
                let field = p["field"].as_str().unwrap_or_default();
                let reason = p["reason"].as_str().unwrap_or_default();
                write!(f, "\n* {field}: {reason}")?;
            }
        }
        Ok(())
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum Error {
    /// The client could not be set up (its CA, its credentials).
    Setup(String),
    /// The control plane answered with an error.
    Api(ApiFailure),
    /// It could not be reached or answered nonsense.
    Transport(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Setup(s) => f.write_str(s),
            Error::Api(a) => a.fmt(f),
            Error::Transport(t) => f.write_str(t),
        }
    }
}

impl Client {
    /// A client of `api`: its CA (`caCertFile`) is then the only one trusted.
    pub fn new(api: &ApiServer) -> Result<Self, Error> {
        let setup = |e: String| Error::Setup(e);
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &api.ca_cert_file {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| setup(format!("cannot read the CA certificate {ca}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| setup(format!("the CA certificate {ca}: {e}")))?;
            if certs.is_empty() {
                return Err(setup(format!(
                    "the CA certificate {ca}: no certificate in the file"
                )));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if api.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let token = match api.auth_type.as_str() {
            "" => None,
            "tokens" => Some(api.auth_conf.get("token").cloned().ok_or_else(|| {
                setup("auth type \"tokens\" needs --auth-conf token=<token>".to_string())
            })?),
            other => {
                return Err(setup(format!(
                    "unsupported auth type {other:?}: use tokens"
                )));
            }
        };
        Ok(Client {
            http: builder.build().map_err(|e| setup(e.to_string()))?,
            base: api.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, Error> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| {
            Error::Transport(format!("cannot reach the control plane at {url}: {e}"))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::Transport(format!("reading the answer of {url}: {e}")))?;
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(Error::Api(ApiFailure { status, body }))
        }
    }

    /// `GET path` (relative to the API, or a full URL).
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: String) -> Result<Value, Error> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: String) -> Result<Value, Error> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, Error> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

impl std::error::Error for Error {}
