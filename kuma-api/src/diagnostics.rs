//! The diagnostics port (5680): `/ready` and `/healthy` for orchestrators and load balancers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Whether every component of the control plane has started. Starts false; the assembler
/// flips it once everything listens.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the control plane ready (or not, while shutting down).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// `/ready`: 200 once ready, 503 before (and during shutdown); `/healthy`: 200 while the
/// process serves at all.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/healthy", get(|| async { (StatusCode::OK, "healthy\n") }))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: components are still starting\n",
        )
    }
}
