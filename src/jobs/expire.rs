//! Job `hitl_expire`: at a request's deadline, apply its `onTimeout` unless it was
//! answered first. Racing with a resume, exactly one wins: both lock the run.

use chrono::Utc;

use super::{Handled, JobContext, JobError, complete_with};
use crate::domain::RequestId;
use crate::persistence::queue::{self, ClaimedJob};
use crate::persistence::{self, ExpireOutcome};

pub(super) async fn handle(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    request_id: &RequestId,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    match persistence::expire_request(&mut tx, request_id, Utc::now()).await? {
        // The queue keeps whole seconds; if it woke us early, come back at the deadline.
        ExpireOutcome::NotDue(Some(at)) => {
            let postponed = queue::postpone(&mut tx, &claimed.id, &ctx.worker_id, at).await?;
            tx.commit().await?;
            Ok(if postponed {
                Handled::Postponed
            } else {
                Handled::LostClaim
            })
        }
        outcome => {
            tracing::debug!(%request_id, ?outcome, "deadline checked");
            let handled = complete_with(ctx, tx, claimed).await?;
            if let (Handled::Done, ExpireOutcome::Expired { run_status, .. }) = (&handled, &outcome)
            {
                crate::telemetry::metrics::metrics()
                    .inc("hitl_run_transitions_total", &[("to", run_status.as_str())]);
            }
            Ok(handled)
        }
    }
}
