//! The GUI: a single-page app compiled into the binary (no network access at run time),
//! served at `/gui/` on the API port. It reads the API of the origin it is served from; see
//! `gui/app.js` for its pages.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../gui/index.html");
const APP_JS: &str = include_str!("../gui/app.js");
const APP_CSS: &str = include_str!("../gui/app.css");

/// Only the GUI's own files run, and it talks only to its origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The GUI's routes: `/gui` (redirects to `/gui/`), its files, and the page for any other
/// path under `/gui/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/gui", get(|| async { Redirect::permanent("/gui/") }))
        .route(
            "/gui/",
            get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/gui/{*path}", get(asset))
}

async fn asset(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match path.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", APP_JS),
        "app.css" => file("text/css; charset=utf-8", APP_CSS),
        _ => file("text/html; charset=utf-8", INDEX_HTML),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
