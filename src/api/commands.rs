//! `POST /api/hitl/resume`, `POST /api/hitl/remove` and `GET /api/hitl/commands/{id}`.
//!
//! A submission goes through, in order: authentication and scope (middleware and the
//! first extractor), the body, the `Idempotency-Key` lookup (a retry with the same key
//! and body gets the original command, even once applied, before any other check), the
//! HITL flag, field validation, a quick check that the run and request exist (404) and
//! that the request is the pending one (409), then the command row and its job in one
//! transaction, answered `202 Accepted`. Workers apply the command; `Prefer: wait=N`
//! waits for that outcome (see [`super::outcome`]).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::{Authorized, Operate, Principal};
use super::extract::ApiJson;
use super::openapi::{AuthErrors, BodyErrors, CommandAccepted, ErrorBody};
use super::outcome::{self, CommandView};
use super::{ApiError, AppState};
use crate::domain::{AuditAction, CommandId, CommandKind, RequestId, RunId, ThreadId};
use crate::persistence::{
    self, AuditRecord, NewCommand, Operator, RequestShape, ResponseInput, RunHeader, RunRef,
    RunSnapshot,
};

/// Longest operator id, display name, email and idempotency key, in characters.
const MAX_SHORT_TEXT: usize = 256;
/// Longest note or removal reason, in characters.
const MAX_LONG_TEXT: usize = 4000;

/// Who acts, as the runbook's `operator` object gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperatorIn {
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
    operator: OperatorIn,
    #[serde(default)]
    note: Option<String>,
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
    operator: OperatorIn,
    #[serde(default)]
    note: Option<String>,
}

/// The parts both submissions share.
struct Submission<'a> {
    kind: CommandKind,
    run_id: Option<&'a str>,
    thread_id: Option<&'a str>,
    request_id: Option<&'a str>,
    operator: &'a OperatorIn,
    note: Option<&'a str>,
    /// The normalized body, stored with the command; a retry must carry an equal one.
    payload: Value,
}

/// `POST /api/hitl/resume`.
#[utoipa::path(post, path = "/api/hitl/resume", tag = "hitl", security(("bearer" = [])),
    request_body = ResumeIn, params(
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key and body returns the same command"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): wait up to N seconds for the outcome")),
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
    let submission = Submission {
        kind: CommandKind::Resume,
        run_id: body.run_id.as_deref(),
        thread_id: body.thread_id.as_deref(),
        request_id: body.request_id.as_deref(),
        operator: &body.operator,
        note: body.note.as_deref(),
        payload: serde_json::to_value(&body).map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    submit(
        &state,
        &principal,
        &headers,
        submission,
        Some(&body.responses),
        None,
    )
    .await
}

/// `POST /api/hitl/remove`.
#[utoipa::path(post, path = "/api/hitl/remove", tag = "hitl", security(("bearer" = [])),
    request_body = RemoveIn, params(
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key and body returns the same command"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): wait up to N seconds for the outcome")),
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
    let submission = Submission {
        kind: CommandKind::Remove,
        run_id: body.run_id.as_deref(),
        thread_id: body.thread_id.as_deref(),
        request_id: body.request_id.as_deref(),
        operator: &body.operator,
        note: body.note.as_deref(),
        payload: serde_json::to_value(&body).map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    submit(
        &state,
        &principal,
        &headers,
        submission,
        None,
        body.reason.as_deref(),
    )
    .await
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
    let command = persistence::find_command(&state.pool, &id)
        .await?
        .ok_or_else(unknown)?;
    let view = CommandView::load(&state.pool, command).await?;
    Ok(outcome::json(axum::http::StatusCode::OK, &view))
}

async fn submit(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    s: Submission<'_>,
    responses: Option<&[ResponseInput]>,
    reason: Option<&str>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers)?;
    let wait = outcome::prefer_wait(headers)?;
    if let Some(key) = &key
        && let Some(earlier) =
            persistence::find_command_by_idempotency_key(&state.pool, s.kind, key).await?
    {
        if earlier.payload != s.payload {
            return Err(persistence::PersistenceError::IdempotencyKeyReused(key.clone()).into());
        }
        return outcome::answer(state, earlier, wait, true).await;
    }
    if !state.engine.hitl_enabled() {
        return Err(ApiError::Unavailable {
            code: "hitl_disabled",
            message: "HITL is disabled (HITL_ENABLED=false): resume and remove are off".into(),
            details: Value::Null,
        });
    }

    let target = run_ref(s.run_id, s.thread_id)?;
    let request_id = s
        .request_id
        .map(|r| RequestId::parse(r).map_err(|e| ApiError::invalid("requestId", e.to_string())))
        .transpose()?;
    if s.kind == CommandKind::Resume && request_id.is_none() {
        return Err(ApiError::invalid(
            "requestId",
            "is required: the pending request being answered",
        ));
    }
    let operator = operator(s.operator)?;
    check_text("note", s.note, MAX_LONG_TEXT)?;
    check_text("reason", reason, MAX_LONG_TEXT)?;

    // The early check reads in the recording transaction (one fewer commit per
    // submission). It only spares a doomed command: the worker checks again under the
    // run's lock, so a race here cannot apply a wrong answer.
    let mut tx = state.pool.begin().await?;
    let run_id = match &target {
        RunRef::Id(id) => id.clone(),
        RunRef::Thread(_) => find_run(&mut tx, &target).await?.run_id,
    };
    let mut snapshot = persistence::load_run_state_in(&mut tx, &run_id)
        .await?
        .ok_or_else(|| run_not_found(&run_id))?;
    if let Some(t) = s.thread_id
        && t != snapshot.run.thread_id.as_str()
    {
        return Err(ApiError::invalid(
            "threadId",
            "names a different run than runId",
        ));
    }
    let refused = snapshot.run.status.is_terminal()
        || request_id
            .as_ref()
            .is_some_and(|id| snapshot.run.pending_request_id.as_ref() != Some(id));
    if refused {
        // Only a refusal names who settled the request or ended the run: the audit log.
        snapshot = persistence::load_snapshot_in(&mut tx, &run_id)
            .await?
            .ok_or_else(|| run_not_found(&run_id))?;
    }
    check_target(&snapshot, request_id.as_ref(), responses)?;
    let recorded = persistence::record_command(
        &mut tx,
        NewCommand {
            kind: s.kind,
            run_id: run_id.clone(),
            request_id: request_id.clone(),
            idempotency_key: key,
            payload: s.payload,
            operator,
            note: s.note.map(str::to_owned),
            trace_context: crate::telemetry::current_trace_context()
                .and_then(|c| serde_json::to_value(c).ok()),
        },
    )
    .await?;
    tx.commit().await?;
    let command = recorded.command;
    match s.kind {
        CommandKind::Resume => tracing::info!(
            name: "hitl_resume_api",
            event = "hitl_resume_api",
            run_id = %command.run_id,
            request_id = command.request_id.as_ref().map_or("", RequestId::as_str),
            command_id = %command.command_id,
            operator_id = %command.operator.id,
            token_name = %principal.name,
            created = recorded.created,
            "resume accepted"
        ),
        CommandKind::Remove => tracing::info!(
            name: "hitl_cancel_api",
            event = "hitl_cancel_api",
            run_id = %command.run_id,
            request_id = command.request_id.as_ref().map_or("", RequestId::as_str),
            command_id = %command.command_id,
            operator_id = %command.operator.id,
            token_name = %principal.name,
            created = recorded.created,
            "remove accepted"
        ),
    }
    outcome::answer(state, command, wait, !recorded.created).await
}

/// The `Idempotency-Key` header: 1 to 256 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_SHORT_TEXT && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {MAX_SHORT_TEXT} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// `runId` or `threadId` (when both are given, `runId` decides and `threadId` must agree).
fn run_ref(run_id: Option<&str>, thread_id: Option<&str>) -> Result<RunRef, ApiError> {
    match (run_id, thread_id) {
        (Some(r), _) => RunId::parse(r)
            .map(RunRef::Id)
            .map_err(|e| ApiError::invalid("runId", e.to_string())),
        (None, Some(t)) => ThreadId::parse(t)
            .map(RunRef::Thread)
            .map_err(|e| ApiError::invalid("threadId", e.to_string())),
        (None, None) => Err(ApiError::invalid(
            "runId",
            "either runId or threadId is required",
        )),
    }
}

/// The run a thread id names (404 when none does).
async fn find_run(conn: &mut sqlx::PgConnection, target: &RunRef) -> Result<RunHeader, ApiError> {
    persistence::find_run(conn, target)
        .await?
        .ok_or_else(|| match target {
            RunRef::Id(id) => run_not_found(id),
            RunRef::Thread(t) => {
                ApiError::not_found("run_not_found", format!("no run has thread id {t}"))
            }
        })
}

fn run_not_found(id: &RunId) -> ApiError {
    ApiError::not_found("run_not_found", format!("run {id} not found"))
}

fn operator(o: &OperatorIn) -> Result<Operator, ApiError> {
    if o.id.trim().is_empty() {
        return Err(ApiError::invalid("operator.id", "must not be blank"));
    }
    check_text("operator.id", Some(&o.id), MAX_SHORT_TEXT)?;
    check_text(
        "operator.displayName",
        o.display_name.as_deref(),
        MAX_SHORT_TEXT,
    )?;
    check_text("operator.email", o.email.as_deref(), MAX_SHORT_TEXT)?;
    if o.email.as_deref().is_some_and(|e| !e.contains('@')) {
        return Err(ApiError::invalid(
            "operator.email",
            "is not an email address",
        ));
    }
    Ok(Operator {
        id: o.id.clone(),
        display_name: o.display_name.clone(),
        email: o.email.clone(),
    })
}

fn check_text(field: &str, text: Option<&str>, max: usize) -> Result<(), ApiError> {
    match text {
        Some(t) if t.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        _ => Ok(()),
    }
}

/// The quick checks before recording: the request exists in this run (404), the answers
/// fit it (422), the run has not ended and the request is the pending one (409). The
/// worker checks again under the run's lock; these only spare clients a pointless command.
fn check_target(
    snapshot: &RunSnapshot,
    request_id: Option<&RequestId>,
    responses: Option<&[ResponseInput]>,
) -> Result<(), ApiError> {
    let run = &snapshot.run;
    let request = match request_id {
        None => None,
        Some(id) => Some(
            snapshot
                .hitl_requests
                .iter()
                .find(|r| &r.request_id == id)
                .ok_or_else(|| {
                    ApiError::not_found(
                        "request_not_found",
                        format!("run {} has no request {id}", run.run_id),
                    )
                })?,
        ),
    };
    if let (Some(request), Some(responses)) = (request, responses) {
        let shape = RequestShape {
            request_id: &request.request_id,
            response_types: &request.response_types,
            options: &request.options,
        };
        persistence::validate_responses(&shape, responses)
            .map_err(|p| ApiError::invalid(p.field, p.message))?;
    }
    let details = |winner: Option<&AuditRecord>| {
        json!({ "runId": run.run_id, "runStatus": run.status,
                "requestId": request_id, "requestStatus": request.map(|r| r.status),
                "pendingRequestId": run.pending_request_id, "winner": winner.map(winner_json) })
    };
    if let Some(request) = request
        && run.pending_request_id.as_ref() != Some(&request.request_id)
    {
        let settled = snapshot.audit_log.iter().find(|e| {
            e.request_id.as_ref() == Some(&request.request_id)
                && matches!(
                    e.action,
                    AuditAction::Resume | AuditAction::Remove | AuditAction::Expire
                )
        });
        let pending = match &run.pending_request_id {
            Some(p) => format!("the pending request is {p}"),
            None => format!("the run has no pending request (it is {})", run.status),
        };
        return Err(match settled {
            Some(e) => ApiError::Conflict {
                code: "conflict",
                message: format!(
                    "request {} was already settled ({}) by {}; {pending}",
                    request.request_id,
                    request.status,
                    who(e)
                ),
                details: details(Some(e)),
            },
            None => ApiError::Conflict {
                code: "not_pending",
                message: format!(
                    "request {} is {}, not pending; {pending}",
                    request.request_id, request.status
                ),
                details: details(None),
            },
        });
    }
    if run.status.is_terminal() {
        let ended = snapshot
            .audit_log
            .iter()
            .rev()
            .find(|e| e.to_status == run.status && e.command_id.is_some());
        return Err(ApiError::Conflict {
            code: if ended.is_some() {
                "conflict"
            } else {
                "run_terminal"
            },
            message: match ended {
                Some(e) => format!(
                    "run {} was already {} by {}",
                    run.run_id,
                    run.status,
                    who(e)
                ),
                None => format!("run {} is already {}", run.run_id, run.status),
            },
            details: details(ended),
        });
    }
    Ok(())
}

/// Who settled something, in the shape rejected commands' outcomes use.
fn winner_json(e: &AuditRecord) -> Value {
    json!({ "commandId": e.command_id, "action": e.action, "operator": e.operator, "at": e.at })
}

fn who(e: &AuditRecord) -> String {
    match (&e.command_id, &e.operator) {
        (Some(c), Some(o)) => format!("command {c} of operator {}", o.id),
        (Some(c), None) => format!("command {c}"),
        _ => format!("the system ({})", e.action),
    }
}
