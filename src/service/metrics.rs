//! The state gauges of `/metrics` (outstanding requests, unfinished runs, queue depth),
//! read from the database so that every replica reports the same numbers.

use sqlx::PgPool;

use crate::persistence::{self, PersistenceError};
use crate::telemetry::metrics::{Labels, metrics};

/// Reads the state gauges from the database into the metrics registry.
pub async fn refresh_gauges(pool: &PgPool) -> Result<(), PersistenceError> {
    let mut conn = crate::db::session(pool).await?;
    let stats = persistence::stats::read(&mut conn).await?;
    let m = metrics();
    m.set(
        "hitl_outstanding_requests",
        &[],
        stats.outstanding_requests as f64,
    );
    m.set(
        "hitl_oldest_pending_age_seconds",
        &[],
        stats.oldest_pending_age_seconds,
    );
    for status in ["queued", "running", "awaiting_hitl"] {
        let n = stats
            .active_runs
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        m.set("hitl_runs_active", &[("status", status)], n as f64);
    }
    // Queue/status pairs that emptied must read 0, not their last value.
    let previous: Vec<Labels> = m
        .series("hitl_queue_jobs")
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    for l in previous {
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        m.set("hitl_queue_jobs", &pairs, 0.0);
    }
    for (queue, status, n) in &stats.jobs {
        m.set(
            "hitl_queue_jobs",
            &[("queue", queue), ("status", status)],
            *n as f64,
        );
    }
    Ok(())
}

/// Refreshes the state gauges every `every` until `stop`.
pub async fn refresh_loop(
    pool: PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = refresh_gauges(&pool).await {
            tracing::debug!(error = %e, "metrics refresh failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
