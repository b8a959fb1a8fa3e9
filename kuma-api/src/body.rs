//! Request bodies: read only once the caller may send one, bounded in size, and parsed away from
//! the async workers.
//!
//! - [`read`] collects a body up to a limit (413 beyond it); handlers call it after the access
//!   check, so an anonymous caller's body is never buffered.
//! - [`parse_resource`] parses a resource document on the blocking pool, at most
//!   [`PARSERS`] at a time: the async workers keep answering (`/ready`, other requests) while
//!   a large document is parsed. JSON (`Content-Type: application/json`) goes to the JSON
//!   parser; anything else to the YAML parser, whose input is first checked for nesting depth
//!   ([`kuma_core::resource::check_nesting`]), so each parse is bounded in time by the size
//!   limit.
//! - [`reject_oversized`] answers 413 to a request whose `Content-Length` is over the limit
//!   before its body is read, so a client that sent `Expect: 100-continue` never gets
//!   `100 Continue`.

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kuma_core::resource::{MAX_DOCUMENT_BYTES, ParseError, Resource, parse_json, parse_yaml};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Documents parsed at once; more wait for a slot.
pub const PARSERS: usize = 4;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// The whole of `body`, or 413 when it is longer than `limit` (400 when it breaks off).
pub async fn read(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            // `to_bytes` reports an overrun as a length-limit error somewhere in its sources.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large(limit));
                }
                source = s.source();
            }
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                format!("could not read the request body: {e}"),
            ))
        }
    }
}

/// Whether the request says its body is JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

fn parsers() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(PARSERS))
}

/// Runs `work` on the blocking pool once one of the [`PARSERS`] slots is free.
pub async fn off_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    // The semaphore is never closed.
    let _permit = parsers().acquire().await;
    match tokio::task::spawn_blocking(work).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Parses `text` as one resource, as JSON when `json` says so and as YAML otherwise, on the
/// blocking pool.
pub async fn parse_resource(text: Bytes, json: bool) -> Result<Resource, ParseError> {
    off_worker(move || {
        let text = std::str::from_utf8(&text)
            .map_err(|e| ParseError::Syntax(format!("the document is not UTF-8: {e}")))?;
        if json {
            parse_json(text)
        } else {
            parse_yaml(text)
        }
    })
    .await
}

/// Middleware: 413 for a request whose `Content-Length` exceeds [`MAX_DOCUMENT_BYTES`],
/// before anything reads its body.
pub async fn reject_oversized(req: Request, next: Next) -> Response {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|l| l > MAX_DOCUMENT_BYTES as u64) {
        return too_large(MAX_DOCUMENT_BYTES).into_response();
    }
    next.run(req).await
}
