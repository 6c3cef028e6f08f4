//! Rehydration and the sweep: finding unfinished runs after a start, checking that each
//! is consistent and will move when it should, and repairing the ones that will not.
//!
//! Checks are set-based, one page of runs per statement, so 100,000 parked runs cost a
//! few hundred statements; repairs lock the run, check again under the lock (so two
//! rehydrations cannot both repair), and are a `rehydrate` transition: the version moves
//! and one audit event says what was repaired. A consistent run only gets its
//! `rehydrated_at` stamped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::jobs::{Advance, Expire, JobPayload};
use super::queue;
use super::{AuditEntry, PersistenceError, Tx, append_audit, lock_run};
use crate::domain::{AuditAction, RequestId, RunId, RunStatus, Transition};

/// A live job (waiting, claimed, or failed and due for a retry).
const LIVE: &str = "('Pending', 'Queued', 'Running', 'Failed')";

/// What rehydrating a page found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RehydrateReport {
    /// Unfinished runs stamped `rehydrated_at`.
    pub scanned: u64,
    /// Runs that should have been moving with no job to move them: continued.
    pub continued: Vec<RunId>,
    /// Pending requests whose deadline had no expiry job: re-armed.
    pub deadlines_rearmed: Vec<RequestId>,
}

/// The next page of unfinished runs after `after`, by run id.
pub async fn unfinished_runs_page(
    conn: &mut PgConnection,
    after: Option<&RunId>,
    limit: i64,
) -> Result<Vec<RunId>, PersistenceError> {
    const SQL: &str = "select run_id from orchestrator_runs \
        where status in ('queued', 'running', 'awaiting_hitl')";
    Ok(match after {
        Some(after) => {
            crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
                "{SQL} and run_id > $1 order by run_id limit $2"
            )))
            .bind(after)
            .bind(limit)
            .fetch_all(conn)
            .await?
        }
        None => {
            crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
                "{SQL} order by run_id limit $1"
            )))
            .bind(limit)
            .fetch_all(conn)
            .await?
        }
    })
}

/// Whether rehydration pages of an earlier rescan are still waiting or running.
pub async fn rehydration_in_progress(conn: &mut PgConnection) -> Result<bool, PersistenceError> {
    Ok(crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select exists(select 1 from apalis.jobs where job_type = 'hitl_rehydrate' and status in {LIVE})"
    )))
    .fetch_one(conn)
    .await?)
}

/// Rehydrates one page of runs: stamps `rehydrated_at` on the unfinished ones, continues
/// those that should be moving and have no advancement job, and re-arms deadlines that
/// have no expiry job. A consistent parked run is left as it is.
pub async fn rehydrate_page(
    tx: &mut Tx<'_>,
    run_ids: &[RunId],
) -> Result<RehydrateReport, PersistenceError> {
    let ids: Vec<&str> = run_ids.iter().map(RunId::as_str).collect();
    let scanned = crate::db::query(
        "update orchestrator_runs set rehydrated_at = now() \
         where run_id = any($1) and status in ('queued', 'running', 'awaiting_hitl')",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let stranded: Vec<RunId> = crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select r.run_id from orchestrator_runs r \
         where r.run_id = any($1) and r.status in ('queued', 'running') \
           and not exists (select 1 from apalis.jobs j where j.job_type = 'hitl_advance' \
                           and j.status in {LIVE} and j.metadata -> 'run_id' = r.run_id) \
         order by r.run_id"
    )))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let deadlines: Vec<RequestId> = crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select q.request_id from hitl_requests q \
         where q.run_id = any($1) and q.status = 'pending' and q.expires_at is not null \
           and not exists (select 1 from apalis.jobs j where j.job_type = 'hitl_expire' \
                           and j.status in {LIVE} and j.metadata -> 'request_id' = q.request_id) \
         order by q.request_id"
    )))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut report = RehydrateReport {
        scanned,
        ..RehydrateReport::default()
    };
    for run_id in stranded {
        if continue_run(tx, &run_id, "rehydrate").await? {
            report.continued.push(run_id);
        }
    }
    for request_id in deadlines {
        if rearm_deadline(tx, &request_id, "rehydrate").await? {
            report.deadlines_rearmed.push(request_id);
        }
    }
    Ok(report)
}

/// Runs and requests stranded while the system runs: queued or running runs untouched
/// for `settle` with no live advancement job, and deadlines passed `settle` ago with no
/// live expiry job. Reads only the few rows that should be moving (partial indexes), so
/// a quiet system pays almost nothing and writes nothing.
pub async fn find_stranded(
    conn: &mut PgConnection,
    settle: Duration,
    limit: i64,
) -> Result<(Vec<RunId>, Vec<RequestId>), PersistenceError> {
    let runs = crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select r.run_id from orchestrator_runs r \
         where r.status in ('queued', 'running') and r.updated_at < now() - make_interval(secs => $1) \
           and not exists (select 1 from apalis.jobs j where j.job_type = 'hitl_advance' \
                           and j.status in {LIVE} and j.metadata -> 'run_id' = r.run_id) \
         limit $2"
    )))
    .bind(settle.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let requests = crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select q.request_id from hitl_requests q \
         where q.status = 'pending' and q.expires_at < now() - make_interval(secs => $1) \
           and not exists (select 1 from apalis.jobs j where j.job_type = 'hitl_expire' \
                           and j.status in {LIVE} and j.metadata -> 'request_id' = q.request_id) \
         limit $2"
    )))
    .bind(settle.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok((runs, requests))
}

async fn has_live_job(
    conn: &mut PgConnection,
    job_type: &str,
    key: &str,
    value: &str,
) -> Result<bool, PersistenceError> {
    Ok(crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "select exists(select 1 from apalis.jobs where job_type = $1 and status in {LIVE} \
         and metadata -> $2 = $3)"
    )))
    .bind(job_type)
    .bind(key)
    .bind(value)
    .fetch_one(conn)
    .await?)
}

/// Continues a queued or running run that has no live advancement job: enqueues one and
/// records a `rehydrate` transition. Returns false when, under the run's lock, there was
/// nothing to do after all.
pub async fn continue_run(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    by: &str,
) -> Result<bool, PersistenceError> {
    let run = lock_run(tx, run_id).await?;
    if !matches!(run.status, RunStatus::Queued | RunStatus::Running)
        || has_live_job(tx, Advance::KIND, "run_id", run_id.as_str()).await?
    {
        return Ok(false);
    }
    queue::enqueue(
        tx,
        &Advance {
            run_id: run_id.clone(),
        },
        None,
    )
    .await?;
    record_rehydrate(
        tx,
        run_id,
        run.version,
        run.status,
        json!({ "repaired": "advancement", "by": by }),
        None,
    )
    .await?;
    Ok(true)
}

/// Re-arms a pending request's deadline that has no live expiry job.
pub async fn rearm_deadline(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    by: &str,
) -> Result<bool, PersistenceError> {
    let Some((run_id, expires_at)): Option<(RunId, Option<DateTime<Utc>>)> =
        crate::db::query_as("select run_id, expires_at from hitl_requests where request_id = $1")
            .bind(request_id)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(false);
    };
    let run = lock_run(tx, &run_id).await?;
    let Some(at) = expires_at else {
        return Ok(false);
    };
    if run.pending_request_id.as_ref() != Some(request_id)
        || has_live_job(tx, Expire::KIND, "request_id", request_id.as_str()).await?
    {
        return Ok(false);
    }
    let expire = Expire {
        request_id: request_id.clone(),
    };
    queue::enqueue(tx, &expire, Some(at)).await?;
    let details = json!({ "repaired": "deadline", "expiresAt": at, "by": by });
    record_rehydrate(
        tx,
        &run_id,
        run.version,
        run.status,
        details,
        Some(request_id),
    )
    .await?;
    Ok(true)
}

async fn record_rehydrate(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    version: i64,
    status: RunStatus,
    details: serde_json::Value,
    request_id: Option<&RequestId>,
) -> Result<i64, PersistenceError> {
    let run = lock_run(tx, run_id).await?;
    run.check(&Transition::Rehydrate, Some(version))?;
    let version: i64 = crate::db::query_scalar(
        "update orchestrator_runs set version = version + 1, rehydrated_at = now(), updated_at = now() \
         where run_id = $1 returning version",
    )
    .bind(run_id)
    .fetch_one(&mut **tx)
    .await?;
    append_audit(
        tx,
        run_id,
        AuditEntry {
            run_version: version,
            action: Some(AuditAction::Rehydrate),
            request_id,
            from_status: Some(status),
            to_status: Some(status),
            details: Some(details),
            ..AuditEntry::default()
        },
    )
    .await?;
    Ok(version)
}
