//! The scenarios over HTTP: `submit` (accepted per second, no workers), `e2e` (resumes
//! at a fixed rate, workers running: client send → applying commit) and `pending` (the
//! first and a deep page of the inbox).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hitl_orchestrator::config::BenchArgs;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::jobs::Worker;

use hitl_orchestrator::domain::RequestId;
use hitl_orchestrator::service::PendingCursor;

use super::{
    BenchError, Route, TOKEN, cpu, machine, parked, percentiles, resume_body, start_api,
    worker_settings,
};

/// The `api` and `worker` processes of an e2e run with `--api-processes`; killed when
/// dropped.
struct Processes {
    children: Vec<tokio::process::Child>,
    /// The base URL of each `api` process.
    apis: Vec<String>,
}

impl Processes {
    /// Starts `apis` `api` processes on free ports and one `worker` process of
    /// `concurrency` jobs, all on `route`, and waits until each `api` listens.
    async fn start(route: &Route, apis: usize, concurrency: usize) -> Result<Self, BenchError> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().map_err(|e| BenchError::Other(e.to_string()))?;
        let spawn = |role: &str| {
            tokio::process::Command::new(&exe)
                .arg(role)
                .envs(route.iter().map(|(k, v)| (*k, v.as_str())))
                .env("API_KEY", TOKEN)
                .env("LISTEN_ADDR", "127.0.0.1:0")
                .env("HITL_WORKER_CONCURRENCY", concurrency.to_string())
                .env("HITL_WORKER_BATCH_SIZE", concurrency.to_string())
                .env("HITL_DB_MAX_CONNECTIONS", (concurrency + 8).to_string())
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Other(e.to_string()))
        };
        let mut started = Self {
            children: vec![spawn("worker")?],
            apis: Vec::new(),
        };
        for _ in 0..apis {
            let mut child = spawn("api")?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| BenchError::Other("no stdout".into()))?;
            started.children.push(child);
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let base = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(base) = line.strip_prefix("hitl-orchestrator listening on ") {
                        return Some(base.trim().to_owned());
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| BenchError::Other("an api process did not start listening".into()))?;
            started.apis.push(base);
        }
        Ok(started)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }
}

pub(super) async fn submit(pool: &PgPool, args: &BenchArgs, n: usize) -> Result<Value, BenchError> {
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

pub(super) async fn e2e(
    pool: &PgPool,
    route: &Route,
    args: &BenchArgs,
    offered: usize,
) -> Result<Value, BenchError> {
    let stop = CancellationToken::new();
    let (bases, worker, processes) = if args.api_processes == 0 {
        let base = start_api(pool, &stop).await?;
        let worker = Worker::new(
            pool.clone(),
            Engine::with_builtins(true),
            worker_settings(args.concurrency.max(1)),
        )
        .quiet();
        (
            vec![base],
            Some(tokio::spawn(worker.run(stop.clone()))),
            None,
        )
    } else {
        let processes =
            Processes::start(route, args.api_processes, args.concurrency.max(1)).await?;
        (processes.apis.clone(), None, Some(processes))
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // past the worker's start-up rescan
    let pids = processes.as_ref().map(Processes::pids).unwrap_or_default();
    let watch = cpu::CpuWatch::start(cpu::postmaster_of(pool).await, &pids);
    let work = parked(pool).await?;
    let client = reqwest::Client::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sends = Vec::new();
    for (i, (run, request)) in work.into_iter().take(offered).enumerate() {
        ticker.tick().await;
        let (client, base) = (client.clone(), bases[i % bases.len()].clone());
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
    let cpu = watch.report(&pids);
    // Every accepted resume applied once (the runs no send reached stay parked).
    let exactly_once = super::drain::exactly_once(pool, submitted.len() as i64).await?;
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
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    drop(processes);
    Ok(
        json!({ "scenario": "e2e", "offered_per_second": args.rate, "offered": offered,
               "api_processes": args.api_processes, "exactly_once": exactly_once,
               // With --api-processes, `workers_cores` is the api and worker processes'.
               "cpu": cpu,
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

pub(super) async fn pending(
    pool: &PgPool,
    args: &BenchArgs,
    n: usize,
) -> Result<Value, BenchError> {
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
    let cursor = PendingCursor::after(deep.0, deep.1).encode();
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
