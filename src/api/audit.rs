//! The audit routes: `GET /api/audit/keys` (public keys, no token: they are public),
//! `GET /api/runs/{runId}/audit/verify` and `GET /api/audit/verify` (a run's chain, or
//! every run's a page at a time), and `GET /api/audit` (every event, in commit-safe
//! order, as JSON or NDJSON). All but the keys need the `audit` scope.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::{Audit, Authorized};
use super::extract::QueryParams;
use super::openapi::{AuthErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::domain::RunId;
use crate::service::audit::{ExportedEvent, SigningKey, Verification};
use crate::service::audit::{MAX_EXPORT_PAGE, MAX_VERIFY_PAGE};
use crate::service::input;

/// `GET /api/audit/keys`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditKeys {
    /// Oldest first; events name theirs by `keyId`.
    keys: Vec<SigningKey>,
}

/// `GET /api/audit/verify`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPage {
    /// One verdict per run, in run id order.
    items: Vec<Verification>,
    /// Pass back as `after` for the next page; `null` at the end.
    next_cursor: Option<RunId>,
}

/// `GET /api/audit`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportPage {
    items: Vec<ExportedEvent>,
    /// Pass back as `after` for the next page (the last event's id, or the `after` given
    /// when the page is empty: nothing new has committed yet).
    next_after: i64,
}

/// `GET /api/audit/keys`: every public key audit events were signed with.
#[utoipa::path(get, path = "/api/audit/keys", tag = "audit",
    responses((status = 200, description = "the public keys, oldest first", body = AuditKeys)))]
pub async fn keys(State(state): State<AppState>) -> Result<Json<AuditKeys>, ApiError> {
    Ok(Json(AuditKeys {
        keys: state.service.audit_keys().await?,
    }))
}

/// `GET /api/runs/{runId}/audit/verify`.
#[utoipa::path(get, path = "/api/runs/{runId}/audit/verify", tag = "audit", security(("bearer" = [])),
    params(("runId" = String, Path, description = "the run")),
    responses(
        (status = 200, description = "`intact: true`, or the first broken link", body = Verification),
        (status = 404, description = "no such run", body = ErrorBody),
        AuthErrors))]
pub async fn verify_run(
    _: Authorized<Audit>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Verification>, ApiError> {
    let unknown = || ApiError::not_found("run_not_found", "no such run");
    let Path(raw) = path.map_err(|_| unknown())?;
    let run_id = RunId::parse(&raw).map_err(|_| unknown())?;
    Ok(Json(state.service.verify_run(&run_id).await?))
}

/// `GET /api/audit/verify`: every run's chain, a page of runs at a time.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit", security(("bearer" = [])),
    params(
        ("after" = Option<String>, Query, description = "the `nextCursor` of the previous page (a run id)"),
        ("limit" = Option<i64>, Query, description = "runs per page, 1 to 100 (default 100)")),
    responses(
        (status = 200, description = "a verdict per run", body = VerifyPage),
        AuthErrors))]
pub async fn verify_all(
    _: Authorized<Audit>,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<VerifyPage>, ApiError> {
    let after = input::run_id("after", query.get("after"))?;
    let limit = page_size(query.get("limit"), MAX_VERIFY_PAGE)?;
    let (items, next_cursor) = state.service.verify_runs(after.as_ref(), limit).await?;
    Ok(Json(VerifyPage { items, next_cursor }))
}

/// `GET /api/audit`: every audit event after `after`, oldest commit first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", security(("bearer" = [])),
    params(
        ("after" = Option<i64>, Query, description = "an event id: start after it (default: from the start)"),
        ("limit" = Option<i64>, Query, description = "events per page, 1 to 1000 (default 1000)")),
    responses(
        (status = 200, description = "a page of events (with `Accept: application/x-ndjson`, one event per line: continue after the last line's `eventId`)", content(
            (ExportPage = "application/json"),
            (ExportedEvent = "application/x-ndjson"))),
        AuthErrors))]
pub async fn export(
    _: Authorized<Audit>,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let after = match query.get("after") {
        None => None,
        Some(raw) => Some(
            digits(raw)
                .ok_or_else(|| ApiError::invalid("after", "must be an event id (digits)"))?,
        ),
    };
    let limit = page_size(query.get("limit"), MAX_EXPORT_PAGE)?;
    let items = state.service.export_audit(after, limit).await?;
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if ndjson {
        let mut body = String::new();
        for e in &items {
            body.push_str(&serde_json::to_string(e).unwrap_or_default());
            body.push('\n');
        }
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return Ok(response);
    }
    let next_after = items.last().map_or(after.unwrap_or(0), |e| e.event_id);
    Ok(Json(ExportPage { items, next_after }).into_response())
}

/// `limit`: 1 to `max`, `max` when absent (422 naming `limit` otherwise).
pub(super) fn page_size(raw: Option<&str>, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(max),
        Some(s) => digits(s)
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {max}"))),
    }
}

/// A whole number written as 1 to 18 digits (no sign, no spaces), as the document states.
pub(super) fn digits(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 18 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}
