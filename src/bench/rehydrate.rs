//! `rehydrate`: parked runs plus runs whose job was lost, and a fresh `worker` process:
//! time from its start until every run is rehydrated and the stranded ones completed, and
//! its peak RSS.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use hitl_orchestrator::config::BenchArgs;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::persistence;

use super::{BenchError, machine, settle};

pub(super) async fn rehydrate(
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
                principal: None,
            };
            engine
                .create_run(&mut tx, new)
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?;
        }
        tx.commit().await?;
    }
    // Their advancement jobs are lost, as if the queue had been truncated.
    persistence::seed::lose_every_job(pool).await?;
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
        // Polled on the small job table: a count over the 100,000-run table every 100 ms
        // took about 2.4 s of PostgreSQL time per run, on the two cores the measured work
        // shares. A stranded run completes in the transaction that marks its advancement
        // job done (a one-node plan), so the runs are counted once, to confirm.
        let (done_pages, advanced): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where job_type = 'hitl_rehydrate'), \
                    count(*) filter (where job_type = 'hitl_advance') \
             from apalis.jobs where status = 'Done'",
        )
        .fetch_one(pool)
        .await?;
        if done_pages >= pages
            && advanced >= args.stranded as i64
            && sqlx::query_scalar::<_, i64>(
                "select count(*) from orchestrator_runs where status = 'completed'",
            )
            .fetch_one(pool)
            .await?
                >= args.stranded as i64
        {
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
