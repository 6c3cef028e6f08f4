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
use crate::domain::{BriefId, RunId, ThreadId};
use crate::persistence::{self, BriefInput, NewRun, RunRef};

/// Longest brief title, in characters.
const MAX_TITLE: usize = 500;

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
    let brief = match (body.brief, body.brief_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "briefId",
                "give either brief or briefId, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "brief",
                "either brief or briefId is required",
            ));
        }
        (None, Some(id)) => BriefInput::Existing(
            BriefId::parse(&id).map_err(|e| ApiError::invalid("briefId", e.to_string()))?,
        ),
        (Some(b), None) => {
            if b.title.trim().is_empty() {
                return Err(ApiError::invalid("brief.title", "must not be blank"));
            }
            if b.title.chars().count() > MAX_TITLE {
                return Err(ApiError::invalid(
                    "brief.title",
                    format!("must be at most {MAX_TITLE} characters"),
                ));
            }
            BriefInput::New {
                title: b.title,
                content: b.content.unwrap_or_else(|| json!({})),
            }
        }
    };
    let thread_id = body
        .thread_id
        .map(|t| ThreadId::parse(&t).map_err(|e| ApiError::invalid("threadId", e.to_string())))
        .transpose()?;
    let execution_context = match body.execution_context {
        None => json!({}),
        Some(c @ Value::Object(_)) => c,
        Some(_) => {
            return Err(ApiError::invalid(
                "executionContext",
                "must be a JSON object",
            ));
        }
    };
    let mut tx = state.pool.begin().await?;
    let created = state
        .engine
        .create_run(
            &mut tx,
            NewRun {
                brief,
                thread_id,
                plan: body.plan,
                execution_context,
                runner_metadata: json!({}),
            },
        )
        .await?;
    tx.commit().await?;
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

/// `GET /api/runs/{runId}`: the run's snapshot. An id that cannot be a run id names
/// nothing: 404 like an unknown one.
#[utoipa::path(get, path = "/api/runs/{runId}", tag = "runs", security(("bearer" = [])),
    params(("runId" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the run with its requests, answers and audit log", body = crate::persistence::RunSnapshot),
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
    let snapshot = persistence::load_snapshot(&state.pool, &id)
        .await?
        .ok_or_else(unknown)?;
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
    query.allow_only(&["threadId"])?;
    let thread = query
        .get("threadId")
        .ok_or_else(|| ApiError::invalid("threadId", "is required"))?;
    let thread =
        ThreadId::parse(thread).map_err(|e| ApiError::invalid("threadId", e.to_string()))?;
    let items = match persistence::find_run(&state.pool, &RunRef::Thread(thread)).await? {
        None => vec![],
        Some(run) => persistence::load_snapshot(&state.pool, &run.run_id)
            .await?
            .into_iter()
            .collect(),
    };
    Ok(outcome::json(
        StatusCode::OK,
        &json!({ "items": items, "nextCursor": null }),
    ))
}
