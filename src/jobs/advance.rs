//! Job `hitl_advance`: advance a run with the engine. The engine commits a checkpoint
//! per node, each fenced by the run's version; the job completes after it.

use super::{ClaimedJob, Handled, Handler, JobContext, JobError};
use crate::domain::RunId;
use crate::engine::EngineError;
use crate::persistence::jobs::Advance;
use crate::persistence::queue;

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
}

async fn advance(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    run_id: &RunId,
) -> Result<Handled, JobError> {
    match ctx.engine.advance(&ctx.pool, run_id).await {
        Ok(outcome) => {
            tracing::debug!(%run_id, ?outcome, "run advanced");
            super::count_transitions(super::reached(&outcome));
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
    let mut conn = ctx.pool.acquire().await?;
    if queue::complete(&mut conn, &claimed.id, &ctx.worker_id).await? {
        Ok(Handled::Done)
    } else {
        Ok(Handled::LostClaim)
    }
}
