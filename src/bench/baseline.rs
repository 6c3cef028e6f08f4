//! `baseline`: PostgreSQL's own ceiling for the work of one resume, in one commit per
//! resume, written as plain SQL with none of the service's code. This is the one place
//! the benchmark writes orchestrator rows by hand: it is the yardstick the service's
//! drain is compared with (docs/BENCHMARKS.md), so it must not share the service's code.
//!
//! Two forms of the same work: several statements in one transaction, as a hand-written
//! client would send them, and with `--floor` one data-modifying statement per resume,
//! the fewest round trips and executor starts PostgreSQL can do it in.

use std::time::Instant;

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use hitl_orchestrator::config::BenchArgs;

use super::updates::UpdateCounts;
use super::{BenchError, machine};

/// The floor's statement: claim a job, then apply its resume, as writable CTEs. `$run`
/// is the run update (returning `run_id` and the new `version`) and `$events` the select
/// of the audit events to append, from `run` and `command`.
///
/// The sub-statements share one snapshot and do not see each other's writes, so each row
/// is written once and values pass between them by `returning`: the command's update
/// returns the run and request it names (no separate read), and the run's update takes
/// the same `for no key update` lock that the statement form takes before it.
macro_rules! floor_statement {
    ($run:literal, $events:literal) => {
        concat!(
            "with job as ( \
                 select id, convert_from(job, 'UTF8')::jsonb ->> 'commandId' as command_id \
                 from apalis.jobs where job_type = 'hitl_resume' and status = 'Pending' \
                 order by priority desc, run_at limit 1 for update skip locked), \
             command as ( \
                 update hitl_commands c set status = 'succeeded', outcome = '{}', \
                     finished_at = now(), updated_at = now() \
                 from job where c.command_id = job.command_id \
                 returning c.command_id, c.run_id, c.request_id), \
             run as (",
            $run,
            "), \
             request as ( \
                 update hitl_requests q set status = 'resolved', resolved_at = now() \
                 from command where q.request_id = command.request_id), \
             response as ( \
                 insert into hitl_responses \
                     (response_id, request_id, run_id, response_type, approved, command_id) \
                 select $1, request_id, run_id, 'approval', true, command_id from command), \
             event as ( \
                 insert into run_audit_events \
                     (run_id, run_version, action, from_status, to_status, request_id, command_id) ",
            $events,
            "), \
             done as ( \
                 update apalis.jobs j set status = 'Done', done_at = now() \
                 from job where j.id = job.id returning j.id) \
             select id from done"
        )
    };
}

/// The floor of one resume: its run resumed.
const FLOOR: &str = floor_statement!(
    "update orchestrator_runs r set status = 'running', pending_request_id = null, \
         version = r.version + 1, updated_at = now() \
     from command where r.run_id = command.run_id returning r.run_id, r.version",
    "select run.run_id, run.version, 'resume', 'awaiting_hitl', 'running', \
         command.request_id, command.command_id \
     from run, command"
);

/// The floor of one resume that also ends the run. One statement cannot update a row
/// twice, so the run goes from awaiting to completed in one new row version, its version
/// bumped by the two transitions that the two audit events record.
const FLOOR_COMPLETING: &str = floor_statement!(
    "update orchestrator_runs r set status = 'completed', pending_request_id = null, \
         version = r.version + 2, execution_context = $2, runner_metadata = '{}', \
         finished_at = now(), updated_at = now() \
     from command where r.run_id = command.run_id returning r.run_id, r.version",
    "select run.run_id, run.version - 1, 'resume', 'awaiting_hitl', 'running', \
         command.request_id, command.command_id \
     from run, command \
     union all \
     select run_id, version, 'run_completed', 'running', 'completed', null, null from run"
);

/// One resume's work as one autocommitted statement; `false` when no job was left.
///
/// Autocommit rather than `begin`, the statement, `commit`: a single statement is its own
/// transaction, so the commit is the same one and the two round trips around it would
/// only add what the floor is meant to leave out.
async fn floor_one(conn: &mut PgConnection, complete: bool) -> Result<bool, sqlx::Error> {
    let response_id = format!("hitl_resp_{}", uuid::Uuid::now_v7().simple());
    let done = if complete {
        sqlx::query(FLOOR_COMPLETING)
            .bind(response_id)
            .bind(json!({ "review": { "decision": "approved" } }))
            .fetch_optional(&mut *conn)
            .await?
    } else {
        sqlx::query(FLOOR)
            .bind(response_id)
            .fetch_optional(&mut *conn)
            .await?
    };
    Ok(done.is_some())
}

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
    let complete = args.with_completion;
    let floor = args.floor;
    let updates_before = UpdateCounts::take(pool, args.updates).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut done = 0u64;
            loop {
                let applied = if floor {
                    floor_one(&mut conn, complete).await?
                } else {
                    baseline_one(&mut conn, complete).await?
                };
                if !applied {
                    break;
                }
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
    let updates = UpdateCounts::between(
        updates_before.as_ref(),
        UpdateCounts::take(pool, args.updates).await?.as_ref(),
    );
    let written = written(pool).await?;
    // Statements per resume, `begin` and `commit` included.
    let statements = match (floor, complete) {
        (true, _) => 1,
        (false, false) => 11,
        (false, true) => 13,
    };
    Ok(
        json!({ "scenario": "baseline", "resumes": total, "concurrency": args.concurrency,
               "seconds": seconds, "resumes_per_second": total as f64 / seconds,
               "commits_per_resume": 1, "statements_per_resume": statements,
               "floor": floor, "with_completion": complete, "updates": updates,
               "written": written, "machine": machine() }),
    )
}

/// What the resumes left behind, so that both forms can be seen to do the same writes.
async fn written(pool: &PgPool) -> Result<Value, BenchError> {
    let (jobs_done, commands, requests, responses, events, running, completed): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "select (select count(*) from apalis.jobs where status = 'Done'), \
                (select count(*) from hitl_commands where status = 'succeeded'), \
                (select count(*) from hitl_requests where status = 'resolved'), \
                (select count(*) from hitl_responses), \
                (select count(*) from run_audit_events where action in ('resume', 'run_completed')), \
                (select count(*) from orchestrator_runs where status = 'running'), \
                (select count(*) from orchestrator_runs where status = 'completed')",
    )
    .fetch_one(pool)
    .await?;
    Ok(
        json!({ "jobs_done": jobs_done, "commands_succeeded": commands,
                "requests_resolved": requests, "responses": responses,
                "audit_events": events, "runs_running": running, "runs_completed": completed }),
    )
}
