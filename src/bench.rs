//! `hitl-orchestrator bench <scenario>`: measured numbers anyone can rerun. Each scenario
//! gets a fresh database (on `DATABASE_URL`'s server, or on an embedded PostgreSQL
//! started for the run with durable settings: commit on), seeds it, measures, prints one
//! JSON object and writes it to `target/bench/<scenario>.json`.
//!
//! - `baseline`: PostgreSQL's own ceiling for the work of one resume, in one commit per
//!   resume (claim the job, lock the run, insert the response, update the request, the
//!   run and the command, append the audit event, complete the job), at `--concurrency`
//!   connections; SQL written directly, none of the service's code.
//! - `drain`: the same number of queued resume commands applied by the service's workers
//!   (`--workers` in this process, or as separate `worker` processes with `--processes`).
//!   The workers also advance each resumed run to completion, which the baseline does not.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::{BenchArgs, BenchScenario, CommonArgs};
use crate::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::db::{self, PoolSettings};
use crate::domain::{CommandKind, RequestId, RunId};
use crate::engine::Engine;
use crate::jobs::{Worker, WorkerSettings};
use crate::persistence::{self, NewCommand, Operator};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Persistence(#[from] persistence::PersistenceError),
    #[error("{0}")]
    Other(String),
}

/// Runs the scenario and returns its results.
pub async fn run(common: &CommonArgs, args: &BenchArgs) -> Result<Value, BenchError> {
    let (server, embedded) = match &common.database_url {
        Some(url) => (url.expose().to_owned(), None),
        None => {
            let dir =
                std::env::temp_dir().join(format!("hitl-bench-{}", uuid::Uuid::now_v7().simple()));
            let opts = EmbeddedOptions::new(dir.join("data"));
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?
                .map_err(db::DbError::from)?;
            (pg.url_for("postgres"), Some((pg, dir)))
        }
    };
    let name = format!("hitl_bench_{}", uuid::Uuid::now_v7().simple());
    db::ensure_database(&server, &name).await?;
    let url = with_database(&server, &name);
    let connections = (args.concurrency as u32 + 8).max(16);
    let pool = db::lazy_pool(
        &url,
        PoolSettings {
            max_connections: connections,
            acquire_timeout: Duration::from_secs(30),
        },
    )?;
    db::migrate(&pool).await?;

    eprintln!("seeding {} parked runs and their resume commands…", args.n);
    seed(&pool, args.n).await?;
    eprintln!("measuring {:?}…", args.scenario);
    let result = match args.scenario {
        BenchScenario::Baseline => baseline(&pool, args).await?,
        BenchScenario::Drain => drain(&pool, &url, args).await?,
    };
    pool.close().await;
    let mut admin = PgConnection::connect(&server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists \"{name}\" with (force)"
    )))
    .execute(&mut admin)
    .await?;
    if let Some((pg, dir)) = embedded {
        let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        let _ = std::fs::remove_dir_all(dir);
    }
    let out = std::path::Path::new("target/bench");
    if std::fs::create_dir_all(out).is_ok() {
        let file = out.join(format!("{}.json", args.scenario.name()));
        let _ = std::fs::write(
            file,
            serde_json::to_string_pretty(&result).unwrap_or_default(),
        );
    }
    Ok(result)
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, String::new()), |(b, q)| (b, format!("?{q}")));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    format!("{}/{database}{query}", &base[..host_end])
}

/// `n` parked runs, each with one queued resume command (and its job).
async fn seed(pool: &PgPool, n: usize) -> Result<(), BenchError> {
    let plan = Engine::with_builtins(true)
        .validate_plan(
            &json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "Approve?",
                                             "responseTypes": ["approval", "rejection"] } ] }),
        )
        .map_err(|e| BenchError::Other(e.to_string()))?
        .to_json();
    let mut tx = pool.begin().await?;
    persistence::seed::parked_runs(&mut tx, n as i64, &plan).await?;
    tx.commit().await?;
    let parked: Vec<(RunId, RequestId)> = sqlx::query_as(
        "select run_id, pending_request_id from orchestrator_runs where status = 'awaiting_hitl'",
    )
    .fetch_all(pool)
    .await?;
    for chunk in parked.chunks(500) {
        let mut tx = pool.begin().await?;
        for (run, request) in chunk {
            let command = NewCommand {
                kind: CommandKind::Resume,
                run_id: run.clone(),
                request_id: Some(request.clone()),
                idempotency_key: None,
                payload: json!({ "responses": [ { "responseType": "approval", "approved": true } ] }),
                operator: Operator {
                    id: "bench".into(),
                    display_name: None,
                    email: None,
                },
                note: None,
                trace_context: None,
            };
            persistence::record_command(&mut tx, command).await?;
        }
        tx.commit().await?;
    }
    // Measurements start from a vacuumed, analysed table, as a steady system would be.
    sqlx::query("vacuum analyze").execute(pool).await?;
    Ok(())
}

/// One resume's minimal work in one transaction; `false` when no job was left.
async fn baseline_one(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let job: Option<(String, Vec<u8>)> = sqlx::query_as(
        "select id, job from apalis.jobs where job_type = 'hitl_resume' and status = 'Pending' \
         order by run_at limit 1 for update skip locked",
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

async fn baseline(pool: &PgPool, args: &BenchArgs) -> Result<Value, BenchError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut done = 0u64;
            while baseline_one(&mut conn).await? {
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
               "commits_per_resume": 1, "machine": machine() }),
    )
}

async fn drain(pool: &PgPool, url: &str, args: &BenchArgs) -> Result<Value, BenchError> {
    let settings = WorkerSettings {
        concurrency: args.concurrency.div_ceil(args.workers.max(1)).max(1),
        batch_size: args.concurrency.div_ceil(args.workers.max(1)).max(1),
        poll_interval: Duration::from_millis(100),
        listen: true,
        heartbeat: Duration::from_secs(1),
        orphan_timeout: Duration::from_secs(10),
        max_attempts: 8,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(10),
        cleanup_interval: Duration::from_secs(3600),
        retain_done: Duration::from_secs(3600),
        retain_dead: Duration::from_secs(86400),
        sweep_interval: Duration::from_secs(3600),
        sweep_settle: Duration::from_secs(5),
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut children = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..args.workers.max(1) {
        if args.processes {
            let exe = std::env::current_exe().map_err(|e| BenchError::Other(e.to_string()))?;
            let child = tokio::process::Command::new(exe)
                .arg("worker")
                .env("DATABASE_URL", url)
                .env("HITL_WORKER_CONCURRENCY", settings.concurrency.to_string())
                .env("HITL_WORKER_BATCH_SIZE", settings.batch_size.to_string())
                .env(
                    "HITL_DB_MAX_CONNECTIONS",
                    (settings.concurrency + 8).to_string(),
                )
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Other(e.to_string()))?;
            children.push(child);
        } else {
            let worker = Worker::new(pool.clone(), Engine::with_builtins(true), settings.clone());
            handles.push(tokio::spawn(worker.run(stop.clone())));
        }
    }
    let total = args.n as i64;
    loop {
        let finished: i64 =
            sqlx::query_scalar("select count(*) from hitl_commands where status in ('succeeded', 'rejected', 'failed')")
                .fetch_one(pool)
                .await?;
        if finished >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    for mut c in children {
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = c.wait().await;
    }
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from hitl_commands where status = 'succeeded'")
            .fetch_one(pool)
            .await?;
    Ok(
        json!({ "scenario": "drain", "commands": total, "succeeded": succeeded, "workers": args.workers,
               "processes": args.processes, "concurrency": args.concurrency, "seconds": seconds,
               "commands_per_second": total as f64 / seconds, "machine": machine() }),
    )
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cores": cores })
}
