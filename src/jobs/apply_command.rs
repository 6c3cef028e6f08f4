//! Jobs `hitl_resume` and `hitl_remove`: apply a recorded command. The transition and
//! the job's completion commit together; applying a command that already ended is a
//! no-op that returns its stored outcome, so redelivery applies nothing twice.

use super::{Handled, JobContext, JobError, complete_with};
use crate::domain::CommandId;
use crate::persistence::{self, queue::ClaimedJob};

pub(super) async fn handle(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    command_id: &CommandId,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    let outcome = persistence::apply_command(&mut tx, command_id).await?;
    // Ids and the kind of outcome only: commands carry operators' free text.
    let applied = match &outcome {
        persistence::ApplyOutcome::Applied { .. } => "applied",
        persistence::ApplyOutcome::Rejected { .. } => "rejected",
        persistence::ApplyOutcome::AlreadyFinal { .. } => "already final",
    };
    tracing::debug!(%command_id, outcome = applied, "command handled");
    complete_with(ctx, tx, claimed).await
}
