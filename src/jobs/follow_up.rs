//! Jobs `hitl_remind`, `hitl_escalate` and `hitl_expiring`: a request's follow-up while it
//! is pending. Each
//! locks the run, does nothing once the request is settled (so every reminder and step
//! due after an answer is a no-op), and commits its note with the job's completion.

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::persistence::jobs::{Escalate, ExpiringNotice, Remind};
use crate::persistence::{self, FollowUpOutcome};

/// `hitl_remind`.
pub(super) struct RemindJob;

impl Handler for RemindJob {
    type Payload = Remind;

    fn subject(payload: &Remind) -> Option<(&'static str, String)> {
        Some(("request.id", payload.request_id.to_string()))
    }

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Remind { request_id }: Remind,
    ) -> Result<Handled, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let outcome = persistence::remind(&mut tx, &request_id).await?;
        tracing::debug!(%request_id, ?outcome, "reminder due");
        complete_with(ctx, tx, claimed).await
    }
}

/// `hitl_escalate`.
pub(super) struct EscalateJob;

impl Handler for EscalateJob {
    type Payload = Escalate;

    fn subject(payload: &Escalate) -> Option<(&'static str, String)> {
        Some(("request.id", payload.request_id.to_string()))
    }

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Escalate { request_id, step }: Escalate,
    ) -> Result<Handled, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let outcome = persistence::escalate(&mut tx, &request_id, step).await?;
        if outcome == FollowUpOutcome::Applied {
            tracing::info!(%request_id, step, "escalation step applied");
        }
        complete_with(ctx, tx, claimed).await
    }
}

/// `hitl_expiring`.
pub(super) struct ExpiringJob;

impl Handler for ExpiringJob {
    type Payload = ExpiringNotice;

    fn subject(payload: &ExpiringNotice) -> Option<(&'static str, String)> {
        Some(("request.id", payload.request_id.to_string()))
    }

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        ExpiringNotice {
            request_id,
            notice_seconds,
        }: ExpiringNotice,
    ) -> Result<Handled, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let outcome = persistence::notice_expiring(&mut tx, &request_id, notice_seconds).await?;
        tracing::debug!(%request_id, ?outcome, "deadline notice due");
        complete_with(ctx, tx, claimed).await
    }
}
