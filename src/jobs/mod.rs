//! Queue work: one [`Handler`] per job kind, one file per kind, all registered in
//! [`registry`]; and the [`runner`] that claims jobs of the registered kinds and runs
//! them.
//!
//! Handlers are thin: they call `persistence` and the `engine`. A handler whose job's
//! effect is a single transition commits the job's completion in that same transaction
//! (`queue::complete`, fenced on the claim), so a redelivered job finds its effect
//! already applied and a worker that lost its claim cannot commit anything.
//!
//! Adding a kind: a file with its payload (a `persistence::jobs::JobPayload`, declared
//! in `persistence::jobs` when a transition enqueues it) and its `Handler`, plus one
//! line in [`registry`]. A worker claims only the kinds it has registered, so workers of
//! two versions can share a queue during an upgrade: a kind the old one does not know
//! stays pending for the new one.

mod advance;
mod apply_command;
mod cleanup;
mod expire;
mod follow_up;
pub mod notify;
mod rehydrate;
mod rescan;
pub mod runner;
mod sweep;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::engine::{AdvanceOutcome, Engine};
use crate::persistence::jobs::{self, JobPayload};
pub use crate::persistence::queue::ClaimedJob;
use crate::persistence::{self, PersistenceError, Tx};
pub use notify::{Notifier, NotifySettings};
pub use runner::{QuietError, Worker, WorkerSettings};

/// Every job kind this build runs: one line per kind.
pub fn registry() -> Registry {
    Registry::default()
        .with(apply_command::ApplyCommandJob::<jobs::ApplyResume>::new())
        .with(apply_command::ApplyCommandJob::<jobs::ApplyRemove>::new())
        .with(apply_command::ApplyCommandJob::<jobs::ApplyRetry>::new())
        .with(advance::AdvanceJob)
        .with(expire::ExpireJob)
        .with(follow_up::RemindJob)
        .with(follow_up::EscalateJob)
        .with(follow_up::ExpiringJob)
        .with(cleanup::CleanupJob)
        .with(rescan::RescanJob)
        .with(rehydrate::RehydrateJob)
}

/// What a handler can reach.
pub struct JobContext {
    pub(crate) pool: PgPool,
    pub(crate) engine: Engine,
    pub(crate) worker_id: String,
    pub(crate) cleanup_interval: Duration,
    pub(crate) retain_done: Duration,
    pub(crate) retain_dead: Duration,
    /// Whether a job may retry after its first attempt (`HITL_JOB_MAX_ATTEMPTS` > 1): the
    /// inline advancement relies on a retry to recover from a fault in it.
    pub(crate) can_retry: bool,
}

impl JobContext {
    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This worker's id: the one a claim is fenced on.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
}

/// How a job ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Its effect and its completion are committed.
    Done,
    /// It ran too early and was put back for later (not an attempt).
    Postponed,
    /// Its claim was taken away before it could complete: nothing was committed.
    LostClaim,
}

/// Why a job failed.
#[derive(Debug)]
pub enum JobError {
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

/// One job kind: its payload type (which names the kind) and what running it does.
pub trait Handler: Send + Sync + 'static {
    /// The payload; `Payload::KIND` is the kind's stable name.
    type Payload: JobPayload;

    /// Runs one claimed job of the kind.
    fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        payload: Self::Payload,
    ) -> impl Future<Output = Result<Handled, JobError>> + Send;

    /// What the job's span names: (`run.id` | `request.id` | `command.id`, the id).
    fn subject(_payload: &Self::Payload) -> Option<(&'static str, String)> {
        None
    }

    /// Records what a dead job leaves behind, in the transaction that kills it.
    fn on_dead(
        &self,
        _tx: &mut Tx<'_>,
        _payload: &Self::Payload,
        _error: &str,
    ) -> impl Future<Output = Result<(), PersistenceError>> + Send {
        async { Ok(()) }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A decoded job, ready to run: what its span shows, and the run itself.
pub(crate) struct Decoded<'a> {
    pub trace: Option<std::collections::HashMap<String, String>>,
    pub subject: Option<(&'static str, String)>,
    pub run: BoxFuture<'a, Result<Handled, JobError>>,
}

/// A handler with its payload type erased, so the runner can hold every kind in one list.
pub(crate) trait Erased: Send + Sync {
    fn kind(&self) -> &'static str;
    fn decode<'a>(
        &'a self,
        ctx: &'a JobContext,
        claimed: &'a ClaimedJob,
    ) -> Result<Decoded<'a>, String>;
    fn on_dead<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        payload: &'a [u8],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), PersistenceError>>;
}

impl<H: Handler> Erased for H {
    fn kind(&self) -> &'static str {
        H::Payload::KIND
    }

    fn decode<'a>(
        &'a self,
        ctx: &'a JobContext,
        claimed: &'a ClaimedJob,
    ) -> Result<Decoded<'a>, String> {
        let (payload, trace) = persistence::queue::decode::<H::Payload>(&claimed.job)?;
        Ok(Decoded {
            trace,
            subject: H::subject(&payload),
            run: Box::pin(self.run(ctx, claimed, payload)),
        })
    }

    fn on_dead<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        payload: &'a [u8],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), PersistenceError>> {
        Box::pin(async move {
            match persistence::queue::decode::<H::Payload>(payload) {
                Ok((payload, _)) => Handler::on_dead(self, tx, &payload, error).await,
                // An undecodable job names nothing to clean up after.
                Err(_) => Ok(()),
            }
        })
    }
}

/// The job kinds a worker runs, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: Vec<Arc<dyn Erased>>,
}

impl Registry {
    /// These kinds plus `handler`'s (which replaces a handler of the same kind).
    pub fn with<H: Handler>(mut self, handler: H) -> Self {
        self.handlers.retain(|h| h.kind() != H::Payload::KIND);
        self.handlers.push(Arc::new(handler));
        self
    }

    /// The names of the registered kinds: what the worker claims.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.kind()).collect()
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn Erased>> {
        self.handlers.iter().find(|h| h.kind() == kind)
    }
}

/// Moves a run that a transition applied in memory (`write`, leaving the run as `state`
/// shows it) left `running` on, inline through its local nodes: the run's steps join the
/// transition's write, so a resume that leads to the run's next pause or its end is one
/// statement and one commit.
///
/// Only on a job's first attempt, and only when there can be a second. When the engine
/// stops before a node that calls out, or refuses the run (a broken stored plan), what
/// `write` holds so far is consistent (a checkpoint per node) and an advancement job,
/// pushed with the write, takes over from there. When a write fails, the transaction is
/// lost: the error makes the job retry, and a retry applies the transition alone and
/// leaves the advancement to a job, so a fault in the advancement can never keep an
/// operator's answer from committing. (A savepoint would do the same at two more round
/// trips on every resume.)
///
/// Returns the status the run reached (`awaiting_hitl` or a final one), if it moved to
/// one, for the caller to count once its write commits.
pub(crate) async fn continue_written(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    write: &mut persistence::TransitionWrite,
    state: persistence::RunState,
) -> Result<Option<&'static str>, JobError> {
    let run_id = write.run_id().clone();
    if claimed.attempts == 0 && ctx.can_retry {
        match ctx.engine.advance_written(write, state).await {
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
    write.enqueue(&jobs::Advance { run_id });
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
