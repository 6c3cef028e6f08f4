//! Queue work: one handler per job kind, and the [`runner`] that claims jobs from the
//! PostgreSQL queue and runs them.
//!
//! Handlers are thin: they call `persistence` and the `engine`. A handler whose job's
//! effect is a single transition commits the job's completion in that same transaction
//! (`queue::complete`, fenced on the claim), so a redelivered job finds its effect
//! already applied and a worker that lost its claim cannot commit anything.

mod advance;
mod apply_command;
mod cleanup;
mod expire;
mod rehydrate;
mod rescan;
pub mod runner;
mod sweep;

use std::time::Duration;

use sqlx::PgPool;

use crate::engine::{AdvanceOutcome, Engine};
use crate::persistence::queue::{ClaimedJob, Job};
use crate::persistence::{self, PersistenceError, Tx};
pub use runner::{Worker, WorkerSettings};

/// What a handler needs.
pub(crate) struct JobContext {
    pub pool: PgPool,
    pub engine: Engine,
    pub worker_id: String,
    pub cleanup_interval: Duration,
    pub retain_done: Duration,
    pub retain_dead: Duration,
    /// Whether a job may retry after its first attempt (`HITL_JOB_MAX_ATTEMPTS` > 1): the
    /// inline advancement relies on a retry to recover from a fault in it.
    pub can_retry: bool,
}

/// How a job ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Its effect and its completion are committed.
    Done,
    /// It ran too early and was put back for later (not an attempt).
    Postponed,
    /// Its claim was taken away before it could complete: nothing was committed.
    LostClaim,
}

/// Why a job failed.
#[derive(Debug)]
pub(crate) enum JobError {
    /// Worth another try later (database unreachable, an agent timing out).
    Retry(String),
    /// Will never succeed (undecodable payload, the thing it names is gone): dead now.
    Fatal(String),
}

impl From<PersistenceError> for JobError {
    fn from(e: PersistenceError) -> Self {
        match e {
            PersistenceError::NotFound { .. } => JobError::Fatal(e.to_string()),
            other => JobError::Retry(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retry(e.to_string())
    }
}

/// Runs one claimed job.
pub(crate) async fn handle(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    job: &Job,
) -> Result<Handled, JobError> {
    match job {
        Job::ApplyResume(id) | Job::ApplyRemove(id) => {
            apply_command::handle(ctx, claimed, id).await
        }
        Job::Advance(run_id) => advance::handle(ctx, claimed, run_id).await,
        Job::Expire(request_id) => expire::handle(ctx, claimed, request_id).await,
        Job::Cleanup => cleanup::handle(ctx, claimed).await,
        Job::Rescan(after) => rescan::handle(ctx, claimed, after.as_ref()).await,
        Job::Rehydrate(run_ids) => rehydrate::handle(ctx, claimed, run_ids).await,
    }
}

/// Records what a dead job leaves behind, in the transaction that kills it: a command
/// whose job died ends `failed` with the error, never silently dropped.
pub(crate) async fn on_dead(
    tx: &mut Tx<'_>,
    job: &Job,
    error: &str,
) -> Result<(), PersistenceError> {
    if let Job::ApplyResume(id) | Job::ApplyRemove(id) = job
        && persistence::fail_command(tx, id, error).await?.is_some()
    {
        let kind = if matches!(job, Job::ApplyResume(_)) {
            "resume"
        } else {
            "remove"
        };
        crate::telemetry::metrics::metrics().inc(
            "hitl_commands_total",
            &[("kind", kind), ("outcome", "failed")],
        );
    }
    Ok(())
}

/// Moves a run that a transition in `tx` left `running` on, inline in `tx` through its
/// local nodes: one commit from the operator's answer to the run's next pause or its end.
///
/// Only on a job's first attempt, and only when there can be a second. When the engine stops before a node that calls out, or
/// refuses the run (a broken stored plan), what it wrote so far is consistent (a
/// checkpoint per node) and an advancement job takes over from there. When a write fails,
/// the transaction is lost: the error makes the job retry, and a retry applies the
/// command alone and leaves the advancement to a job, so a fault in the advancement can
/// never keep an operator's answer from committing. (A savepoint would do the same at
/// two more round trips on every resume.)
///
/// Returns the status the run reached (`awaiting_hitl` or a final one), if it moved to
/// one, for the caller to count once `tx` commits.
pub(crate) async fn continue_run(
    ctx: &JobContext,
    tx: &mut Tx<'_>,
    claimed: &ClaimedJob,
    run_id: &crate::domain::RunId,
) -> Result<Option<&'static str>, JobError> {
    if claimed.attempts == 0 && ctx.can_retry {
        match ctx.engine.advance_in(tx, run_id).await {
            Ok(AdvanceOutcome::Deferred { .. }) => {}
            Ok(outcome) => {
                tracing::debug!(%run_id, ?outcome, "run advanced inline");
                return Ok(reached(&outcome));
            }
            Err(crate::engine::EngineError::Persistence(e)) => {
                return Err(JobError::Retry(format!(
                    "advancing the run inline failed ({e}); the retry leaves it to a job"
                )));
            }
            Err(e) => {
                tracing::info!(%run_id, error = %e, "inline advancement stopped; handing it to a job");
            }
        }
    }
    persistence::queue::enqueue(tx, &Job::Advance(run_id.clone()), None).await?;
    Ok(None)
}

/// Counts runs moving to each status given; call once their transaction has committed.
pub(crate) fn count_transitions<'a>(statuses: impl IntoIterator<Item = &'a str>) {
    let m = crate::telemetry::metrics::metrics();
    for to in statuses {
        m.inc("hitl_run_transitions_total", &[("to", to)]);
    }
}

/// The status an advancement left the run in, when it moved it to a new one.
pub(crate) fn reached(outcome: &AdvanceOutcome) -> Option<&'static str> {
    match outcome {
        AdvanceOutcome::Paused { .. } => Some("awaiting_hitl"),
        AdvanceOutcome::Finished { status, .. } => Some(status.as_str()),
        _ => None,
    }
}

/// Commits `tx` with the job's completion, or rolls it back when the claim was lost.
pub(crate) async fn complete_with(
    ctx: &JobContext,
    mut tx: Tx<'_>,
    claimed: &ClaimedJob,
) -> Result<Handled, JobError> {
    if persistence::queue::complete(&mut tx, &claimed.id, &ctx.worker_id).await? {
        tx.commit().await?;
        Ok(Handled::Done)
    } else {
        tx.rollback().await?;
        Ok(Handled::LostClaim)
    }
}
