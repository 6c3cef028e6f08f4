//! Jobs `hitl_resume` and `hitl_remove`: apply a recorded command. The transition and
//! the job's completion commit together; applying a command that already ended is a
//! no-op that returns its stored outcome, so redelivery applies nothing twice.
//!
//! A resume moves the run on in the same transaction through its local nodes
//! ([`super::continue_run`]): one commit from the operator's answer to the run's next
//! pause or its end, unless a node calls out, which an advancement job then runs.

use super::{Handled, JobContext, JobError, complete_with};
use crate::domain::{CommandId, RunStatus};
use crate::persistence::{self, AdvanceBy, queue::ClaimedJob};
use crate::telemetry::metrics::metrics;

pub(super) async fn handle(
    ctx: &JobContext,
    claimed: &ClaimedJob,
    command_id: &CommandId,
) -> Result<Handled, JobError> {
    let mut tx = ctx.pool.begin().await?;
    let outcome = persistence::apply_command(&mut tx, command_id, AdvanceBy::Caller).await?;
    let mut reached = None;
    if let persistence::ApplyOutcome::Applied {
        command,
        run_status: RunStatus::Running,
        ..
    } = &outcome
    {
        reached = super::continue_run(ctx, &mut tx, claimed, &command.run_id).await?;
    }
    // Ids and the kind of outcome only: commands carry operators' free text.
    let applied = match &outcome {
        persistence::ApplyOutcome::Applied { .. } => "applied",
        persistence::ApplyOutcome::Rejected { .. } => "rejected",
        persistence::ApplyOutcome::AlreadyFinal { .. } => "already final",
    };
    tracing::debug!(%command_id, outcome = applied, "command handled");
    let handled = complete_with(ctx, tx, claimed).await?;
    // Counted once committed, so a lost claim or a retry does not count twice.
    if handled == Handled::Done {
        let m = metrics();
        let (command, result) = match &outcome {
            persistence::ApplyOutcome::Applied {
                command,
                run_status,
                ..
            } => {
                super::count_transitions([run_status.as_str()].into_iter().chain(reached));
                (Some(command), "succeeded")
            }
            persistence::ApplyOutcome::Rejected { command } => (Some(command), "rejected"),
            persistence::ApplyOutcome::AlreadyFinal { .. } => (None, ""),
        };
        if let Some(c) = command {
            m.inc(
                "hitl_commands_total",
                &[("kind", c.kind.as_str()), ("outcome", result)],
            );
            let latency = (chrono::Utc::now() - c.created_at)
                .to_std()
                .unwrap_or_default();
            m.observe(
                "hitl_command_latency_seconds",
                &[("kind", c.kind.as_str())],
                latency.as_secs_f64(),
            );
        }
    }
    Ok(handled)
}
