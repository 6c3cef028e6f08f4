//! The periodic sweep: every worker looks, every `HITL_SWEEP_INTERVAL`, for runs that
//! should be moving and are not (queued or running with no live job, a deadline passed
//! with no expiry job) and repairs them, so a stranded run is found without a restart.
//! It is a read of a few indexed rows, not a job: a quiet system writes nothing. Two
//! workers finding the same run repair it once (the repair checks again under the
//! run's lock).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::JobContext;
use crate::persistence::{PersistenceError, rehydrate};

/// How long a run must have been still before the sweep calls it stranded (a resume or
/// an advancement in flight is not).
pub(crate) const SETTLE: Duration = Duration::from_secs(5);

pub(crate) async fn sweep_loop(
    ctx: std::sync::Arc<JobContext>,
    interval: Duration,
    settle: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_once(&ctx, settle).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(runs_repaired = n, "sweep repaired stranded runs");
                crate::telemetry::metrics::metrics().add(
                    "hitl_runs_rehydrated_total",
                    &[("result", "swept")],
                    n as u64,
                );
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}

/// One sweep; returns how many repairs it made.
pub(crate) async fn sweep_once(
    ctx: &JobContext,
    settle: Duration,
) -> Result<usize, PersistenceError> {
    let (runs, requests) = {
        let mut conn = crate::db::session(&ctx.pool).await?;
        rehydrate::find_stranded(&mut conn, settle, 500).await?
    };
    let mut repaired = 0;
    for run_id in runs {
        let mut tx = ctx.pool.begin().await?;
        if rehydrate::continue_run(&mut tx, &run_id, "sweep").await? {
            repaired += 1;
        }
        tx.commit().await?;
    }
    for request_id in requests {
        let mut tx = ctx.pool.begin().await?;
        if rehydrate::rearm_deadline(&mut tx, &request_id, "sweep").await? {
            repaired += 1;
        }
        tx.commit().await?;
    }
    Ok(repaired)
}
