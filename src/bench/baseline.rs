//! `baseline`: PostgreSQL's own ceiling for the work of one resume, in one commit per
//! resume, written as plain SQL with none of the service's code. This is the one place
//! the benchmark writes orchestrator rows by hand: it is the yardstick the service's
//! drain is compared with (docs/BENCHMARKS.md), so it must not share the service's code.

use std::time::Instant;

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use hitl_orchestrator::config::BenchArgs;

use super::{BenchError, machine};

/// One resume's minimal work in one transaction; `false` when no job was left.
/// With `complete`, the same commit also ends the run (one more run update and audit
/// event), as the service's resume of a one-node plan does.
async fn baseline_one(conn: &mut PgConnection, complete: bool) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let job: Option<(String, Vec<u8>)> = sqlx::query_as(
        "select id, job from apalis.jobs where job_type = 'hitl_resume' and status = 'Pending' \
         order by priority desc, run_at limit 1 for update skip locked",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((job_id, payload)) = job else {
        return Ok(false);
    };
    let payload: Value = serde_json::from_slice(&payload).unwrap_or_default();
    let command_id = payload["commandId"].as_str().unwrap_or_default().to_owned();
    let (run_id, request_id): (String, String) =
        sqlx::query_as("select run_id, request_id from hitl_commands where command_id = $1")
            .bind(&command_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("select version from orchestrator_runs where run_id = $1 for no key update")
        .bind(&run_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into hitl_responses (response_id, request_id, run_id, response_type, approved, command_id) \
         values ($1, $2, $3, 'approval', true, $4)",
    )
    .bind(format!("hitl_resp_{}", uuid::Uuid::now_v7().simple()))
    .bind(&request_id)
    .bind(&run_id)
    .bind(&command_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update hitl_requests set status = 'resolved', resolved_at = now() where request_id = $1",
    )
    .bind(&request_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update orchestrator_runs set status = 'running', pending_request_id = null, version = version + 1, \
         updated_at = now() where run_id = $1",
    )
    .bind(&run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into run_audit_events (run_id, run_version, action, from_status, to_status, request_id, command_id) \
         values ($1, 4, 'resume', 'awaiting_hitl', 'running', $2, $3)",
    )
    .bind(&run_id)
    .bind(&request_id)
    .bind(&command_id)
    .execute(&mut *tx)
    .await?;
    if complete {
        sqlx::query(
            "update orchestrator_runs set status = 'completed', version = version + 1, \
             execution_context = $2, runner_metadata = '{}', finished_at = now(), updated_at = now() \
             where run_id = $1",
        )
        .bind(&run_id)
        .bind(json!({ "review": { "decision": "approved" } }))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into run_audit_events (run_id, run_version, action, from_status, to_status) \
             values ($1, 5, 'run_completed', 'running', 'completed')",
        )
        .bind(&run_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "update hitl_commands set status = 'succeeded', outcome = '{}', finished_at = now(), updated_at = now() \
         where command_id = $1",
    )
    .bind(&command_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("update apalis.jobs set status = 'Done', done_at = now() where id = $1")
        .bind(&job_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn baseline(pool: &PgPool, args: &BenchArgs) -> Result<Value, BenchError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let complete = args.with_completion;
    for _ in 0..args.concurrency {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut done = 0u64;
            while baseline_one(&mut conn, complete).await? {
                done += 1;
            }
            Ok::<_, sqlx::Error>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| BenchError::Other(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(
        json!({ "scenario": "baseline", "resumes": total, "concurrency": args.concurrency,
               "seconds": seconds, "resumes_per_second": total as f64 / seconds,
               "commits_per_resume": 1, "with_completion": args.with_completion,
               "machine": machine() }),
    )
}
