//! The one HTTP error type: each variant maps to one status code and one stable `code`
//! string in a single match, and 5xx bodies never carry internal detail (the cause is
//! logged once, here).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: the route or the thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 503: the service cannot serve now (database down, not migrated).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 500: a fault of ours; the cause is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let (message, details) = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                ("internal error".to_owned(), Value::Null)
            }
            ApiError::Unavailable {
                message, details, ..
            } => (message.clone(), details.clone()),
            other => (other.to_string(), Value::Null),
        };
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        (status, Json(body)).into_response()
    }
}

/// The answer for a path no route serves.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
