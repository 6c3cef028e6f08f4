//! Job `hitl_rehydrate`: check one page of unfinished runs after a start and repair what
//! would not move on its own (a lost advancement job, a deadline with no expiry job).
//! Idempotent: a second pass over the same page finds nothing to repair.

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::persistence::jobs::Rehydrate;
use crate::persistence::rehydrate;

/// `hitl_rehydrate`.
pub(super) struct RehydrateJob;

impl Handler for RehydrateJob {
    type Payload = Rehydrate;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Rehydrate { run_ids }: Rehydrate,
    ) -> Result<Handled, JobError> {
        rehydrate_page(ctx, claimed, &run_ids).await
    }
}

async fn rehydrate_page(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    run_ids: &[crate::domain::RunId],
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    let report = rehydrate::rehydrate_page(&mut tx, run_ids).await?;
    let handled = complete_with(ctx, tx, claimed).await?;
    if handled == Handled::Done {
        let repaired = report.continued.len() + report.deadlines_rearmed.len();
        let m = crate::telemetry::metrics::metrics();
        m.add(
            "hitl_runs_rehydrated_total",
            &[("result", "scanned")],
            report.scanned,
        );
        m.add(
            "hitl_runs_rehydrated_total",
            &[("result", "repaired")],
            repaired as u64,
        );
        if repaired > 0 {
            tracing::info!(runs_scanned = report.scanned, runs_repaired = repaired,
                continued = ?report.continued, deadlines = ?report.deadlines_rearmed, "rehydrated a page");
        } else {
            tracing::debug!(runs_scanned = report.scanned, "rehydrated a page");
        }
    }
    Ok(handled)
}
