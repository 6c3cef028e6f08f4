//! Job `hitl_expire`: at a request's deadline, apply its `onTimeout` unless it was
//! answered first. Racing with a resume, exactly one wins: both lock the run.

use chrono::Utc;

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::domain::RunStatus;
use crate::persistence::jobs::Expire;
use crate::persistence::queue;
use crate::persistence::{self, Applying, ExpireOutcome};

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
    let job = persistence::JobClaim {
        job_id: &claimed.id,
        worker_id: &ctx.worker_id,
    };
    match persistence::expire_request_for_job(&mut tx, request_id, Utc::now(), job).await? {
        // The queue keeps whole seconds; if it woke us early, come back at the deadline.
        (ExpireOutcome::NotDue(Some(at)), _) => {
            let postponed = queue::postpone(&mut tx, &claimed.id, &ctx.worker_id, at).await?;
            tx.commit().await?;
            Ok(if postponed {
                Handled::Postponed
            } else {
                Handled::LostClaim
            })
        }
        (outcome, applying) => {
            tracing::debug!(%request_id, ?outcome, "deadline checked");
            let mut reached = None;
            let handled = match applying {
                // As with a resume, the run moves on inline where its nodes allow, in
                // the expiry's one write, which completes the job.
                Applying::Unwritten(unwritten) => {
                    let persistence::Unwritten { mut write, state } = *unwritten;
                    if state.run.status == RunStatus::Running {
                        reached = super::continue_written(ctx, claimed, &mut write, state).await?;
                    }
                    if write.write(&mut tx).await?.job_completed {
                        tx.commit().await?;
                        Handled::Done
                    } else {
                        tx.rollback().await?;
                        Handled::LostClaim
                    }
                }
                Applying::Rejected {
                    job_completed: true,
                } => {
                    tx.commit().await?;
                    Handled::Done
                }
                Applying::Rejected {
                    job_completed: false,
                } => {
                    tx.rollback().await?;
                    Handled::LostClaim
                }
                Applying::Left => complete_with(ctx, tx, claimed).await?,
            };
            if let (Handled::Done, ExpireOutcome::Expired { run_status, .. }) = (&handled, &outcome)
            {
                super::count_transitions([run_status.as_str()].into_iter().chain(reached));
            }
            Ok(handled)
        }
    }
}
