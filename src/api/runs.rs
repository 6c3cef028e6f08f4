//! `POST /api/runs` (scope `submit`), `GET /api/runs/{runId}` and
//! `GET /api/runs?threadId=…`: creating a run from a brief and a plan, and the run as
//! DESIGN.md shows it.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Authorized, Operate, Submit};
use super::extract::{ApiJson, QueryParams};
use super::openapi::{AuthErrors, BodyErrors, ErrorBody, RunAccepted, RunPage};
use super::outcome;
use super::{ApiError, AppState};
use crate::domain::RunId;
use crate::service::{CreateRun, input};

/// A new brief.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BriefIn {
    title: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The body of `POST /api/runs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRunIn {
    #[serde(default)]
    brief: Option<BriefIn>,
    #[serde(default)]
    brief_id: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    execution_context: Option<Value>,
    plan: Value,
}

/// `POST /api/runs`: validates, then creates the brief (when new) and the run with its
/// first job in one transaction; 202 with the run's ids and `Location`.
#[utoipa::path(post, path = "/api/runs", tag = "runs", security(("bearer" = [])),
    request_body = CreateRunIn,
    responses(
        (status = 202, description = "created, queued", body = RunAccepted),
        (status = 404, description = "unknown briefId", body = ErrorBody),
        (status = 409, description = "threadId in use", body = ErrorBody),
        BodyErrors,
        AuthErrors))]
pub async fn create(
    Authorized { principal, .. }: Authorized<Submit>,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRunIn>,
) -> Result<Response, ApiError> {
    let brief = input::brief(
        body.brief.map(|b| (b.title, b.content)),
        body.brief_id.as_deref(),
    )?;
    let thread_id = input::thread_id("threadId", body.thread_id.as_deref())?;
    let execution_context = input::execution_context(body.execution_context)?;
    let mut plan = body.plan;
    whole_floats_as_integers(&mut plan);
    let new = CreateRun {
        brief,
        thread_id,
        execution_context,
        plan,
        principal: Some(principal.name.to_string()),
    };
    let created = state.service.create_run(new).await?;
    tracing::info!(
        name: "run_created_api",
        run_id = %created.run_id,
        brief_id = %created.brief_id,
        token_name = %principal.name,
        "run created"
    );
    let mut response = outcome::json(
        StatusCode::ACCEPTED,
        &json!({ "runId": created.run_id, "threadId": created.thread_id,
                 "briefId": created.brief_id, "status": created.status }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/api/runs/{}", created.run_id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// JSON Schema, and so `/openapi.json`, reads `2283.0` as the whole number 2283, while the
/// plan parser takes only integers where it wants whole numbers: a node's
/// `timeoutSeconds` written as a float with no fraction, within range, is passed on as
/// the integer it equals. Anything else is left for the parser to refuse.
fn whole_floats_as_integers(plan: &mut Value) {
    let Some(nodes) = plan.get_mut("nodes").and_then(Value::as_array_mut) else {
        return;
    };
    for node in nodes {
        if let Some(seconds) = node.get_mut("timeoutSeconds")
            && seconds.is_f64()
            && let Some(f) = seconds.as_f64()
            && f.fract() == 0.0
            && (1.0..=input::MAX_TIMEOUT_SECONDS as f64).contains(&f)
        {
            *seconds = Value::from(f as u64);
        }
    }
}

/// `GET /api/runs/{runId}`: the run's snapshot. An id that cannot be a run id names
/// nothing: 404 like an unknown one.
#[utoipa::path(get, path = "/api/runs/{runId}", tag = "runs", security(("bearer" = [])),
    params(("runId" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the run with its requests, answers and audit log", body = crate::service::RunSnapshot),
        (status = 404, description = "no such run", body = ErrorBody),
        AuthErrors))]
pub async fn show(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("run_not_found", "no such run");
    let Path(raw) = path.map_err(|_| unknown())?;
    let id = RunId::parse(&raw).map_err(|_| unknown())?;
    let snapshot = state.service.run(&id).await?;
    Ok(outcome::json(StatusCode::OK, &snapshot))
}

/// `GET /api/runs?threadId=…`: the run of a thread (a thread has at most one), as a
/// list. Listing every run is not offered: `threadId` is required.
#[utoipa::path(get, path = "/api/runs", tag = "runs", security(("bearer" = [])),
    params(("threadId" = String, Query, description = "the thread whose run to show")),
    responses(
        (status = 200, description = "the thread's run, if any", body = RunPage),
        (status = 422, description = "threadId missing or invalid", body = ErrorBody),
        AuthErrors))]
pub async fn list(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let thread = query
        .get("threadId")
        .ok_or_else(|| ApiError::invalid("threadId", "is required"))?;
    let thread = input::thread_id("threadId", Some(thread))?
        .ok_or_else(|| ApiError::invalid("threadId", "is required"))?;
    let items: Vec<_> = state
        .service
        .run_of_thread(&thread)
        .await?
        .into_iter()
        .collect();
    Ok(outcome::json(
        StatusCode::OK,
        &json!({ "items": items, "nextCursor": null }),
    ))
}
