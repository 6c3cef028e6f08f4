//! Liveness and readiness probes for load balancers and orchestrators.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::service::NotReady;

/// Readiness answers within this bound even while the database hangs.
const READY_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /healthz`: the process is alive (no dependency checked).
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "the process is alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and every migration is applied; otherwise 503.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "database reachable, migrations applied"),
        (status = 503, description = "not ready", body = super::openapi::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let outcome = tokio::time::timeout(READY_TIMEOUT, state.service.readiness()).await;
    let (code, message) = match outcome {
        Ok(Ok(())) => return Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(NotReady::Database(e))) => {
            ("database_unavailable", format!("database unreachable: {e}"))
        }
        Ok(Err(NotReady::Migrations(e))) => {
            ("migrations_pending", format!("migrations not applied: {e}"))
        }
        Err(_) => (
            "database_unavailable",
            "database did not answer in time".to_owned(),
        ),
    };
    tracing::warn!(code, %message, "not ready");
    Err(ApiError::Unavailable {
        code,
        message: "not ready".into(),
        details: json!({ "reason": code }),
    })
}

/// `GET /metrics`: every metric in the Prometheus text format; the state gauges are read
/// from the database first, so a scrape is current.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    if let Err(e) = state.service.refresh_gauges().await {
        tracing::warn!(error = %e, "metrics: database gauges not refreshed");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics::metrics().render_prometheus(),
    )
}
