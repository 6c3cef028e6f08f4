//! The queue workers: woken by NOTIFY, still polling without it, exactly once under
//! duplicate delivery and several processes, poison jobs isolated, retries with growing
//! delays, dead jobs visible, and a bounded graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::queue_support::{
    RunningWorker, fast_settings, parked_runs, scalar, submit_resumes, wait_for_count,
};
use hitl_orchestrator::domain::RunStatus;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::engine::capability::{
    BoxFuture, Capability, CapabilityCall, CapabilityOutcome, CapabilityRegistry,
    RunnerStateUpdate, TransientError,
};
use hitl_orchestrator::jobs::{ClaimedJob, Handled, Handler, JobContext, JobError, Worker};
use hitl_orchestrator::persistence::jobs::{ApplyResume, JobPayload};
use hitl_orchestrator::persistence::{self, queue};
use nix::sys::signal::Signal;
use serde_json::json;
use sqlx::PgPool;

/// Every run answered once: one response, one resume event, completed, one audit event
/// per version.
async fn assert_applied_exactly_once(pool: &PgPool, n: i64) {
    assert_eq!(
        scalar(
            pool,
            "select count(*) from hitl_commands where status = 'succeeded'"
        )
        .await,
        n
    );
    assert_eq!(scalar(pool, "select count(*) from hitl_responses").await, n);
    assert_eq!(
        scalar(
            pool,
            "select count(*) from run_audit_events where action = 'resume'"
        )
        .await,
        n
    );
    assert_eq!(
        scalar(
            pool,
            "select count(*) from orchestrator_runs where status = 'completed'"
        )
        .await,
        n
    );
    let uneven = scalar(
        pool,
        "select count(*) from orchestrator_runs r where r.version <> \
         (select count(*) from run_audit_events e where e.run_id = r.run_id)",
    )
    .await;
    assert_eq!(uneven, 0, "one audit event per version on every run");
}

#[tokio::test]
async fn a_notification_wakes_an_idle_worker_long_before_its_poll_and_the_poll_works_without_it() {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 2).await;

    let mut settings = fast_settings();
    // A poll far longer than the wait below: finishing in time proves the NOTIFY woke
    // it, with room for a machine loaded by the suite's process tests.
    settings.poll_interval = Duration::from_secs(120);
    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings);
    // about time: idle long enough that the start-up poll is long done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let submitted = Instant::now();
    submit_resumes(&db.pool, &runs[..1]).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    let woke_in = submitted.elapsed();
    worker.stop().await;
    assert!(
        woke_in < Duration::from_secs(30),
        "NOTIFY, not the 120 s poll: {woke_in:?}"
    );

    let mut settings = fast_settings();
    settings.listen = false;
    settings.poll_interval = Duration::from_millis(300);
    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings);
    // about time: the worker is idle, past its first poll, when the job arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    submit_resumes(&db.pool, &runs[1..]).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        2,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn three_worker_processes_drain_three_thousand_commands_exactly_once() {
    let db = crate::common::fresh_db().await;
    let route = crate::common::direct_route(&db.url);
    worker_processes_drain_exactly_once(&db, &route, 3, 3000).await;
}

/// `processes` worker processes reaching the database by `route` apply `n` queued
/// resumes, each exactly once, and share the work.
pub(crate) async fn worker_processes_drain_exactly_once(
    db: &crate::common::TestDb,
    route: &crate::common::Route,
    processes: usize,
    n: usize,
) {
    let runs = parked_runs(&db.pool, n).await;
    submit_resumes(&db.pool, &runs).await;

    let logs = tempfile::tempdir().unwrap();
    let env = crate::common::env_with(
        route,
        &[
            ("HITL_WORKER_HEARTBEAT", "200ms"),
            ("HITL_WORKER_ORPHAN_TIMEOUT", "2s"),
        ],
    );
    let mut workers: Vec<_> = (0..processes)
        .map(|_| crate::common::ServiceProcess::start_worker(&env, logs.path()))
        .collect();
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        n as i64,
        Duration::from_secs(300),
    )
    .await;
    for w in &mut workers {
        assert!(
            w.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)),
            "{}",
            w.log()
        );
    }
    assert_applied_exactly_once(&db.pool, n as i64).await;
    let by_worker = scalar(
        &db.pool,
        "select count(distinct lock_by) from apalis.jobs where job_type = 'hitl_resume'",
    )
    .await;
    assert!(by_worker >= 2, "the work was shared: {by_worker} workers");
}

#[tokio::test]
async fn a_command_job_delivered_twice_applies_once() {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 1).await;
    let ids = submit_resumes(&db.pool, &runs).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let again = ApplyResume {
        command_id: ids[0].clone(),
    };
    queue::enqueue(&mut conn, &again, None).await.unwrap();
    drop(conn);
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from apalis.jobs where job_type = 'hitl_resume'"
        )
        .await,
        2
    );

    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_resume' and status = 'Done'",
        2,
        Duration::from_secs(30),
    )
    .await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    assert_applied_exactly_once(&db.pool, 1).await;
}

#[tokio::test]
async fn a_poison_job_dies_alone_its_batch_mates_succeed_and_the_worker_keeps_running() {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 6).await;
    sqlx::query(
        "insert into apalis.jobs (id, job_type, job, status, run_at) \
         values ('01POISON000000000000000000', 'hitl_resume', 'not json at all'::bytea, 'Pending', now() - interval '1 minute')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    submit_resumes(&db.pool, &runs[..5]).await;

    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        5,
        Duration::from_secs(30),
    )
    .await;
    wait_for_count(&db.pool, "select count(*) from apalis.jobs where id = '01POISON000000000000000000' and status = 'Killed'", 1, Duration::from_secs(30)).await;
    let error: String = sqlx::query_scalar(
        "select last_result->>'Err' from apalis.jobs where id = '01POISON000000000000000000'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(error.contains("undecodable"), "{error}");

    // Still running: a new command is applied.
    submit_resumes(&db.pool, &runs[5..]).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        6,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
}

/// Fails transiently `failures` times, then completes; records when it was called.
struct Flaky {
    failures: usize,
    calls: Mutex<Vec<Instant>>,
}

impl Capability for Flaky {
    fn call<'a>(
        &'a self,
        _: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            if calls.len() <= self.failures {
                return Err(TransientError {
                    message: "agent unavailable".into(),
                    retry_after: None,
                });
            }
            Ok(CapabilityOutcome::Completed {
                merge: serde_json::Map::new(),
                runner_state: RunnerStateUpdate::Keep,
                notes: None,
            })
        })
    }
}

#[tokio::test]
async fn a_node_failing_transiently_three_times_is_retried_with_growing_delays_without_spending_job_attempts()
 {
    let db = crate::common::fresh_db().await;
    let flaky = Arc::new(Flaky {
        failures: 3,
        calls: Mutex::new(vec![]),
    });
    let mut registry = CapabilityRegistry::with_builtins();
    registry.register("flaky", flaky.clone());
    let engine = Engine::new(registry, true).with_retry(hitl_orchestrator::engine::RetryPolicy {
        retry_for: Duration::from_secs(60),
        backoff: Duration::from_millis(200),
        backoff_max: Duration::from_secs(10),
    });
    let plan = json!({ "nodes": [ { "id": "call", "type": "task", "capability": "flaky" } ] });
    let runs = crate::common::queue_support::create_runs(&db.pool, &engine, 1, &plan).await;

    let mut settings = fast_settings();
    settings.poll_interval = Duration::from_millis(20);
    // Two job attempts only: an outage must not spend them.
    settings.max_attempts = 2;
    let worker = RunningWorker::spawn(&db.pool, engine, settings);
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(15),
    )
    .await;
    worker.stop().await;

    let calls = flaky.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // Jitter keeps each wait between half and all of 200 ms, 400 ms, 800 ms. A loaded
    // machine only makes a wait longer, so the growing lower bounds are what is checked:
    // comparing one wait with the next would fail whenever a short one ran late.
    for (i, gap) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(100 << i) - Duration::from_millis(10);
        assert!(
            *gap >= floor,
            "retry {i} waited at least {floor:?}: {gaps:?}"
        );
    }
    let (attempts, status): (i32, String) =
        sqlx::query_as("select attempts, status from apalis.jobs where job_type = 'hitl_advance' and convert_from(job, 'UTF8') like '%' || $1 || '%'")
            .bind(runs[0].as_str())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (attempts, status.as_str()),
        (1, "Done"),
        "postponed, not retried"
    );
    let snap = persistence::load_snapshot(&db.pool, &runs[0])
        .await
        .unwrap()
        .unwrap();
    let outages: Vec<_> = snap
        .audit_log
        .iter()
        .filter(|e| e.action == hitl_orchestrator::domain::AuditAction::AgentUnreachable)
        .collect();
    assert_eq!(
        outages.len(),
        1,
        "one event when the outage began, not one per attempt"
    );
    assert_eq!(outages[0].details["lastError"], "agent unavailable");
    assert!(
        snap.run.agent_retry.is_none(),
        "cleared once the node completed"
    );
}

#[tokio::test]
async fn a_job_that_always_fails_ends_dead_and_its_command_failed_with_the_error() {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 1).await;
    // A real fault inside the database: every response insert raises.
    sqlx::raw_sql(
        "create function inject_fault() returns trigger language plpgsql as \
             $$ begin raise exception 'injected fault'; end $$; \
         create trigger inject_fault before insert on hitl_responses \
             for each row execute function inject_fault();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let ids = submit_resumes(&db.pool, &runs).await;

    let mut settings = fast_settings();
    settings.max_attempts = 3;
    settings.poll_interval = Duration::from_millis(20);
    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings);
    wait_for_count(
        &db.pool,
        "select count(*) from hitl_commands where status = 'failed'",
        1,
        Duration::from_secs(15),
    )
    .await;
    worker.stop().await;

    let command = persistence::find_command(&db.pool, &ids[0])
        .await
        .unwrap()
        .unwrap();
    let error = command.error.unwrap();
    assert!(
        error.contains("injected fault") && error.contains("3 attempts"),
        "{error}"
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("select status, attempts from apalis.jobs where job_type = 'hitl_resume'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("Killed", 3));
    let run = persistence::find_run(&db.pool, &persistence::RunRef::Id(runs[0].clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::AwaitingHitl,
        "nothing was half-applied"
    );
}

#[tokio::test]
async fn sigterm_during_a_drain_exits_within_the_grace_period_and_leaves_no_job_running() {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 1500).await;
    submit_resumes(&db.pool, &runs).await;
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HITL_SHUTDOWN_GRACE", "2s"),
        ("HITL_WORKER_CONCURRENCY", "4"),
        ("HITL_WORKER_BATCH_SIZE", "4"),
    ];
    let mut worker = crate::common::ServiceProcess::start_worker(&env, logs.path());
    wait_for_count(
        &db.pool,
        "select least(count(*), 50) from hitl_commands where status = 'succeeded'",
        50,
        Duration::from_secs(60),
    )
    .await;

    let signalled = Instant::now();
    assert!(
        worker.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10)),
        "{}",
        worker.log()
    );
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "grace 2 s plus release: {took:?}"
    );
    assert!(
        worker.child.try_wait().unwrap().unwrap().success(),
        "{}",
        worker.log()
    );
    let left = scalar(
        &db.pool,
        "select count(*) from apalis.jobs where status in ('Running', 'Queued')",
    )
    .await;
    assert_eq!(left, 0, "no job left claimed");
    let done = scalar(
        &db.pool,
        "select count(*) from hitl_commands where status = 'succeeded'",
    )
    .await;
    assert!(done < 1500, "the drain was interrupted ({done} applied)");

    // A new worker finishes the rest, and nothing is applied twice.
    let mut again = crate::common::ServiceProcess::start_worker(&env, logs.path());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1500,
        Duration::from_secs(120),
    )
    .await;
    assert!(again.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10)));
    assert_applied_exactly_once(&db.pool, 1500).await;
}

#[tokio::test]
async fn finished_job_rows_are_deleted_on_a_schedule_by_a_single_cleanup_job() {
    let db = crate::common::fresh_db().await;
    parked_runs(&db.pool, 5).await;
    assert!(
        scalar(
            &db.pool,
            "select count(*) from apalis.jobs where status = 'Done' and job_type <> 'hitl_cleanup'"
        )
        .await
            >= 5
    );

    let mut settings = fast_settings();
    settings.retain_done = Duration::ZERO;
    settings.cleanup_interval = Duration::from_millis(200);
    let a = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings.clone());
    let b = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings);
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where status = 'Done' and job_type <> 'hitl_cleanup'",
        0,
        Duration::from_secs(30),
    )
    .await;
    let active = scalar(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_cleanup' and status in ('Pending', 'Running', 'Failed')",
    )
    .await;
    assert_eq!(active, 1, "two workers, one cleanup scheduled");
    a.stop().await;
    b.stop().await;
}

/// Runs `plan` to its first pause with an in-process worker of `engine`; returns the run.
async fn run_to_first_pause(
    pool: &PgPool,
    engine: &Engine,
    plan: &serde_json::Value,
) -> hitl_orchestrator::domain::RunId {
    let runs = crate::common::queue_support::create_runs(pool, engine, 1, plan).await;
    let worker = RunningWorker::spawn(pool, engine.clone(), fast_settings());
    wait_for_count(
        pool,
        "select count(*) from orchestrator_runs where status = 'awaiting_hitl'",
        1,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;
    runs[0].clone()
}

#[tokio::test]
async fn a_resume_moves_the_run_through_local_nodes_to_its_next_pause_in_one_commit() {
    let db = crate::common::fresh_db().await;
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "First?", "responseTypes": ["approval", "rejection"] },
        { "id": "note", "type": "task", "capability": "set", "input": { "noted": true } },
        { "id": "again", "type": "hitl", "prompt": "Second?", "responseTypes": ["approval", "rejection"] },
    ] });
    let run = run_to_first_pause(&db.pool, &Engine::with_builtins(true), &plan).await;
    let advance_jobs = "select count(*) from apalis.jobs where job_type = 'hitl_advance'";
    let before = scalar(&db.pool, advance_jobs).await;
    let first: String =
        sqlx::query_scalar("select pending_request_id from orchestrator_runs where run_id = $1")
            .bind(&run)
            .fetch_one(&db.pool)
            .await
            .unwrap();

    submit_resumes(&db.pool, std::slice::from_ref(&run)).await;
    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from hitl_commands where status = 'succeeded'",
        1,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;

    let (status, pending, context): (String, String, serde_json::Value) = sqlx::query_as(
        "select status, pending_request_id, execution_context from orchestrator_runs where run_id = $1",
    )
    .bind(&run)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "awaiting_hitl", "paused at the second node");
    assert_ne!(pending, first);
    assert_eq!(context["noted"], true, "the local node ran");
    assert_eq!(
        scalar(&db.pool, advance_jobs).await,
        before,
        "no advancement job: the resume's own job moved the run on"
    );
    // resume, node_completed (review), node_completed (note), hitl_requested: one
    // transaction wrote them all (one `xmin`, and one `tx_id`; `created_at` is each
    // event's own time, as its hash covers it).
    let (events, transactions, writers): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct tx_id::text), count(distinct xmin::text) from run_audit_events \
         where run_id = $1 and run_version > (select run_version from run_audit_events \
             where run_id = $1 and action = 'resume') - 1",
    )
    .bind(&run)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((events, transactions, writers), (4, 1, 1));
}

#[tokio::test]
async fn a_resume_before_a_node_that_calls_out_commits_and_leaves_that_node_to_a_job() {
    let db = crate::common::fresh_db().await;
    let mut registry = CapabilityRegistry::with_builtins();
    let calls = Arc::new(Mutex::new(0u32));
    registry.register("remote", Arc::new(Remote(calls.clone())));
    let engine = Engine::new(registry, true);
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Go?", "responseTypes": ["approval", "rejection"] },
        { "id": "call", "type": "task", "capability": "remote" },
    ] });
    let runs = vec![run_to_first_pause(&db.pool, &engine, &plan).await];
    submit_resumes(&db.pool, &runs).await;
    let worker = RunningWorker::spawn(&db.pool, engine, fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;
    assert_eq!(*calls.lock().unwrap(), 1);
    // The resume's transaction checkpointed the HITL node and enqueued the job; the
    // remote node ran in that job, outside the resume's transaction.
    let resumed_in: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select created_at from run_audit_events where run_id = $1 and action = 'resume'",
    )
    .bind(&runs[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let completed_in: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select created_at from run_audit_events where run_id = $1 and action = 'run_completed'",
    )
    .bind(&runs[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_ne!(resumed_in, completed_in);
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from apalis.jobs where job_type = 'hitl_advance' and status = 'Done'"
        )
        .await,
        2,
        "the first advancement and the one after the resume"
    );
}

/// A capability that is not local (it would call out); counts its calls.
struct Remote(Arc<Mutex<u32>>);

impl Capability for Remote {
    fn call<'a>(
        &'a self,
        _call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            *self.0.lock().unwrap() += 1;
            Ok(CapabilityOutcome::Completed {
                merge: serde_json::Map::new(),
                runner_state: RunnerStateUpdate::Keep,
                notes: None,
            })
        })
    }
}

#[tokio::test]
async fn a_fault_in_the_inline_advancement_still_commits_the_resume_and_the_advancement_fails_alone()
 {
    // With a retry allowed (the first attempt advances inline and fails), and with none
    // (the worker then never advances inline).
    for max_attempts in [2, 1] {
        fault_in_the_advancement(max_attempts).await;
    }
}

async fn fault_in_the_advancement(max_attempts: i32) {
    let db = crate::common::fresh_db().await;
    let runs = parked_runs(&db.pool, 1).await;
    // A real fault inside the database, in the advancement's write only.
    sqlx::raw_sql(
        "create function inject_fault() returns trigger language plpgsql as \
             $$ begin if new.action = 'run_completed' then raise exception 'injected fault'; end if; \
                return new; end $$; \
         create trigger inject_fault before insert on run_audit_events \
             for each row execute function inject_fault();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut settings = fast_settings();
    settings.max_attempts = max_attempts;
    settings.backoff_base = Duration::from_millis(50);
    submit_resumes(&db.pool, &runs).await;
    let worker = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), settings);
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_advance' and status = 'Killed'",
        1,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;
    let (command, response, run): (String, i64, String) = sqlx::query_as(
        "select (select status from hitl_commands), (select count(*) from hitl_responses), \
                (select status from orchestrator_runs)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (command.as_str(), response, run.as_str()),
        ("succeeded", 1, "failed"),
        "max {max_attempts} attempts: the operator's answer stands; the dead advancement fails the run"
    );
    let reason: String = sqlx::query_scalar("select status_reason from orchestrator_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        reason.starts_with("the run could not be advanced: ") && reason.contains("injected fault"),
        "{reason}"
    );
    // Nothing starts the failure over: the sweep finds nothing to repair.
    let mut conn = db.pool.acquire().await.unwrap();
    let (stranded, _) = persistence::rehydrate::find_stranded(&mut conn, Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(stranded.is_empty(), "{stranded:?}");
    let error: String = sqlx::query_scalar(
        "select last_result->>'Err' from apalis.jobs where job_type = 'hitl_advance' and status = 'Killed'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(error.contains("injected fault"), "{error}");
}

#[tokio::test]
async fn a_claims_asynchronous_commit_does_not_leak_into_the_connections_later_work() {
    let db = crate::common::fresh_db().await;
    parked_runs(&db.pool, 1).await;
    let runs: Vec<hitl_orchestrator::domain::RunId> =
        sqlx::query_scalar("select run_id from orchestrator_runs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    submit_resumes(&db.pool, &runs).await;
    // One connection: the claim and the check below share it.
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    // The test cluster commits asynchronously everywhere; make this session durable.
    sqlx::query("set synchronous_commit = on")
        .execute(&single)
        .await
        .unwrap();
    queue::register_worker(&single, "w-async").await.unwrap();
    let claimed = queue::claim(&single, "w-async", &[ApplyResume::KIND], 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let setting: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&single)
        .await
        .unwrap();
    assert_eq!(
        setting, "on",
        "the async commit was the claim's transaction's alone"
    );
}

/// A kind this build does not register, as a newer version might add.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remind {
    note: String,
}

impl JobPayload for Remind {
    const KIND: &'static str = "test_remind";
}

/// The newer version's handler for it: counts its runs and completes the job.
struct RemindHandler(Arc<Mutex<Vec<String>>>);

impl Handler for RemindHandler {
    type Payload = Remind;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        payload: Remind,
    ) -> Result<Handled, JobError> {
        self.0.lock().unwrap().push(payload.note);
        let mut conn = ctx.pool().acquire().await?;
        Ok(
            if queue::complete(&mut conn, &claimed.id, ctx.worker_id()).await? {
                Handled::Done
            } else {
                Handled::LostClaim
            },
        )
    }
}

#[tokio::test]
async fn a_worker_leaves_a_job_of_a_kind_it_does_not_know_pending_for_one_that_does() {
    let db = crate::common::fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let remind = Remind {
        note: "from a newer version".into(),
    };
    queue::enqueue(&mut conn, &remind, None).await.unwrap();
    drop(conn);
    // A known job enqueued after it: once the old worker has run this one, it has
    // claimed past the unknown one, which is older.
    let runs = parked_runs(&db.pool, 1).await;
    submit_resumes(&db.pool, &runs).await;

    let old = RunningWorker::spawn(&db.pool, Engine::with_builtins(true), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from hitl_commands where status = 'succeeded'",
        1,
        Duration::from_secs(20),
    )
    .await;
    old.stop().await;
    let untouched = scalar(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'test_remind' \
         and status = 'Pending' and attempts = 0 and lock_by is null",
    )
    .await;
    assert_eq!(untouched, 1, "the old worker neither ran nor killed it");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let new = RunningWorker::start(
        Worker::new(
            db.pool.clone(),
            Engine::with_builtins(true),
            fast_settings(),
        )
        .with_handler(RemindHandler(seen.clone())),
    );
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'test_remind' and status = 'Done'",
        1,
        Duration::from_secs(20),
    )
    .await;
    new.stop().await;
    assert_eq!(*seen.lock().unwrap(), ["from a newer version"]);
}
