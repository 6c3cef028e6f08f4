//! Job `hitl_rescan`: after a worker starts, page through every unfinished run (keyset
//! on run id, bounded memory) and enqueue one `hitl_rehydrate` job per page, so 100,000
//! parked runs are a few hundred jobs that any number of workers share.
//!
//! One rescan is active at a time (a partial unique index), however many workers start.
//! A rescan waits until the pages of the previous one are done, so a run is never in two
//! waiting pages. A long scan continues in a follow-up rescan job after
//! `PAGES_PER_JOB` pages, so no single job runs long.

use chrono::Utc;

use super::{ClaimedJob, Handled, Handler, JobContext, JobError};
use crate::domain::RunId;
use crate::persistence::jobs::{Rehydrate, Rescan};
use crate::persistence::{queue, rehydrate};

/// Runs per rehydration page.
pub(crate) const PAGE: i64 = 500;
const PAGES_PER_JOB: usize = 20;

/// `hitl_rescan`.
pub(super) struct RescanJob;

impl Handler for RescanJob {
    type Payload = Rescan;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Rescan { after }: Rescan,
    ) -> Result<Handled, JobError> {
        rescan(ctx, claimed, after.as_ref()).await
    }
}

async fn rescan(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    after: Option<&RunId>,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    if after.is_none() && rehydrate::rehydration_in_progress(&mut tx).await? {
        let later = Utc::now() + chrono::Duration::seconds(1);
        let postponed = queue::postpone(&mut tx, &claimed.id, &ctx.worker_id, later).await?;
        tx.commit().await?;
        return Ok(if postponed {
            Handled::Postponed
        } else {
            Handled::LostClaim
        });
    }
    let mut cursor = after.cloned();
    let (mut pages, mut runs, mut more) = (0, 0, false);
    while pages < PAGES_PER_JOB {
        let ids = rehydrate::unfinished_runs_page(&mut tx, cursor.as_ref(), PAGE).await?;
        if ids.is_empty() {
            break;
        }
        runs += ids.len();
        pages += 1;
        more = ids.len() as i64 == PAGE;
        cursor = ids.last().cloned();
        queue::enqueue(&mut tx, &Rehydrate { run_ids: ids }, None).await?;
        if !more {
            break;
        }
    }
    if !queue::complete(&mut tx, &claimed.id, &ctx.worker_id).await? {
        tx.rollback().await?;
        return Ok(Handled::LostClaim);
    }
    if more && pages == PAGES_PER_JOB {
        let next = Rescan {
            after: cursor.clone(),
        };
        queue::enqueue_singleton(&mut tx, &next, None).await?;
    }
    tx.commit().await?;
    tracing::info!(
        runs_scanned = runs,
        pages_enqueued = pages,
        continues = more,
        "rescan pass done"
    );
    Ok(Handled::Done)
}
