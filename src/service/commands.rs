//! Resume and remove: submitting a command (idempotency, the early check against the
//! run, recording it with its job), reading it, and waiting for a worker to apply it.
//!
//! The order of a submission: an earlier command under the same idempotency key is
//! returned as it is (even once applied, before any other check); then the HITL flag;
//! then the run and request must exist (404), the answers must fit the request (422),
//! and the request must be the pending one (409, naming who settled it); then the
//! command and its job are committed. The lookup, the check's read and the command's
//! insert are one statement (`persistence::submit_command`); the checks run in Rust on
//! what it read, and a refusal rolls the insert back. The early check only spares a
//! doomed command: the worker checks again under the run's lock.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::input::IdempotencyKey;
use super::{Entity, RunSnapshot, Service, ServiceError};
use crate::domain::{
    CommandId, CommandKind, Operator, Refusal, RefusalContext, RequestId, ResponseType, RunId,
    ThreadId, Transition, next_status,
};
use crate::persistence::{self, CommandRecord, NewCommand, RequestShape, ResponseInput};
use sqlx::PgConnection;

/// How long to wait between looks at the command's row while a client waits.
const POLL_INTERVAL: Duration = Duration::from_millis(15);

/// The run a command is for: by run id, by thread id, or by both (the run id decides
/// and the thread id must be that run's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTarget {
    run_id: Option<RunId>,
    thread_id: Option<ThreadId>,
}

impl RunTarget {
    /// `runId` or `threadId`, at least one (422 naming `runId` otherwise).
    pub fn new(run_id: Option<RunId>, thread_id: Option<ThreadId>) -> Result<Self, ServiceError> {
        if run_id.is_none() && thread_id.is_none() {
            return Err(ServiceError::invalid(
                "runId",
                "either runId or threadId is required",
            ));
        }
        Ok(Self { run_id, thread_id })
    }

    /// The run by its id.
    pub fn run(run_id: RunId) -> Self {
        Self {
            run_id: Some(run_id),
            thread_id: None,
        }
    }
}

/// What the command does.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandInput {
    /// Answer the pending request `request_id` with `responses`.
    Resume {
        request_id: RequestId,
        responses: Vec<ResponseInput>,
        /// Override another principal's claim on the request (needs `supervise`).
        force: bool,
    },
    /// Cancel the run; `request_id`, when given, must be the pending request.
    Remove {
        request_id: Option<RequestId>,
        reason: Option<String>,
        /// As for a resume.
        force: bool,
    },
    /// Put a failed run back to running at the node that failed.
    Retry,
}

/// A resume or remove to submit.
#[derive(Clone, Debug)]
pub struct SubmitCommand {
    pub target: RunTarget,
    pub input: CommandInput,
    /// Who acts (see `input::acting_operator`).
    pub operator: Operator,
    pub note: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The credential submitting it: named in the audit, and checked against the
    /// request's assignees.
    pub principal: Option<crate::identity::Principal>,
}

/// The submission as stored with the command: what a retry under the same key must
/// repeat, and what the worker applies (`responses`, `reason`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    run_id: Option<&'a RunId>,
    thread_id: Option<&'a ThreadId>,
    request_id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    responses: Option<&'a [ResponseInput]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Option<&'a str>>,
    operator: &'a Operator,
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    force: bool,
}

impl SubmitCommand {
    fn kind(&self) -> CommandKind {
        match self.input {
            CommandInput::Resume { .. } => CommandKind::Resume,
            CommandInput::Remove { .. } => CommandKind::Remove,
            CommandInput::Retry => CommandKind::Retry,
        }
    }

    fn request_id(&self) -> Option<&RequestId> {
        match &self.input {
            CommandInput::Resume { request_id, .. } => Some(request_id),
            CommandInput::Remove { request_id, .. } => request_id.as_ref(),
            CommandInput::Retry => None,
        }
    }

    fn force(&self) -> bool {
        match self.input {
            CommandInput::Resume { force, .. } | CommandInput::Remove { force, .. } => force,
            CommandInput::Retry => false,
        }
    }

    fn payload(&self) -> Result<Value, ServiceError> {
        let (responses, reason) = match &self.input {
            CommandInput::Resume { responses, .. } => (Some(responses.as_slice()), None),
            CommandInput::Remove { reason, .. } => (None, Some(reason.as_deref())),
            CommandInput::Retry => (None, None),
        };
        serde_json::to_value(Payload {
            run_id: self.target.run_id.as_ref(),
            thread_id: self.target.thread_id.as_ref(),
            request_id: self.request_id(),
            responses,
            reason,
            operator: &self.operator,
            note: self.note.as_deref(),
            force: self.force(),
        })
        .map_err(|e| ServiceError::Internal(format!("a command's payload: {e}")))
    }
}

/// A submitted command, and whether an earlier submission under the same idempotency
/// key recorded it (`replayed`).
#[derive(Clone, Debug)]
pub struct Submitted {
    pub command: CommandRecord,
    pub replayed: bool,
}

/// A command, with its run's snapshot once the command is final (`None` before).
#[derive(Clone, Debug)]
pub struct CommandState {
    pub command: CommandRecord,
    pub run: Option<RunSnapshot>,
}

impl CommandState {
    /// Why the command was rejected, when it was.
    pub fn refusal(&self) -> Option<Refusal> {
        self.command.outcome.as_ref().and_then(Refusal::from_json)
    }
}

impl Service {
    /// Submits a resume or remove. See the module docs for the order of the checks;
    /// nothing is written unless the command is recorded.
    pub async fn submit(&self, submission: SubmitCommand) -> Result<Submitted, ServiceError> {
        let kind = submission.kind();
        let payload = submission.payload()?;
        let key = submission
            .idempotency_key
            .as_ref()
            .map(|k| k.as_str().to_owned());
        // A retry re-enters a failed node; it does not depend on HITL pausing.
        if kind != CommandKind::Retry && !self.engine.hitl_enabled() {
            let earlier = self.earlier_command(kind, key.as_deref()).await?;
            return match earlier {
                Some(earlier) => replayed(earlier, &payload),
                None => Err(ServiceError::HitlDisabled),
            };
        }
        // One statement: the idempotency lookup, the early check's read and the command
        // with its job, committed once the check in Rust passes (and rolled back when it
        // refuses). The check is advice — the worker checks again under the run's lock
        // and records any refusal — but reading and writing in one statement costs one
        // round trip, not two.
        let mut tx = self.pool.begin().await?;
        let submitted = persistence::submit_command(
            &mut tx,
            submission.target.thread_id.as_ref(),
            NewCommand {
                kind,
                run_id: submission.target.run_id.clone(),
                request_id: submission.request_id().cloned(),
                idempotency_key: key.clone(),
                payload: payload.clone(),
                operator: submission.operator.clone(),
                note: submission.note.clone(),
                principal: submission.principal.as_ref().map(|p| p.name.to_string()),
                approver: match (&submission.input, &submission.principal) {
                    (CommandInput::Resume { .. }, Some(p)) => Some(p.approver()),
                    _ => None,
                },
                trace_context: crate::telemetry::current_trace_context()
                    .and_then(|c| serde_json::to_value(c).ok()),
            },
        )
        .await?;
        if let Some(earlier) = submitted.earlier {
            tx.rollback().await?;
            return replayed(earlier, &payload);
        }
        let Some(snapshot) = submitted.run else {
            tx.rollback().await?;
            return Err(
                match (&submission.target.run_id, &submission.target.thread_id) {
                    (Some(run_id), _) => {
                        ServiceError::not_found(Entity::Run, format!("run {run_id} not found"))
                    }
                    (None, Some(thread)) => ServiceError::not_found(
                        Entity::Run,
                        format!("no run has thread id {thread}"),
                    ),
                    (None, None) => {
                        ServiceError::invalid("runId", "either runId or threadId is required")
                    }
                },
            );
        };
        if let Err(refused) = check(&mut tx, &snapshot, &submission).await {
            tx.rollback().await?;
            return Err(refused);
        }
        let Some(command) = submitted.recorded else {
            // A submission under the same key committed after this statement's snapshot
            // was taken: its command is the answer.
            tx.rollback().await?;
            let earlier = self.earlier_command(kind, key.as_deref()).await?;
            return match earlier {
                Some(earlier) => replayed(earlier, &payload),
                None => Err(ServiceError::Internal(
                    "a command was neither recorded nor found".into(),
                )),
            };
        };
        tx.commit().await?;
        Ok(Submitted {
            command,
            replayed: false,
        })
    }

    /// The command recorded earlier under idempotency key `key` for `kind`, if any.
    async fn earlier_command(
        &self,
        kind: CommandKind,
        key: Option<&str>,
    ) -> Result<Option<CommandRecord>, ServiceError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let mut conn = crate::db::session(&self.pool).await?;
        let earlier = persistence::find_command_by_idempotency_key(&mut *conn, kind, key).await?;
        conn.close().await?;
        Ok(earlier)
    }

    /// The command `id`, with its run once it is final.
    pub async fn command(&self, id: &CommandId) -> Result<CommandState, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let command = persistence::find_command(&mut *conn, id).await?;
        conn.close().await?;
        let command =
            command.ok_or_else(|| ServiceError::not_found(Entity::Command, "no such command"))?;
        self.command_state(command).await
    }

    /// The commands of `run_id`, oldest first (the first 200: a run has a handful).
    pub async fn run_commands(&self, run_id: &RunId) -> Result<Vec<CommandRecord>, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let commands = persistence::run_commands(&mut *conn, run_id, 200).await?;
        conn.close().await?;
        Ok(commands)
    }

    /// Waits up to `wait` (less when the service shuts down) for `command` to become
    /// final, and returns it as it then is, with its run when it is final.
    pub async fn wait_for(
        &self,
        mut command: CommandRecord,
        wait: Duration,
    ) -> Result<CommandState, ServiceError> {
        let deadline = Instant::now() + wait;
        while !command.status.is_final() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL_INTERVAL.min(left)) => {}
            }
            let mut conn = crate::db::session(&self.pool).await?;
            let found = persistence::find_command(&mut *conn, &command.command_id).await?;
            conn.close().await?;
            command = found
                .ok_or_else(|| ServiceError::Internal("a recorded command vanished".into()))?;
        }
        self.command_state(command).await
    }

    async fn command_state(&self, command: CommandRecord) -> Result<CommandState, ServiceError> {
        let run = if command.status.is_final() {
            persistence::load_snapshot(&self.pool, &command.run_id).await?
        } else {
            None
        };
        Ok(CommandState { command, run })
    }
}

/// An earlier command under the same key: the answer when the payload is the same (409
/// `idempotency_key_reused` otherwise).
fn replayed(earlier: CommandRecord, payload: &Value) -> Result<Submitted, ServiceError> {
    if &earlier.payload != payload {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    Ok(Submitted {
        command: earlier,
        replayed: true,
    })
}

/// The early check: the named request exists (404), the thread id agrees,
/// the answers fit the request (422), and the state machine allows the command now (409
/// with the refusal the worker would record).
async fn check(
    tx: &mut PgConnection,
    snapshot: &RunSnapshot,
    submission: &SubmitCommand,
) -> Result<(), ServiceError> {
    let run = &snapshot.run;
    if let Some(thread) = &submission.target.thread_id
        && thread != &run.thread_id
    {
        // Well-formed, but no run has both: as a run that does not exist (409 would say
        // the run's state is wrong; 422, that the body is).
        return Err(ServiceError::not_found(
            Entity::Run,
            format!("run {} is not the run of thread {thread}", run.run_id),
        ));
    }
    let request_id = submission.request_id();
    let request = match request_id {
        None => None,
        Some(id) => Some(
            snapshot
                .hitl_requests
                .iter()
                .find(|r| &r.request_id == id)
                .ok_or_else(|| {
                    ServiceError::not_found(
                        Entity::Request,
                        format!("run {} has no request {id}", run.run_id),
                    )
                })?,
        ),
    };
    // Only an assignee answers or removes an assigned request (or a supervisor).
    let assigned = request.or_else(|| {
        run.pending_request_id
            .as_ref()
            .and_then(|id| snapshot.hitl_requests.iter().find(|r| &r.request_id == id))
    });
    if let (Some(assignees), Some(principal)) = (
        assigned.and_then(|r| r.assignees.as_ref()),
        submission.principal.as_ref(),
    ) && !matches!(submission.input, CommandInput::Retry)
        && !principal.scopes.contains(crate::identity::Scope::Supervise)
        && !assignees.admit(
            principal.operator.as_ref().map(|o| o.id.as_str()),
            &principal.groups,
        )
    {
        return Err(ServiceError::NotAssignee {
            request_id: assigned
                .map(|r| r.request_id.to_string())
                .unwrap_or_default(),
        });
    }
    if submission.force()
        && !submission
            .principal
            .as_ref()
            .is_some_and(|p| p.scopes.contains(crate::identity::Scope::Supervise))
    {
        return Err(ServiceError::ForceNeedsSupervise);
    }
    if let (Some(request), CommandInput::Resume { responses, .. }) = (request, &submission.input) {
        let shape = RequestShape {
            request_id: &request.request_id,
            items: &request.items,
            approvals_required: request.approvals.as_ref().map(|a| a.required as i32),
        };
        persistence::validate_responses(&shape, responses)
            .map_err(|p| ServiceError::invalid(p.field, p.message))?;
    }
    let transition = match &submission.input {
        CommandInput::Resume { request_id, .. } => Transition::Resume {
            request_id: request_id.clone(),
        },
        CommandInput::Remove { request_id, .. } => Transition::Remove {
            request_id: request_id.clone(),
        },
        CommandInput::Retry => Transition::Retry,
    };
    if let Err(error) = next_status(run.status, run.pending_request_id.as_ref(), &transition) {
        let context = RefusalContext {
            run_id: Some(run.run_id.clone()),
            run_status: Some(run.status),
            request_id: request_id.cloned(),
            request_status: request.map(|r| r.status),
            pending_request_id: run.pending_request_id.clone(),
        };
        let refusal = match transition {
            Transition::Retry => persistence::explain_retry_refusal(tx, context, None).await?,
            _ => persistence::explain_refusal(tx, context, &error).await?,
        };
        return Err(ServiceError::Refused(Box::new(refusal)));
    }
    // The request is pending: a claim someone else holds, or an approval already
    // counted, refuses the command now, as the worker would.
    let context = || RefusalContext {
        run_id: Some(run.run_id.clone()),
        run_status: Some(run.status),
        request_id: assigned.map(|r| r.request_id.clone()),
        request_status: assigned.map(|r| r.status),
        pending_request_id: run.pending_request_id.clone(),
    };
    if let Some(request) = assigned.filter(|_| !matches!(submission.input, CommandInput::Retry))
        && let (Some(holder), Some(expires_at)) = (&request.claimed_by, request.claim_expires_at)
        && !submission.force()
        && !holder.0.is(
            submission.principal.as_ref().map(|p| &*p.name),
            &submission.operator,
        )
    {
        let claim = persistence::Claim {
            claimed_by: holder.0.clone(),
            claim_expires_at: expires_at,
        };
        let refusal = persistence::claimed_refusal(&claim, context());
        return Err(ServiceError::Refused(Box::new(refusal)));
    }
    if let (Some(request), CommandInput::Resume { responses, .. }, Some(principal)) =
        (request, &submission.input, &submission.principal)
        && let Some(approvals) = &request.approvals
        && approvals.counts(&principal.approver())
        && responses
            .iter()
            .all(|r| r.response_type == ResponseType::Approval && r.approved == Some(true))
    {
        let approver = principal.approver();
        let refusal = Refusal::AlreadyApproved {
            message: format!(
                "{approver} has already approved request {} ({} of {} approvals are in)",
                request.request_id, approvals.have, approvals.required
            ),
            approver,
            context: context(),
        };
        return Err(ServiceError::Refused(Box::new(refusal)));
    }
    Ok(())
}
