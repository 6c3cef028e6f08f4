//! What a submitted command is answered with, and how a command reads over HTTP.
//!
//! Without `Prefer: wait=N` the answer is `202 Accepted` with the command and a
//! `Location` to poll. With it (N whole seconds, 0 to 30; anything else is 422 naming
//! `Prefer`), the request waits for a worker to apply the command, looking at its row
//! every few milliseconds, and answers with the outcome: 200 with the command and the
//! updated run when it succeeded, 409 naming the winner when it was rejected, 500
//! `command_failed` when it failed for good, and 202 as usual when the time ran out (or
//! the server is shutting down).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::domain::{CommandId, CommandKind, CommandStatus, Operator, RequestId, RunId};
use crate::service::{CommandState, RunSnapshot, Submitted};

/// The longest `Prefer: wait` honoured, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 30;

/// A command as `GET /api/hitl/commands/{id}` and a successful wait show it: the row,
/// and the run's snapshot once the command is final (`null` before).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    command_id: CommandId,
    kind: CommandKind,
    status: CommandStatus,
    run_id: RunId,
    request_id: Option<RequestId>,
    idempotency_key: Option<String>,
    operator: Operator,
    note: Option<String>,
    payload: Value,
    outcome: Option<Value>,
    error: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    run: Option<RunSnapshot>,
}

impl From<CommandState> for CommandView {
    fn from(CommandState { command: c, run }: CommandState) -> Self {
        Self {
            command_id: c.command_id,
            kind: c.kind,
            status: c.status,
            run_id: c.run_id,
            request_id: c.request_id,
            idempotency_key: c.idempotency_key,
            operator: c.operator,
            note: c.note,
            payload: c.payload,
            outcome: c.outcome,
            error: c.error,
            attempts: c.attempts,
            created_at: c.created_at,
            updated_at: c.updated_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            run,
        }
    }
}

/// The seconds of a `Prefer: wait=N` preference, if the request has one.
pub fn prefer_wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let refuse = || {
        ApiError::invalid(
            "Prefer",
            format!("wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}"),
        )
    };
    let mut wait = None;
    for value in headers.get_all(header::HeaderName::from_static("prefer")) {
        let text = value.to_str().map_err(|_| refuse())?;
        for preference in text.split(',') {
            let token = preference.split(';').next().unwrap_or("").trim();
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("wait") {
                let seconds = value
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|s| *s <= MAX_WAIT_SECONDS)
                    .ok_or_else(refuse)?;
                wait = Some(Duration::from_secs(seconds));
            }
        }
    }
    Ok(wait)
}

/// Answers a submission, waiting up to `wait` for its outcome.
pub async fn answer(
    state: &AppState,
    Submitted { command, replayed }: Submitted,
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    let location = format!("/api/hitl/commands/{}", command.command_id);
    let mut response = match wait {
        None => accepted(&command),
        Some(wait) => {
            let done = state.service.wait_for(command, wait).await?;
            match done.command.status {
                CommandStatus::Succeeded => json(StatusCode::OK, &CommandView::from(done)),
                CommandStatus::Rejected => rejection(&done).into_response(),
                CommandStatus::Failed => ApiError::CommandFailed {
                    command_id: done.command.command_id.to_string(),
                }
                .into_response(),
                CommandStatus::Queued | CommandStatus::Running => accepted(&done.command),
            }
        }
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Some(wait) = wait
        && let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
    {
        headers.insert("preference-applied", v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn accepted(command: &crate::service::CommandRecord) -> Response {
    json(
        StatusCode::ACCEPTED,
        &json!({ "commandId": command.command_id, "status": command.status,
                 "kind": command.kind, "runId": command.run_id,
                 "requestId": command.request_id }),
    )
}

/// A rejected command as an error, from the refusal its outcome records (an outcome
/// this version cannot read is a plain conflict).
fn rejection(done: &CommandState) -> ApiError {
    match done.refusal() {
        Some(refusal) => ApiError::refused(refusal, Some(&done.command.command_id)),
        None => ApiError::Conflict {
            code: "conflict",
            message: "the command was rejected".into(),
            details: json!({ "commandId": done.command.command_id }),
        },
    }
}

/// `value` as a JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> Result<Option<Duration>, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        prefer_wait(&headers)
    }

    #[test]
    fn prefer_wait_reads_the_wait_preference_among_others() {
        assert_eq!(prefer(&[]).unwrap(), None);
        assert_eq!(prefer(&["wait=5"]).unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(
            prefer(&["respond-async, wait=30"]).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(prefer(&["handling=lenient"]).unwrap(), None);
    }

    #[test]
    fn prefer_wait_refuses_long_or_malformed_waits() {
        for bad in ["wait=31", "wait=-1", "wait=soon", "wait", "wait=1.5"] {
            assert!(prefer(&[bad]).is_err(), "{bad}");
        }
    }
}
