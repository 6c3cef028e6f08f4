//! The one module that reads and writes orchestrator state (story: "a single persistence
//! module is the source of truth"). Nothing else in the crate writes SQL against the
//! orchestrator tables.
//!
//! Every state change is one function taking the caller's transaction, so a caller can
//! add the job enqueue to it. Each one locks the run row first (`for no key update`: it
//! serialises transitions of one run but does not block the key-share locks that
//! foreign-key checks of concurrent inserts take), checks the expected status, pending
//! request and version against the domain state machine, writes everything that belongs
//! together, bumps `version` and appends exactly one audit event. Locking the run before
//! any of its requests or commands gives one lock order, so transitions cannot deadlock.
//! A resume and the engine's steps after it in the same transaction are kept in a
//! [`TransitionWrite`] instead, checked step by step against the state machine, and
//! written in one statement with an event per step (`transition`).

mod agent_wait;
pub mod audit;
mod claims;
mod commands;
pub mod events;
pub mod jobs;
pub mod listen;
pub mod notifications;
pub mod queue;
pub mod rehydrate;
mod requests;
mod runs;
pub mod seed;
mod snapshot;
pub mod stats;
mod transition;

// What the operator console reads beside the pending list, and its sessions.
mod briefs;
mod sessions;

use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::domain::{
    AuditAction, CommandId, RequestId, RunId, RunStatus, Transition, TransitionError,
    TransitionOutcome, next_status,
};

pub use agent_wait::{AgentRetry, AgentWait, fail_abandoned_run, note_agent_unreachable};
pub use briefs::{BriefRecord, RequestBrief, find_brief, request_briefs};
pub use claims::{
    Claim, ClaimSubject, FollowUpOutcome, escalate, lock_claim_subject, notice_expiring, remind,
    write_claim, write_release,
};
pub use commands::{
    ApplyOutcome, Applying, CommandRecord, JobClaim, JobCompletion, NewCommand, RecordedCommand,
    Submission, Unwritten, apply_command, apply_command_for_job, claimed_refusal, explain_refusal,
    explain_retry_refusal, fail_command, find_command, find_command_by_idempotency_key,
    record_command, run_commands, submit_command,
};
pub use requests::{
    Approval, Approvals, Assignees, EscalationStep, ExpireOutcome, FollowUp, ItemKind, ItemOption,
    PendingFilter, PendingItem, RequestItem, RequestShape, ResponseInput, ResponseProblem,
    ToolCall, expire_request, expire_request_for_job, list_pending, validate_responses,
};
pub use runs::{
    BriefInput, Checkpoint, CreatedRun, Finish, NewRequest, NewRun, NodeRunnerState, RunHeader,
    RunRef, StepState, checkpoint, create_run, find_run, finish_run, raise_into, raise_request,
    runner_state, start_run,
};
pub use sessions::{NewSession, SessionRecord, delete_session, find_session, insert_session};
pub use snapshot::{
    AdvanceRead, AnsweredRequest, AuditRecord, RequestRecord, RequestView, ResponseRecord,
    RunRecord, RunSnapshot, RunState, load_request, load_run_state, load_run_state_in,
    load_snapshot, load_snapshot_in, read_for_advance,
};
pub use transition::{TransitionWrite, Written, lock_for_write};

/// A database transaction, as every transition takes it.
pub type Tx<'a> = Transaction<'a, Postgres>;

/// Who moves a run on after a transition leaves it `running` (a resume, an expiry that
/// approves or rejects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvanceBy {
    /// An advancement job, enqueued in the same transaction.
    Job,
    /// The caller, in the same transaction: the worker advances the run inline through
    /// local nodes (`Engine::advance_written`) and enqueues the job only when it must.
    Caller,
}

/// Why a persistence call refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    /// The run, request, brief or command named does not exist.
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// The caller's view of the run is out of date (fencing): someone else moved it on.
    #[error("run {run_id} is at version {actual}, not the expected {expected}")]
    StaleVersion {
        run_id: RunId,
        expected: i64,
        actual: i64,
    },
    /// The state machine does not allow this transition now.
    #[error("run {run_id}: {source}")]
    Transition {
        run_id: RunId,
        #[source]
        source: TransitionError,
    },
    /// The client's thread id is already used by another run.
    #[error("thread id {0} is already used by another run")]
    ThreadTaken(String),
    /// The idempotency key was used before with a different submission.
    #[error("idempotency key {0} was already used for a different request")]
    IdempotencyKeyReused(String),
    /// A response does not fit the request it answers.
    #[error("{0}")]
    InvalidResponse(ResponseProblem),
    /// Anything the database reported.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl PersistenceError {
    /// True when the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PersistenceError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            )
        )
    }
}

/// Who acted (defined with the refusal that names a winner).
pub use crate::domain::Operator;

/// The run row's fields a transition needs, read under the row lock.
#[derive(Clone, Debug, sqlx::FromRow)]
struct LockedRun {
    run_id: RunId,
    status: RunStatus,
    pending_request_id: Option<RequestId>,
    version: i64,
}

async fn lock_run(conn: &mut PgConnection, run_id: &RunId) -> Result<LockedRun, PersistenceError> {
    crate::db::query_as::<LockedRun>(
        "select run_id, status, pending_request_id, version \
         from orchestrator_runs where run_id = $1 for no key update",
    )
    .bind(run_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| PersistenceError::NotFound {
        entity: "run",
        id: run_id.to_string(),
    })
}

impl LockedRun {
    /// The run as a refusal describes it, for a command naming `request_id`.
    fn context(&self, request_id: Option<&RequestId>) -> crate::domain::RefusalContext {
        crate::domain::RefusalContext {
            run_id: Some(self.run_id.clone()),
            run_status: Some(self.status),
            request_id: request_id.cloned(),
            request_status: None,
            pending_request_id: self.pending_request_id.clone(),
        }
    }

    /// Checks `t` against the state machine (and, when given, the caller's version).
    fn check(
        &self,
        t: &Transition,
        expected_version: Option<i64>,
    ) -> Result<TransitionOutcome, PersistenceError> {
        if let Some(expected) = expected_version
            && expected != self.version
        {
            return Err(PersistenceError::StaleVersion {
                run_id: self.run_id.clone(),
                expected,
                actual: self.version,
            });
        }
        next_status(self.status, self.pending_request_id.as_ref(), t).map_err(|source| {
            PersistenceError::Transition {
                run_id: self.run_id.clone(),
                source,
            }
        })
    }
}

/// One audit event; `run_version` is the version the transition produced.
#[derive(Debug, Default)]
struct AuditEntry<'a> {
    run_version: i64,
    action: Option<AuditAction>,
    request_id: Option<&'a RequestId>,
    command_id: Option<&'a CommandId>,
    operator: Option<&'a Operator>,
    /// The credential the change came with.
    principal: Option<&'a str>,
    note: Option<&'a str>,
    from_status: Option<RunStatus>,
    to_status: Option<RunStatus>,
    details: Option<Value>,
}

async fn append_audit(
    conn: &mut PgConnection,
    run_id: &RunId,
    e: AuditEntry<'_>,
) -> Result<i64, PersistenceError> {
    audit::append(conn, run_id, e).await
}
