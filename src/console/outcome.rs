//! `GET /console/commands/{commandId}`: what became of an answer or a removal. The page
//! waits a few seconds for a worker to apply the command (the service's `wait_for`, as
//! `Prefer: wait` does), then says what happened: applied, and where the run is now; or
//! refused, naming who answered first; or still running, with a link to look again.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::Console;
use super::pages::{self, Chrome, OutcomePage};
use super::views::{person, when};
use crate::domain::{CommandId, CommandKind, CommandStatus, Refusal, RequestId};
use crate::service::CommandState;

/// How long the page waits for the command's outcome.
const WAIT: Duration = Duration::from_secs(5);

/// Who settled the request or ended the run first.
pub struct WinnerView {
    pub operator: String,
    pub action: String,
    pub at: String,
    pub command_id: Option<String>,
}

/// What the outcome page says.
pub struct OutcomeView {
    pub heading: String,
    pub summary: String,
    /// `ok`, `conflict`, `failed` or `waiting` (a class for the stylesheet).
    pub tone: &'static str,
    pub winner: Option<WinnerView>,
    pub command_id: Option<String>,
    pub command_status: String,
    pub run_id: String,
    pub run_status: Option<String>,
    pub request_id: Option<String>,
    /// This page's address, while the command is still being applied.
    pub reload: Option<String>,
}

impl OutcomeView {
    /// A refusal, whether the service met it before recording the command or a worker
    /// met it applying one.
    pub fn refused(refusal: &Refusal, request_id: Option<&RequestId>) -> Self {
        let (heading, winner) = match refusal {
            Refusal::Conflict { winner, .. } => (
                "Someone answered first",
                Some(WinnerView {
                    operator: winner
                        .operator
                        .as_ref()
                        .map_or_else(|| "the system".to_owned(), person),
                    action: winner.action.to_string(),
                    at: when(winner.at),
                    command_id: winner.command_id.as_ref().map(ToString::to_string),
                }),
            ),
            Refusal::Claimed { .. } => ("Someone else has claimed it", None),
            Refusal::AlreadyApproved { .. } => ("You have approved it already", None),
            _ => ("Not applied", None),
        };
        let context = match refusal {
            Refusal::Conflict { context, .. }
            | Refusal::NotPending { context, .. }
            | Refusal::RunTerminal { context, .. }
            | Refusal::RunNotFailed { context, .. }
            | Refusal::Claimed { context, .. }
            | Refusal::AlreadyApproved { context, .. } => Some(context),
            Refusal::InvalidResponse { .. } | Refusal::InvalidPayload { .. } => None,
        };
        Self {
            heading: heading.to_owned(),
            summary: refusal.message().to_owned(),
            tone: "conflict",
            winner,
            command_id: None,
            command_status: String::new(),
            run_id: context
                .and_then(|c| c.run_id.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
            run_status: context.and_then(|c| c.run_status).map(|s| s.to_string()),
            request_id: request_id.map(ToString::to_string),
            reload: None,
        }
    }

    fn of(state: &CommandState) -> Self {
        let c = &state.command;
        let run_status = state.run.as_ref().map(|r| r.run.status.to_string());
        let mut view = match (c.status, state.refusal()) {
            (CommandStatus::Rejected, Some(refusal)) => {
                Self::refused(&refusal, c.request_id.as_ref())
            }
            (CommandStatus::Succeeded, _) => {
                let approvals = c.outcome.as_ref().map(|o| &o["approvals"]);
                let pending = state
                    .run
                    .as_ref()
                    .is_some_and(|r| r.run.pending_request_id == c.request_id);
                let (heading, summary) = match (c.kind, approvals) {
                    (CommandKind::Resume, Some(a)) if pending && a.is_object() => (
                        "Approval recorded".to_owned(),
                        format!(
                            "{} of {} approvals are in; the request waits for the rest.",
                            a["have"], a["required"]
                        ),
                    ),
                    (CommandKind::Retry, _) => (
                        "Run retried".to_owned(),
                        format!("The run is {}.", run_status.as_deref().unwrap_or("?")),
                    ),
                    (CommandKind::Remove, _) => (
                        "Run removed".to_owned(),
                        format!("The run is {}.", run_status.as_deref().unwrap_or("?")),
                    ),
                    _ => (
                        "Answer applied".to_owned(),
                        format!("The run is {}.", run_status.as_deref().unwrap_or("?")),
                    ),
                };
                Self::plain(heading, summary, "ok")
            }
            (CommandStatus::Failed | CommandStatus::Rejected, _) => Self::plain(
                "The command failed".to_owned(),
                format!(
                    "It could not be applied: {}",
                    c.error.as_deref().unwrap_or("no reason was recorded")
                ),
                "failed",
            ),
            (CommandStatus::Queued | CommandStatus::Running, _) => {
                let mut view = Self::plain(
                    "Still being applied".to_owned(),
                    "A worker has not applied it yet; it will be, even if you leave this page."
                        .to_owned(),
                    "waiting",
                );
                view.reload = Some(format!("/console/commands/{}", c.command_id));
                view
            }
        };
        view.command_id = Some(c.command_id.to_string());
        view.command_status = c.status.to_string();
        view.run_id = c.run_id.to_string();
        view.run_status = run_status.or(view.run_status);
        view.request_id = c.request_id.as_ref().map(ToString::to_string);
        view
    }

    fn plain(heading: String, summary: String, tone: &'static str) -> Self {
        Self {
            heading,
            summary,
            tone,
            winner: None,
            command_id: None,
            command_status: String::new(),
            run_id: String::new(),
            run_status: None,
            request_id: None,
            reload: None,
        }
    }
}

/// `GET /console/commands/{commandId}`.
pub async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = CommandId::parse(&raw) else {
        return pages::refused(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such command.",
        );
    };
    let mut state = match console.service.command(&id).await {
        Ok(s) => s,
        Err(e) => return pages::service_error(e, Some(&signed)),
    };
    if !state.command.status.is_final() {
        state = match console.service.wait_for(state.command, WAIT).await {
            Ok(s) => s,
            Err(e) => return pages::service_error(e, Some(&signed)),
        };
    }
    let view = OutcomeView::of(&state);
    let status = match view.tone {
        "conflict" => StatusCode::CONFLICT,
        "failed" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    pages::render(
        status,
        &OutcomePage {
            chrome: Chrome::of(&signed),
            o: view,
        },
    )
}
