//! The HTTP API: the axum router, its shared state, and the error envelope every route
//! answers with (`{"error": {"code", "message", "details"}}`).
//!
//! Every `/api` route sits behind the bearer-token middleware ([`auth::require_token`]),
//! so authentication comes before routing, parsing or any database work; each handler
//! then checks its scope first among its extractors, before the body is read.

pub mod auth;
mod commands;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod listener;
pub mod openapi;
mod outcome;
mod pending;
mod runs;
mod tracing_layer;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

pub use crate::identity::Authenticator;
use crate::service::Service;
pub use error::ApiError;

/// The default largest request body: 256 KiB.
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The operations; its shutdown token ends waits and event streams.
    pub service: Service,
    /// The accepted bearer tokens.
    pub auth: Arc<Authenticator>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
}

impl AppState {
    /// State with the default body limit.
    pub fn new(service: Service, auth: Authenticator) -> Self {
        Self {
            service,
            auth: Arc::new(auth),
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Every (method, path) the router serves. `tests/openapi.rs` checks that this is exactly
/// what `/openapi.json` documents, that each is served, and that other methods are not.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/hitl/pending"),
    ("POST", "/api/hitl/resume"),
    ("POST", "/api/hitl/remove"),
    ("GET", "/api/hitl/commands/{commandId}"),
    ("POST", "/api/runs"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/{runId}"),
    ("GET", "/api/events"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
];

/// Serves the API on `listener` until the service's shutdown token is cancelled (then
/// in-flight requests finish); a client that stops reading is cut off after its writes
/// stall for `write_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    write_timeout: std::time::Duration,
) -> std::io::Result<()> {
    let stop = state.service.shutdown().clone();
    let listener = listener::TimeoutListener::new(listener, write_timeout);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/hitl/pending", get(pending::list))
        .route("/hitl/resume", post(commands::resume))
        .route("/hitl/remove", post(commands::remove))
        .route("/hitl/commands/{command_id}", get(commands::show))
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{run_id}", get(runs::show))
        .route("/events", get(events::stream))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(health::metrics))
        .nest("/api", api)
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(tracing_layer::trace_request))
        .with_state(state)
}
