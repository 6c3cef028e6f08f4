//! Numbers about orchestrator state for dashboards, read so that every replica agrees:
//! only partial indexes and the (small, cleaned) jobs table are touched.

use sqlx::PgConnection;

use super::PersistenceError;

/// A snapshot of the state gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub outstanding_requests: i64,
    pub oldest_pending_age_seconds: f64,
    /// Unfinished runs by status.
    pub active_runs: Vec<(String, i64)>,
    /// Jobs by queue and status.
    pub jobs: Vec<(String, String, i64)>,
}

/// Reads the gauges.
pub async fn read(conn: &mut PgConnection) -> Result<Stats, PersistenceError> {
    let (outstanding_requests, oldest_pending_age_seconds): (i64, f64) = crate::db::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(created_at))::float8, 0) \
         from hitl_requests where status = 'pending'",
    )
    .fetch_one(&mut *conn)
    .await?;
    let active_runs = crate::db::query_as(
        "select status, count(*) from orchestrator_runs \
         where status in ('queued', 'running', 'awaiting_hitl') group by status",
    )
    .fetch_all(&mut *conn)
    .await?;
    let jobs =
        crate::db::query_as("select job_type, status, count(*) from apalis.jobs group by 1, 2")
            .fetch_all(&mut *conn)
            .await?;
    Ok(Stats {
        outstanding_requests,
        oldest_pending_age_seconds,
        active_runs,
        jobs,
    })
}
