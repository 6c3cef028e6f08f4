//! Job `hitl_expire`: at a request's deadline, apply its `onTimeout` unless it was
//! answered first. Racing with a resume, exactly one wins: both lock the run.

use chrono::Utc;

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::domain::RunStatus;
use crate::persistence::jobs::Expire;
use crate::persistence::queue;
use crate::persistence::{self, AdvanceBy, ExpireOutcome};

/// `hitl_expire`.
pub(super) struct ExpireJob;

impl Handler for ExpireJob {
    type Payload = Expire;

    fn subject(payload: &Expire) -> Option<(&'static str, String)> {
        Some(("request.id", payload.request_id.to_string()))
    }

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Expire { request_id }: Expire,
    ) -> Result<Handled, JobError> {
        expire(ctx, claimed, &request_id).await
    }
}

async fn expire(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    request_id: &crate::domain::RequestId,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    match persistence::expire_request(&mut tx, request_id, Utc::now(), AdvanceBy::Caller).await? {
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
            let mut reached = None;
            if let ExpireOutcome::Expired {
                run_id,
                run_status: RunStatus::Running,
                ..
            } = &outcome
            {
                // As with a resume, the run moves on inline where its nodes allow.
                reached = super::continue_run(ctx, &mut tx, claimed, run_id).await?;
            }
            let handled = complete_with(ctx, tx, claimed).await?;
            if let (Handled::Done, ExpireOutcome::Expired { run_status, .. }) = (&handled, &outcome)
            {
                super::count_transitions([run_status.as_str()].into_iter().chain(reached));
            }
            Ok(handled)
        }
    }
}
