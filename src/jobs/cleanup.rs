//! Job `hitl_cleanup`: delete finished job rows (done ones after `HITL_RETAIN_DONE`, dead
//! ones after `HITL_RETAIN_DEAD`) so the queue table stays small, then schedule the next
//! cleanup. At most one is active (a partial unique index), however many workers run.

use chrono::Utc;

use super::{ClaimedJob, Handled, Handler, JobContext, JobError};
use crate::persistence::jobs::Cleanup;
use crate::persistence::queue;

/// Rows deleted per pass; a full pass schedules the next one at once.
const BATCH: i64 = 10_000;

/// `hitl_cleanup`.
pub(super) struct CleanupJob;

impl Handler for CleanupJob {
    type Payload = Cleanup;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        _: Cleanup,
    ) -> Result<Handled, JobError> {
        cleanup(ctx, claimed).await
    }
}

async fn cleanup(ctx: &JobContext, claimed: &ClaimedJob) -> Result<Handled, JobError> {
    let now = Utc::now();
    let ago = |d: std::time::Duration| {
        now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    };
    let mut tx = ctx.pool.begin().await?;
    let deleted =
        queue::delete_finished(&mut tx, ago(ctx.retain_done), ago(ctx.retain_dead), BATCH).await?;
    if !queue::complete(&mut tx, &claimed.id, &ctx.worker_id).await? {
        tx.rollback().await?;
        return Ok(Handled::LostClaim);
    }
    let next = if deleted == BATCH as u64 {
        None
    } else {
        Some(
            now + chrono::Duration::from_std(ctx.cleanup_interval).unwrap_or(chrono::Duration::MAX),
        )
    };
    queue::enqueue_singleton(&mut tx, &Cleanup {}, next).await?;
    tx.commit().await?;
    if deleted > 0 {
        tracing::info!(deleted, "deleted finished job rows");
    }
    Ok(Handled::Done)
}
