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
//!   Reports throughput per 10 s window, for the sustained-speed check.
//! - `submit`: resume commands over HTTP from `--concurrency` clients, no workers:
//!   accepted per second and latency percentiles.
//! - `e2e`: resumes at `--rate` per second for `--seconds`, workers running: submit →
//!   applied latency (command `created_at` → `finished_at`, both set by the database).
//! - `rehydrate`: `--n` parked runs plus `--stranded` runs whose job was lost; a fresh
//!   `worker` process: time from its start until every run is rehydrated and the stranded
//!   ones completed, and its peak RSS.
//! - `pending`: `--n` pending requests; latency of the first page and of a page 90 % deep.

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
            let mut opts = EmbeddedOptions::new(dir.join("data"));
            // e2e reads each command's commit time (pg_xact_commit_timestamp).
            opts.settings.push("track_commit_timestamp=on".into());
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?
                .map_err(db::DbError::from)?;
            (pg.url_for("postgres"), Some((pg, dir)))
        }
    };
    let name = format!("hitl_bench_{}", uuid::Uuid::now_v7().simple());
    db::ensure_database(&server, &name).await?;
    let url = db::url_with_database(&server, &name);
    let connections = (args.concurrency as u32 + 8).max(16);
    let pool = db::lazy_pool(
        &url,
        PoolSettings {
            max_connections: connections,
            acquire_timeout: Duration::from_secs(30),
        },
    )?;
    db::migrate(&pool).await?;

    let n = args.n.unwrap_or(args.scenario.default_n());
    let result = match args.scenario {
        BenchScenario::Baseline => {
            seed(&pool, n, true).await?;
            baseline(&pool, args).await?
        }
        BenchScenario::Drain => {
            seed(&pool, n, true).await?;
            drain(&pool, &url, args, n).await?
        }
        BenchScenario::Submit => {
            seed(&pool, n, false).await?;
            submit(&pool, args, n).await?
        }
        BenchScenario::E2e => {
            let offered = (args.rate * args.e2e_seconds() as f64).ceil() as usize;
            seed(&pool, offered, false).await?;
            e2e(&pool, args, offered).await?
        }
        BenchScenario::Rehydrate => {
            seed(&pool, n, false).await?;
            rehydrate(&pool, &url, args, n).await?
        }
        BenchScenario::Pending => {
            seed(&pool, n, false).await?;
            pending(&pool, args, n).await?
        }
    };
    let version: String = sqlx::query_scalar("show server_version")
        .fetch_one(&pool)
        .await?;
    let mut result = result;
    result["postgres"] = json!(version);
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

/// `n` parked runs, each with one queued resume command (and its job) when `commands`.
async fn seed(pool: &PgPool, n: usize, commands: bool) -> Result<(), BenchError> {
    eprintln!(
        "seeding {n} parked runs{}…",
        if commands {
            " and their resume commands"
        } else {
            ""
        }
    );
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
    if !commands {
        settle(pool).await?;
        return Ok(());
    }
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
    settle(pool).await
}

/// Measurements start from vacuumed, analysed tables and a fresh checkpoint, as a steady
/// system would be: seeding writes far more WAL than the measured phase, and a checkpoint
/// or autovacuum set off by it in the middle of a measurement is noise, not the service.
async fn settle(pool: &PgPool) -> Result<(), BenchError> {
    sqlx::query("vacuum analyze").execute(pool).await?;
    // Needs superuser (or pg_checkpoint); on a server where the bench lacks it, skip.
    if let Err(e) = sqlx::query("checkpoint").execute(pool).await {
        eprintln!("no checkpoint before measuring ({e})");
    }
    Ok(())
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

async fn baseline(pool: &PgPool, args: &BenchArgs) -> Result<Value, BenchError> {
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

async fn drain(pool: &PgPool, url: &str, args: &BenchArgs, n: usize) -> Result<Value, BenchError> {
    let per_worker = args.concurrency.div_ceil(args.workers.max(1)).max(1);
    let settings = worker_settings(per_worker);
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
            let worker =
                Worker::new(pool.clone(), Engine::with_builtins(true), settings.clone()).quiet();
            handles.push(tokio::spawn(worker.run(stop.clone())));
        }
    }
    let total = n as i64;
    // Finished count every second, for throughput per 10 s window.
    let mut marks: Vec<(f64, i64)> = vec![(0.0, 0)];
    let mut next_mark = 1.0;
    let limit = args.seconds.map(|s| s as f64);
    let (done, seconds) = loop {
        // Done means every command ended and every resumed run settled (paused again or
        // ended), not merely that the commands were applied.
        let (finished, moving): (i64, i64) = sqlx::query_as(
            "select (select count(*) from hitl_commands \
                     where status in ('succeeded', 'rejected', 'failed')), \
                    (select count(*) from orchestrator_runs where status in ('queued', 'running'))",
        )
        .fetch_one(pool)
        .await?;
        let now = started.elapsed().as_secs_f64();
        if now >= next_mark {
            marks.push((now, finished));
            next_mark += 1.0;
        }
        if finished >= total && moving == 0 {
            break (finished, now);
        }
        if limit.is_some_and(|l| now >= l) {
            eprintln!(
                "{}s elapsed: stopping with {finished} of {total} commands done",
                now.round()
            );
            break (finished, now);
        }
        // The count scans the commands table: poll gently, or the measuring slows the
        // measured (more so as the table grows).
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let windows: Vec<f64> = marks
        .windows(11)
        .step_by(10)
        .map(|w| (w[10].1 - w[0].1) as f64 / (w[10].0 - w[0].0))
        .collect();
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
    let sustained = match (windows.first(), windows.last()) {
        (Some(first), Some(last)) if windows.len() >= 2 => json!(last / first),
        _ => Value::Null,
    };
    Ok(
        json!({ "scenario": "drain", "commands": total, "succeeded": succeeded, "workers": args.workers,
               "processes": args.processes, "concurrency": args.concurrency, "seconds": seconds,
               "ended": done, "commands_per_second": done as f64 / seconds,
               "per_10s_windows": windows,
               "last_window_over_first": sustained, "machine": machine() }),
    )
}

/// Worker settings for benchmarks: `concurrency` jobs at once, quiet background tasks.
fn worker_settings(concurrency: usize) -> WorkerSettings {
    WorkerSettings {
        concurrency,
        batch_size: concurrency,
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
    }
}

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Serves the API in this process on a free loopback port.
async fn start_api(pool: &PgPool, stop: &CancellationToken) -> Result<String, BenchError> {
    let auth = crate::identity::Authenticator::from_settings(
        Some(&crate::config::Secret::new(TOKEN)),
        None,
    )
    .map_err(BenchError::Other)?
    .ok_or_else(|| BenchError::Other("no token".into()))?;
    let service = crate::service::Service::new(pool.clone(), Engine::with_builtins(true))
        .with_shutdown(stop.clone());
    let state = crate::api::AppState::new(service, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| BenchError::Other(e.to_string()))?
    );
    let listener = crate::api::listener::TimeoutListener::new(listener, Duration::from_secs(30));
    let app = crate::api::router(state);
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(base)
}

/// p50, p95, p99 and max of `samples` (seconds), in milliseconds.
fn percentiles(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1] * 1000.0
    };
    json!({ "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0), "samples": samples.len() })
}

async fn parked(pool: &PgPool) -> Result<Vec<(String, String)>, BenchError> {
    Ok(sqlx::query_as("select run_id, pending_request_id from orchestrator_runs where status = 'awaiting_hitl' order by run_id")
        .fetch_all(pool)
        .await?)
}

fn resume_body(run: &str, request: &str) -> Value {
    json!({ "runId": run, "requestId": request,
            "responses": [ { "responseType": "approval", "approved": true } ],
            "operator": { "id": "bench" } })
}

async fn submit(pool: &PgPool, args: &BenchArgs, n: usize) -> Result<Value, BenchError> {
    let stop = CancellationToken::new();
    let base = start_api(pool, &stop).await?;
    let work = std::sync::Arc::new(std::sync::Mutex::new(parked(pool).await?));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (work, client, base) = (work.clone(), client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let next = work.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((run, request)) = next else {
                    return Ok::<_, String>(latencies);
                };
                let t0 = Instant::now();
                let response = client
                    .post(format!("{base}/api/hitl/resume"))
                    .bearer_auth(TOKEN)
                    .json(&resume_body(&run, &request))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status() != 202 {
                    return Err(format!("HTTP {}", response.status()));
                }
                latencies.push(t0.elapsed().as_secs_f64());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(
            t.await
                .map_err(|e| BenchError::Other(e.to_string()))?
                .map_err(BenchError::Other)?,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    Ok(
        json!({ "scenario": "submit", "commands": n, "concurrency": args.concurrency, "seconds": seconds,
               "accepted_per_second": latencies.len() as f64 / seconds, "latency": percentiles(latencies),
               "machine": machine() }),
    )
}

async fn e2e(pool: &PgPool, args: &BenchArgs, offered: usize) -> Result<Value, BenchError> {
    let stop = CancellationToken::new();
    let base = start_api(pool, &stop).await?;
    let worker = Worker::new(
        pool.clone(),
        Engine::with_builtins(true),
        worker_settings(args.concurrency.max(1)),
    )
    .quiet();
    let worker = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await; // past the worker's start-up rescan
    let work = parked(pool).await?;
    let client = reqwest::Client::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sends = Vec::new();
    for (run, request) in work.into_iter().take(offered) {
        ticker.tick().await;
        let (client, base) = (client.clone(), base.clone());
        sends.push(tokio::spawn(async move {
            // Submitted: just before the request leaves the client (same host and clock
            // as the database).
            let submitted = chrono::Utc::now();
            let reply: Value = client
                .post(format!("{base}/api/hitl/resume"))
                .bearer_auth(TOKEN)
                .json(&resume_body(&run, &request))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some((reply["commandId"].as_str()?.to_owned(), submitted))
        }));
    }
    let mut submitted = std::collections::HashMap::new();
    for s in sends {
        if let Ok(Some((id, at))) = s.await {
            submitted.insert(id, at);
        }
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 =
            sqlx::query_scalar("select count(*) from hitl_commands where finished_at is null")
                .fetch_one(pool)
                .await?;
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Applied: the commit of the transaction that applied the command (and moved the run
    // on), when the server tracks commit times; else the command's `finished_at`, the
    // start of that transaction.
    let exact: bool = sqlx::query_scalar("select current_setting('track_commit_timestamp') = 'on'")
        .fetch_one(pool)
        .await?;
    type At = chrono::DateTime<chrono::Utc>;
    // The claim's time is its job's `lock_at` (the claim transaction's start).
    let applied: Vec<(String, At, At, At, At)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select c.command_id, c.created_at, j.lock_at, c.finished_at, {} \
         from hitl_commands c join apalis.jobs j \
             on j.job_type = 'hitl_resume' \
            and convert_from(j.job, 'UTF8')::jsonb ->> 'commandId' = c.command_id \
         where c.finished_at is not null and j.lock_at is not null",
        if exact {
            "pg_xact_commit_timestamp(c.xmin)"
        } else {
            "c.finished_at"
        }
    )))
    .fetch_all(pool)
    .await?;
    let secs = |from: &At, to: &At| (*to - *from).num_microseconds().map(|us| us as f64 / 1e6);
    let mut latencies = Vec::new();
    let mut phases: [Vec<f64>; 4] = Default::default();
    for (id, created, claimed, started, committed) in &applied {
        let Some(sent) = submitted.get(id) else {
            continue;
        };
        latencies.extend(secs(sent, committed));
        phases[0].extend(secs(sent, created));
        phases[1].extend(secs(created, claimed));
        phases[2].extend(secs(claimed, started));
        phases[3].extend(secs(started, committed));
    }
    let [to_recording, to_claim, to_applying, applying] = phases;
    stop.cancel();
    let _ = worker.await;
    Ok(
        json!({ "scenario": "e2e", "offered_per_second": args.rate, "offered": offered,
               "achieved_offer_per_second": offered as f64 / offered_seconds, "applied": latencies.len(),
               "submit_to_applied": percentiles(latencies),
               // Where the time goes: the client and the API until the recording
               // transaction starts; recording, its commit and the worker's wake-up until
               // the claim starts; the claim until the applying transaction starts;
               // applying until its commit.
               "phases": { "submit_to_recording": percentiles(to_recording),
                           "recording_to_claim": percentiles(to_claim),
                           "claim_to_applying": percentiles(to_applying),
                           "applying_to_commit": percentiles(applying) },
               "applied_at": if exact { "commit time" } else { "start of the applying transaction" },
               "machine": machine() }),
    )
}

async fn rehydrate(
    pool: &PgPool,
    url: &str,
    args: &BenchArgs,
    n: usize,
) -> Result<Value, BenchError> {
    let engine = Engine::with_builtins(true);
    let plan = json!({ "nodes": [ { "id": "finish", "type": "task", "capability": "set", "input": { "done": true } } ] });
    for chunk in (0..args.stranded).collect::<Vec<_>>().chunks(500) {
        let mut tx = pool.begin().await?;
        for _ in chunk {
            let new = persistence::NewRun {
                brief: persistence::BriefInput::New {
                    title: "stranded".into(),
                    content: json!({}),
                },
                thread_id: None,
                plan: plan.clone(),
                execution_context: json!({}),
                runner_metadata: json!({}),
            };
            engine
                .create_run(&mut tx, new)
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?;
        }
        tx.commit().await?;
    }
    // Their advancement jobs are lost, as if the queue had been truncated.
    sqlx::query("delete from apalis.jobs").execute(pool).await?;
    settle(pool).await?;
    let pages = (n + args.stranded).div_ceil(500) as i64;
    let exe = std::env::current_exe().map_err(|e| BenchError::Other(e.to_string()))?;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let pid = child.id().unwrap_or(0);
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kib = peak_kib.max(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
        let (done_pages, completed): (i64, i64) = sqlx::query_as(
            "select (select count(*) from apalis.jobs where job_type = 'hitl_rehydrate' and status = 'Done'), \
             (select count(*) from orchestrator_runs where status = 'completed')",
        )
        .fetch_one(pool)
        .await?;
        if done_pages >= pages && completed >= args.stranded as i64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Other(
                "rehydration did not finish in 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let untouched: i64 = sqlx::query_scalar(
        "select count(*) from orchestrator_runs where status = 'awaiting_hitl' and version = 3",
    )
    .fetch_one(pool)
    .await?;
    // Where the time went, in seconds after the measurement started (database clock).
    let timeline: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "select extract(epoch from (select min(lock_at) from apalis.jobs where job_type = 'hitl_rescan') - $1)::float8, \
                extract(epoch from (select min(lock_at) from apalis.jobs where job_type = 'hitl_rehydrate') - $1)::float8, \
                extract(epoch from (select max(done_at) from apalis.jobs where job_type = 'hitl_rehydrate') - $1)::float8, \
                extract(epoch from (select max(finished_at) from orchestrator_runs where status = 'completed') - $1)::float8",
    )
    .bind(started_at)
    .fetch_one(pool)
    .await?;
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = child.wait().await;
    Ok(
        json!({ "scenario": "rehydrate", "parked": n, "stranded": args.stranded, "pages": pages,
               "seconds_from_process_start": seconds, "runs_per_second": (n + args.stranded) as f64 / seconds,
               "peak_rss_mb": peak_kib as f64 / 1024.0, "parked_left_untouched": untouched,
               "timeline_seconds": { "rescan_started": timeline.0, "first_page_started": timeline.1,
                                     "last_page_done": timeline.2, "last_stranded_done": timeline.3 },
               "machine": machine() }),
    )
}

async fn pending(pool: &PgPool, args: &BenchArgs, n: usize) -> Result<Value, BenchError> {
    let stop = CancellationToken::new();
    let base = start_api(pool, &stop).await?;
    let deep: (chrono::DateTime<chrono::Utc>, RequestId) = sqlx::query_as(
        "select created_at, request_id from hitl_requests where status = 'pending' \
         order by created_at, request_id offset $1 limit 1",
    )
    // 90 % deep, leaving at least one full page after it.
    .bind((n as i64 * 9 / 10).min(n as i64 - 51).max(0))
    .fetch_one(pool)
    .await?;
    let cursor = crate::service::PendingCursor::after(deep.0, deep.1).encode();
    let client = reqwest::Client::new();
    let mut results = serde_json::Map::new();
    for (label, query) in [
        ("first_page", String::new()),
        ("deep_page", format!("&cursor={cursor}")),
    ] {
        let mut latencies = Vec::new();
        for i in 0..args.samples + 10 {
            let t0 = Instant::now();
            let response = client
                .get(format!("{base}/api/hitl/pending?limit=50{query}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?;
            let body: Value = response
                .json()
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?;
            if body["items"].as_array().is_none_or(|a| a.len() != 50) {
                return Err(BenchError::Other(format!("{label}: expected 50 items")));
            }
            // The first few warm the connection and the plan cache.
            if i >= 10 {
                latencies.push(t0.elapsed().as_secs_f64());
            }
        }
        results.insert(label.into(), percentiles(latencies));
    }
    stop.cancel();
    Ok(
        json!({ "scenario": "pending", "pending_requests": n, "page_size": 50, "latency": results, "machine": machine() }),
    )
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cores": cores })
}
