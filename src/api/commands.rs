//! `POST /api/hitl/resume`, `POST /api/hitl/remove`, `POST /api/runs/{runId}/retry` and
//! `GET /api/hitl/commands/{id}`.
//!
//! A submission goes through, in order: authentication and scope (middleware and the
//! first extractor), the body, the headers and every field parsed (422 naming the
//! field), then `Service::submit` (the `Idempotency-Key` lookup, the HITL flag, the
//! check against the run, the command and its job in one transaction), answered
//! `202 Accepted`. Workers apply the command; `Prefer: wait=N` waits for that outcome
//! (see [`super::outcome`]).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::auth::{Authorized, Operate, Principal};
use super::extract::ApiJson;
use super::openapi::{AuthErrors, BodyErrors, CommandAccepted, ErrorBody};
use super::outcome::{self, CommandView};
use super::{ApiError, AppState};
use crate::domain::{CommandId, CommandKind, Operator, RequestId, RunId};
use crate::service::input::{self, IdempotencyKey, MAX_LONG_TEXT};
use crate::service::{CommandInput, ResponseInput, RunTarget, SubmitCommand};

/// Who acts, as the runbook's `operator` object gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct OperatorIn {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// The body of `POST /api/hitl/resume`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResumeIn {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    responses: Vec<ResponseInput>,
    /// Required unless the credential is bound to an operator (then it may be left out,
    /// and naming another is 403 `operator_mismatch`).
    #[serde(default)]
    operator: Option<OperatorIn>,
    #[serde(default)]
    note: Option<String>,
    /// Answer even though another principal has claimed the request (needs the
    /// `supervise` scope; the claim is broken, audited `claim_broken`).
    #[serde(default)]
    force: bool,
}

/// The body of `POST /api/hitl/remove`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoveIn {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// As in a resume.
    #[serde(default)]
    operator: Option<OperatorIn>,
    #[serde(default)]
    note: Option<String>,
    /// As in a resume.
    #[serde(default)]
    force: bool,
}

/// `POST /api/hitl/resume`.
#[utoipa::path(post, path = "/api/hitl/resume", tag = "hitl", security(("bearer" = [])),
    request_body = ResumeIn, params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 256 visible ASCII characters; a retry with the same key and body returns the same command (scoped to the command kind)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N from 0 to 30): wait up to N seconds for the outcome; other preferences are ignored")),
    responses(
        (status = 202, description = "accepted (or still running after Prefer: wait)", body = CommandAccepted),
        (status = 200, description = "with Prefer: wait, applied: the command and the updated run", body = CommandView),
        (status = 404, description = "unknown run or request", body = ErrorBody),
        (status = 409, description = "not pending, run ended, or another command won (named)", body = ErrorBody),
        BodyErrors,
        (status = 500, description = "with Prefer: wait, the command failed for good", body = ErrorBody),
        AuthErrors))]
pub async fn resume(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ResumeIn>,
) -> Result<Response, ApiError> {
    let (idempotency_key, wait) = submission_headers(&headers)?;
    let target = target(body.run_id.as_deref(), body.thread_id.as_deref())?;
    let request_id =
        input::request_id("requestId", body.request_id.as_deref())?.ok_or_else(|| {
            ApiError::invalid(
                "requestId",
                "is required: the pending request being answered",
            )
        })?;
    let operator = acting(&principal, body.operator.as_ref())?;
    input::text("note", body.note.as_deref(), MAX_LONG_TEXT)?;
    let submission = SubmitCommand {
        target,
        input: CommandInput::Resume {
            request_id,
            responses: body.responses,
            force: body.force,
        },
        operator,
        note: body.note,
        idempotency_key,
        principal: Some(principal.clone()),
    };
    accept(&state, &principal, submission, wait).await
}

/// `POST /api/hitl/remove`.
#[utoipa::path(post, path = "/api/hitl/remove", tag = "hitl", security(("bearer" = [])),
    request_body = RemoveIn, params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 256 visible ASCII characters; a retry with the same key and body returns the same command (scoped to the command kind)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N from 0 to 30): wait up to N seconds for the outcome; other preferences are ignored")),
    responses(
        (status = 202, description = "accepted (or still running after Prefer: wait)", body = CommandAccepted),
        (status = 200, description = "with Prefer: wait, applied: the command and the updated run", body = CommandView),
        (status = 404, description = "unknown run or request", body = ErrorBody),
        (status = 409, description = "not pending, run ended, or another command won (named)", body = ErrorBody),
        BodyErrors,
        (status = 500, description = "with Prefer: wait, the command failed for good", body = ErrorBody),
        AuthErrors))]
pub async fn remove(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RemoveIn>,
) -> Result<Response, ApiError> {
    let (idempotency_key, wait) = submission_headers(&headers)?;
    let target = target(body.run_id.as_deref(), body.thread_id.as_deref())?;
    let request_id = input::request_id("requestId", body.request_id.as_deref())?;
    let operator = acting(&principal, body.operator.as_ref())?;
    input::text("note", body.note.as_deref(), MAX_LONG_TEXT)?;
    input::text("reason", body.reason.as_deref(), MAX_LONG_TEXT)?;
    let submission = SubmitCommand {
        target,
        input: CommandInput::Remove {
            request_id,
            reason: body.reason,
            force: body.force,
        },
        operator,
        note: body.note,
        idempotency_key,
        principal: Some(principal.clone()),
    };
    accept(&state, &principal, submission, wait).await
}

/// `GET /api/hitl/commands/{commandId}`: the command, and the run once it is final. An
/// id that cannot be a command id names nothing: 404 like an unknown one.
#[utoipa::path(get, path = "/api/hitl/commands/{commandId}", tag = "hitl", security(("bearer" = [])),
    params(("commandId" = String, Path, description = "the command id")),
    responses(
        (status = 200, description = "the command, with the run once it is final", body = CommandView),
        (status = 404, description = "no such command", body = ErrorBody),
        AuthErrors))]
pub async fn show(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("command_not_found", "no such command");
    let Path(raw) = path.map_err(|_| unknown())?;
    let id = CommandId::parse(&raw).map_err(|_| unknown())?;
    let command = state.service.command(&id).await?;
    Ok(outcome::json(
        axum::http::StatusCode::OK,
        &CommandView::from(command),
    ))
}

/// Submits, logs the API's named event for the accepted command (ids only, never a token
/// or free text), and answers as the `Prefer` header asked.
async fn accept(
    state: &AppState,
    principal: &Principal,
    submission: SubmitCommand,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let submitted = state.service.submit(submission).await?;
    let c = &submitted.command;
    // `name:` must be a literal for tracing's callsite, hence one arm per kind.
    macro_rules! accepted {
        ($name:literal, $message:literal) => {
            tracing::info!(
                name: $name,
                event = $name,
                run_id = %c.run_id,
                request_id = c.request_id.as_ref().map_or("", RequestId::as_str),
                command_id = %c.command_id,
                operator_id = %c.operator.id,
                token_name = %principal.name,
                created = !submitted.replayed,
                $message
            )
        };
    }
    match c.kind {
        CommandKind::Resume => accepted!("hitl_resume_api", "resume accepted"),
        CommandKind::Remove => accepted!("hitl_cancel_api", "remove accepted"),
        CommandKind::Retry => accepted!("hitl_retry_api", "retry accepted"),
    }
    outcome::answer(state, submitted, wait).await
}

/// The operator the request acts as: the credential's bound one, or the body's.
pub(super) fn acting(
    principal: &Principal,
    given: Option<&OperatorIn>,
) -> Result<Operator, ApiError> {
    let given = given.map(OperatorIn::parse).transpose()?;
    Ok(input::acting_operator(principal, given)?)
}

impl OperatorIn {
    fn parse(&self) -> Result<Operator, ApiError> {
        Ok(input::operator(
            &self.id,
            self.display_name.as_deref(),
            self.email.as_deref(),
        )?)
    }
}

/// The `Idempotency-Key` (1 to 256 visible ASCII characters) and `Prefer: wait=N` headers.
fn submission_headers(
    headers: &HeaderMap,
) -> Result<(Option<IdempotencyKey>, Option<std::time::Duration>), ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        // A value that is not even text is refused like any other bad key.
        Some(value) => Some(IdempotencyKey::parse(value.to_str().unwrap_or(""))?),
    };
    Ok((key, outcome::prefer_wait(headers)?))
}

/// `runId` or `threadId` (when both are given, `runId` decides and `threadId` must agree).
fn target(run_id: Option<&str>, thread_id: Option<&str>) -> Result<RunTarget, ApiError> {
    let run_id = input::run_id("runId", run_id)?;
    let thread_id = input::thread_id("threadId", thread_id)?;
    Ok(RunTarget::new(run_id, thread_id)?)
}

/// The body of `POST /api/runs/{runId}/retry`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryIn {
    /// As in a resume.
    #[serde(default)]
    operator: Option<OperatorIn>,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /api/runs/{runId}/retry`: puts a failed run back to running at the node that
/// failed. An id that cannot be a run id names nothing: 404 like an unknown one.
#[utoipa::path(post, path = "/api/runs/{runId}/retry", tag = "runs", security(("bearer" = [])),
    request_body = RetryIn, params(
        ("runId" = String, Path, description = "the failed run"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 256 visible ASCII characters; a retry with the same key and body returns the same command (scoped to the command kind)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N from 0 to 30): wait up to N seconds for the outcome; other preferences are ignored")),
    responses(
        (status = 202, description = "accepted (or still running after Prefer: wait)", body = CommandAccepted),
        (status = 200, description = "with Prefer: wait, applied: the command and the run, running again", body = CommandView),
        (status = 404, description = "unknown run", body = ErrorBody),
        (status = 409, description = "`run_not_failed`, or another retry won (named)", body = ErrorBody),
        BodyErrors,
        (status = 500, description = "with Prefer: wait, the command failed for good", body = ErrorBody),
        AuthErrors))]
pub async fn retry(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RetryIn>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("run_not_found", "no such run");
    let Path(raw) = path.map_err(|_| unknown())?;
    let run_id = RunId::parse(&raw).map_err(|_| unknown())?;
    let (idempotency_key, wait) = submission_headers(&headers)?;
    let operator = acting(&principal, body.operator.as_ref())?;
    input::text("note", body.note.as_deref(), MAX_LONG_TEXT)?;
    let submission = SubmitCommand {
        target: RunTarget::run(run_id),
        input: CommandInput::Retry,
        operator,
        note: body.note,
        idempotency_key,
        principal: Some(principal.clone()),
    };
    accept(&state, &principal, submission, wait).await
}
