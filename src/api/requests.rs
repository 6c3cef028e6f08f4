//! `GET /api/hitl/requests/{requestId}`: one HITL request — its run's ids and status,
//! prompt, items, assignees, status, deadline and answers — so that a client holding only
//! a request id (an operator's terminal, a chat message) can act on it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::auth::{Authorized, Operate};
use super::openapi::{AuthErrors, ErrorBody};
use super::outcome;
use super::{ApiError, AppState};
use crate::service::input;

/// Shows one request. Unlike the other paths' ids, a malformed request id is 422 naming
/// `requestId`: clients pass it on from what an operator typed, and "not found" would
/// hide the typo.
#[utoipa::path(get, path = "/api/hitl/requests/{requestId}", tag = "hitl", security(("bearer" = [])),
    params(("requestId" = String, Path, description = "the request id (`hitl_req_…`)")),
    responses(
        (status = 200, description = "the request with its answers, and its run's ids and status", body = crate::service::RequestView),
        (status = 404, description = "no such request", body = ErrorBody),
        (status = 422, description = "`requestId` is not a request id (named in details.field)", body = ErrorBody),
        AuthErrors))]
pub async fn show(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::invalid("requestId", "is not readable text"))?;
    let id = input::request_id("requestId", Some(&raw))?
        .ok_or_else(|| ApiError::invalid("requestId", "is required"))?;
    let request = state.service.request(&id).await?;
    Ok(outcome::json(StatusCode::OK, &request))
}
