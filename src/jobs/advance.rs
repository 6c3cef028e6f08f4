//! Job `hitl_advance`: advance a run with the engine. The engine reads the run once and
//! writes its steps in one statement before each node that calls out and one at the
//! end, each fenced by the run's version; the job completes in the last of them (or on
//! its own when the run had nothing to do).
//!
//! A node whose call fails transiently (its agent is down) does not spend the job's
//! attempts: the run records the outage (`agent_retry`, one `agent_unreachable` event)
//! and the job is put back for the next attempt, as the engine's retry policy spaces
//! them, until the window runs out and the run fails. A job that dies anyway (its
//! attempts spent on database errors, or a run it can never execute) fails its run with
//! the cause, so nothing waits on it and the sweep does not start it again.

use super::{ClaimedJob, Handled, Handler, JobContext, JobError};
use crate::domain::RunId;
use crate::engine::EngineError;
use crate::persistence::jobs::Advance;
use crate::persistence::{self, AgentWait, PersistenceError, Tx, queue};

/// `hitl_advance`.
pub(super) struct AdvanceJob;

impl Handler for AdvanceJob {
    type Payload = Advance;

    fn subject(payload: &Advance) -> Option<(&'static str, String)> {
        Some(("run.id", payload.run_id.to_string()))
    }

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Advance { run_id }: Advance,
    ) -> Result<Handled, JobError> {
        advance(ctx, claimed, &run_id).await
    }

    async fn on_dead(
        &self,
        tx: &mut Tx<'_>,
        Advance { run_id }: &Advance,
        error: &str,
    ) -> Result<(), PersistenceError> {
        if persistence::fail_abandoned_run(tx, run_id, error).await? {
            tracing::warn!(%run_id, "advancement job died; the run is failed with the cause");
        }
        Ok(())
    }
}

async fn advance(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    run_id: &RunId,
) -> Result<Handled, JobError> {
    let job = persistence::JobClaim {
        job_id: &claimed.id,
        worker_id: &ctx.worker_id,
    };
    match ctx.engine.advance_job(&ctx.pool, run_id, Some(job)).await {
        // The run paused or ended, and the job completed in the same write.
        Ok((outcome, true)) => {
            tracing::debug!(%run_id, ?outcome, "run advanced");
            super::count_transitions(super::reached(&outcome));
            return Ok(Handled::Done);
        }
        Ok((outcome, false)) => {
            tracing::debug!(%run_id, ?outcome, "run advanced");
            if matches!(
                outcome,
                crate::engine::AdvanceOutcome::Paused { .. }
                    | crate::engine::AdvanceOutcome::Finished { .. }
            ) {
                // Its last write was rolled back: the claim was lost.
                return Ok(Handled::LostClaim);
            }
        }
        Err(EngineError::Transient {
            node_id,
            message,
            retry_after,
            version,
        }) => {
            return wait_for_agent(
                ctx,
                claimed,
                run_id,
                &node_id,
                &message,
                retry_after,
                version,
            )
            .await;
        }
        Err(
            e @ (EngineError::RunNotFound(_)
            | EngineError::Corrupt { .. }
            | EngineError::InvalidPlan(_)),
        ) => {
            return Err(JobError::Fatal(e.to_string()));
        }
        Err(e) => return Err(JobError::Retry(e.to_string())),
    }
    let mut conn = crate::db::session(&ctx.pool).await?;
    let completed = queue::complete(&mut conn, &claimed.id, &ctx.worker_id).await?;
    conn.close().await?;
    Ok(if completed {
        Handled::Done
    } else {
        Handled::LostClaim
    })
}

/// Records a failed attempt at `node_id`'s call and puts the job back for the next one,
/// or completes it when the run gave up or moved on; one transaction, fenced on the claim.
async fn wait_for_agent(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    run_id: &RunId,
    node_id: &str,
    message: &str,
    retry_after: Option<std::time::Duration>,
    version: i64,
) -> Result<Handled, JobError> {
    let policy = *ctx.engine.retry_policy();
    let mut tx = ctx.pool.begin().await?;
    let wait = persistence::note_agent_unreachable(
        &mut tx,
        run_id,
        version,
        node_id,
        message,
        policy.retry_for,
        |attempts| policy.delay(attempts, retry_after),
    )
    .await?;
    match wait {
        AgentWait::RetryAt(at) => {
            if queue::postpone(&mut tx, &claimed.id, &ctx.worker_id, at).await? {
                tx.commit().await?;
                Ok(Handled::Postponed)
            } else {
                tx.rollback().await?;
                Ok(Handled::LostClaim)
            }
        }
        AgentWait::GaveUp => {
            tracing::warn!(%run_id, node = node_id, "agent unreachable for the whole retry window; the run failed");
            let handled = super::complete_with(ctx, tx, claimed).await?;
            if handled == Handled::Done {
                super::count_transitions(["failed"]);
            }
            Ok(handled)
        }
        // Someone else moved the run (an operator removed it); this job has nothing left.
        AgentWait::Moved => super::complete_with(ctx, tx, claimed).await,
    }
}
