//! Bulk seeding for benchmarks and tests: many runs parked at a HITL node exactly as the
//! engine leaves them, in a few set-based statements instead of a transaction per run.

use serde_json::Value;
use sqlx::PgConnection;

use super::PersistenceError;

/// Inserts `n` runs of `plan` (whose first node must be a HITL node with id `review`),
/// parked there: request pending, cursor and awaited request in the runner metadata,
/// one audit event per version (created, started, request raised). One brief for all.
pub async fn parked_runs(
    conn: &mut PgConnection,
    n: i64,
    plan: &Value,
) -> Result<(), PersistenceError> {
    let salt = uuid::Uuid::now_v7().simple().to_string();
    crate::db::query("insert into briefs (brief_id, title) values ($1, 'seeded')")
        .bind(format!("brief_{salt}"))
        .execute(&mut *conn)
        .await?;
    crate::db::query(
        "create temporary table seed on commit drop as \
         select 'run_' || md5('r' || i || $1) as run_id, 'hitl_req_' || md5('q' || i || $1) as request_id \
         from generate_series(1, $2) i",
    )
    .bind(&salt)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    crate::db::query(
        "insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan, runner_metadata, version) \
         select run_id, 'thread_' || substr(run_id, 5), $1, 'running', $2, \
                jsonb_build_object('cursor', 'review', 'awaitingRequestId', request_id), 3 \
         from seed",
    )
    .bind(format!("brief_{salt}"))
    .bind(plan)
    .execute(&mut *conn)
    .await?;
    crate::db::query(
        "insert into hitl_requests (request_id, run_id, thread_id, brief_id, node_id, operator_prompt, response_types) \
         select request_id, run_id, 'thread_' || substr(run_id, 5), $1, 'review', 'Approve?', \
                array['approval', 'rejection'] \
         from seed",
    )
    .bind(format!("brief_{salt}"))
    .execute(&mut *conn)
    .await?;
    crate::db::query(
        "update orchestrator_runs o set status = 'awaiting_hitl', pending_request_id = s.request_id \
         from seed s where o.run_id = s.run_id",
    )
    .execute(&mut *conn)
    .await?;
    crate::db::query(
        "insert into run_audit_events (run_id, run_version, action, from_status, to_status, request_id) \
         select run_id, v, a, f, t, case when v = 3 then request_id end \
         from seed, (values (1, 'run_created', null, 'queued'), (2, 'run_started', 'queued', 'running'), \
                            (3, 'hitl_requested', 'running', 'awaiting_hitl')) as e(v, a, f, t)",
    )
    .execute(&mut *conn)
    .await?;
    crate::db::query("drop table seed")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every parked run with its pending request, in run id order.
pub async fn parked_requests(
    pool: &sqlx::PgPool,
) -> Result<Vec<(crate::domain::RunId, crate::domain::RequestId)>, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query_as(
        "select run_id, pending_request_id from orchestrator_runs \
         where status = 'awaiting_hitl' order by run_id",
    )
    .fetch_all(&mut *session)
    .await?;
    session.close().await?;
    Ok(out)
}

/// Deletes every job, as if the queue had been lost: runs left queued or running are
/// stranded until a rescan or the sweep finds them (the rehydration benchmark's fault).
pub async fn lose_every_job(pool: &sqlx::PgPool) -> Result<u64, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query("delete from apalis.jobs")
        .execute(&mut *session)
        .await?
        .rows_affected();
    session.close().await?;
    Ok(out)
}
