//! The HTTP API: the axum router, its shared state, and the error envelope every route
//! answers with (`{"error": {"code", "message", "details"}}`).

pub mod error;
pub mod health;

use axum::Router;
use axum::routing::get;
use sqlx::PgPool;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub pool: PgPool,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(error::not_found)
        .with_state(state)
}
