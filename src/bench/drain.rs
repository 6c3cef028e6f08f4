//! `drain`: queued resume commands applied by the service's workers, in this process or
//! as separate `worker` processes, with throughput per 10 s window, the CPU each party
//! used, and a check that every command was applied exactly once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hitl_orchestrator::config::BenchArgs;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::jobs::Worker;

use super::updates::UpdateCounts;
use super::{BenchError, Route, cpu, machine, worker_settings};

/// Drains `n` queued resumes; `worker` processes reach the database by `route`.
pub(super) async fn drain(
    pool: &PgPool,
    route: &Route,
    args: &BenchArgs,
    n: usize,
) -> Result<Value, BenchError> {
    let per_worker = args.concurrency.div_ceil(args.workers.max(1)).max(1);
    let settings = worker_settings(per_worker);
    let updates_before = UpdateCounts::take(pool, args.updates).await?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut children = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..args.workers.max(1) {
        if args.processes {
            let exe = std::env::current_exe().map_err(|e| BenchError::Other(e.to_string()))?;
            let child = tokio::process::Command::new(exe)
                .arg("worker")
                .envs(route.iter().map(|(k, v)| (*k, v.as_str())))
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
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let watch = cpu::CpuWatch::start(cpu::postmaster_of(pool).await, &pids);
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
    let cpu = watch.report(&pids);
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
    let updates = UpdateCounts::between(
        updates_before.as_ref(),
        UpdateCounts::take(pool, args.updates).await?.as_ref(),
    );
    let check = exactly_once(pool, total).await?;
    let succeeded = check["succeeded"].clone();
    let sustained = match (windows.first(), windows.last()) {
        (Some(first), Some(last)) if windows.len() >= 2 => json!(last / first),
        _ => Value::Null,
    };
    Ok(
        json!({ "scenario": "drain", "commands": total, "succeeded": succeeded, "workers": args.workers,
               "processes": args.processes, "concurrency": args.concurrency, "seconds": seconds,
               "ended": done, "commands_per_second": done as f64 / seconds,
               "per_10s_windows": windows,
               "last_window_over_first": sustained, "cpu": cpu, "exactly_once": check,
               "updates": updates,
               "machine": machine() }),
    )
}

/// Whether each of `n` resumes was applied once: a succeeded command, a response and a
/// resume event each, every run completed, and one audit event per run version.
pub(super) async fn exactly_once(pool: &PgPool, n: i64) -> Result<Value, BenchError> {
    let (succeeded, responses, resumes, completed, uneven): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "select (select count(*) from hitl_commands where status = 'succeeded'), \
                    (select count(*) from hitl_responses), \
                    (select count(*) from run_audit_events where action = 'resume'), \
                    (select count(*) from orchestrator_runs where status = 'completed'), \
                    (select count(*) from orchestrator_runs r where r.version <> \
                       (select count(*) from run_audit_events e where e.run_id = r.run_id))",
        )
        .fetch_one(pool)
        .await?;
    let ok = [succeeded, responses, resumes, completed] == [n; 4] && uneven == 0;
    Ok(
        json!({ "ok": ok, "succeeded": succeeded, "responses": responses,
               "resume_events": resumes, "completed_runs": completed,
               "runs_with_uneven_audit": uneven }),
    )
}
