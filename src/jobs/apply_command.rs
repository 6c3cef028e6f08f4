//! Jobs `hitl_resume`, `hitl_remove` and `hitl_retry`: apply a recorded command. The
//! transition and the job's completion commit together; applying a command that already ended is a
//! no-op that returns its stored outcome, so redelivery applies nothing twice.
//!
//! A resume (or a retry) moves the run on in the same transaction through its local nodes
//! ([`super::continue_written`]), in the transition's one write: one statement and one
//! commit from the operator's answer to the run's next pause or its end, unless a node
//! calls out, which an advancement job then runs.

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::domain::{CommandId, RunStatus};
use crate::persistence::jobs::CommandJob;
use crate::persistence::{self, PersistenceError, Tx};
use crate::telemetry::metrics::metrics;

/// The handler of every command kind's job (`hitl_resume`, `hitl_remove`, `hitl_retry`):
/// they differ only in their payload's kind name.
pub(super) struct ApplyCommandJob<P>(std::marker::PhantomData<fn() -> P>);

impl<P> ApplyCommandJob<P> {
    pub(super) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<P: CommandJob> Handler for ApplyCommandJob<P> {
    type Payload = P;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        payload: P,
    ) -> Result<Handled, JobError> {
        apply(ctx, claimed, payload.command_id()).await
    }

    fn subject(payload: &P) -> Option<(&'static str, String)> {
        Some(("command.id", payload.command_id().to_string()))
    }

    async fn on_dead(
        &self,
        tx: &mut Tx<'_>,
        payload: &P,
        error: &str,
    ) -> Result<(), PersistenceError> {
        fail(tx, payload.command_id(), P::COMMAND.as_str(), error).await
    }
}

/// A command whose job died ends `failed` with the error, never silently dropped.
async fn fail(
    tx: &mut Tx<'_>,
    command_id: &CommandId,
    kind: &str,
    error: &str,
) -> Result<(), PersistenceError> {
    if persistence::fail_command(tx, command_id, error)
        .await?
        .is_some()
    {
        metrics().inc(
            "hitl_commands_total",
            &[("kind", kind), ("outcome", "failed")],
        );
    }
    Ok(())
}

async fn apply(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    command_id: &CommandId,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    let job = persistence::JobClaim {
        job_id: &claimed.id,
        worker_id: &ctx.worker_id,
    };
    let (outcome, applying) = persistence::apply_command_for_job(&mut tx, command_id, job).await?;
    let mut reached = None;
    let completion = match applying {
        // A resume: the run's next steps join its write, which completes the job.
        persistence::Applying::Unwritten(unwritten) => {
            let persistence::Unwritten { mut write, state } = *unwritten;
            if state.run.status == RunStatus::Running {
                reached = super::continue_written(ctx, claimed, &mut write, state).await?;
            }
            let written = write.write(&mut tx).await?;
            if written.job_completed {
                persistence::JobCompletion::Completed
            } else {
                persistence::JobCompletion::LostClaim
            }
        }
        // Refused: the rejection's write completed the job too.
        persistence::Applying::Rejected {
            job_completed: true,
        } => persistence::JobCompletion::Completed,
        persistence::Applying::Rejected {
            job_completed: false,
        } => persistence::JobCompletion::LostClaim,
        // Already final: nothing was written.
        persistence::Applying::Left => persistence::JobCompletion::Left,
    };
    if completion == persistence::JobCompletion::LostClaim {
        tx.rollback().await?;
        return Ok(Handled::LostClaim);
    }
    // Ids and the kind of outcome only: commands carry operators' free text.
    let applied = match &outcome {
        persistence::ApplyOutcome::Applied { .. } => "applied",
        persistence::ApplyOutcome::Rejected { .. } => "rejected",
        persistence::ApplyOutcome::AlreadyFinal { .. } => "already final",
    };
    tracing::debug!(%command_id, outcome = applied, "command handled");
    let handled = if completion == persistence::JobCompletion::Completed {
        tx.commit().await?;
        Handled::Done
    } else {
        complete_with(ctx, tx, claimed).await?
    };
    // Counted once committed, so a lost claim or a retry does not count twice.
    if handled == Handled::Done {
        let m = metrics();
        let (command, result) = match &outcome {
            persistence::ApplyOutcome::Applied {
                command,
                run_status,
                ..
            } => {
                super::count_transitions([run_status.as_str()].into_iter().chain(reached));
                (Some(command), "succeeded")
            }
            persistence::ApplyOutcome::Rejected { command } => (Some(command), "rejected"),
            persistence::ApplyOutcome::AlreadyFinal { .. } => (None, ""),
        };
        if let Some(c) = command {
            m.inc(
                "hitl_commands_total",
                &[("kind", c.kind.as_str()), ("outcome", result)],
            );
            let latency = (chrono::Utc::now() - c.created_at)
                .to_std()
                .unwrap_or_default();
            m.observe(
                "hitl_command_latency_seconds",
                &[("kind", c.kind.as_str())],
                latency.as_secs_f64(),
            );
        }
    }
    Ok(handled)
}
