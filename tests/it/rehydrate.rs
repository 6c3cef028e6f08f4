//! Rehydration and faults, with real worker processes: parked runs survive a fresh start
//! untouched while stranded ones are continued; one rescan however many workers start; a
//! SIGKILLed worker's jobs move on; PostgreSQL restarting under load loses nothing; the
//! sweep repairs a run stranded while the system runs, and a quiet sweep writes nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::pooler::{PgBouncer, TRANSACTION_POOL};
use crate::common::queue_support::{
    RunningWorker, create_runs, fast_settings, scalar, seed_parked_runs, submit_resumes,
    unfinished_runs, wait_for_count,
};
use crate::common::{Route, ServiceProcess, TestDb, direct_route};
use hitl_orchestrator::db;
use hitl_orchestrator::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use hitl_orchestrator::engine::Engine;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Everything about parked runs that rehydration must not change.
async fn parked_digest(pool: &PgPool) -> Vec<(String, String, i64, Value, Option<String>, i64)> {
    sqlx::query_as(
        "select r.run_id, r.status, r.version, r.runner_metadata, r.pending_request_id, \
                (select count(*) from run_audit_events e where e.run_id = r.run_id) \
         from orchestrator_runs r where r.status = 'awaiting_hitl' order by r.run_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How many times each run id appears across all rehydration pages.
async fn paged_runs(pool: &PgPool) -> BTreeMap<String, usize> {
    let pages: Vec<Value> = sqlx::query_scalar(
        "select convert_from(job, 'UTF8')::jsonb -> 'runIds' from apalis.jobs where job_type = 'hitl_rehydrate'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut seen = BTreeMap::new();
    for id in pages.iter().flat_map(|p| p.as_array().unwrap()) {
        *seen.entry(id.as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn worker_env(url: &str) -> Route {
    worker_env_on(&direct_route(url))
}

/// Short worker timings, on `route`.
fn worker_env_on(route: &Route) -> Route {
    let mut env = route.clone();
    env.extend([
        ("HITL_WORKER_HEARTBEAT", "200ms".into()),
        ("HITL_WORKER_ORPHAN_TIMEOUT", "2s".into()),
        ("HITL_WORKER_POLL_INTERVAL", "200ms".into()),
    ]);
    env
}

fn start_worker(env: &[(&'static str, String)], dir: &std::path::Path) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::start_worker(&env, dir)
}

/// The worker id a `worker` process printed ("<id> running").
fn worker_id(p: &ServiceProcess) -> String {
    p.base_url.trim_end_matches(" running").to_owned()
}

#[tokio::test]
async fn after_a_fresh_start_parked_runs_stay_as_they_were_and_runs_whose_job_was_lost_complete() {
    let db = crate::common::fresh_db().await;
    let route = direct_route(&db.url);
    a_fresh_start_leaves_parked_runs_and_continues_lost_ones(&db, &route, 10_000).await;
}

/// A worker process reaching the database by `route`, started over `parked` parked runs
/// and 100 whose job was lost, leaves the first as they were and completes the others.
pub(crate) async fn a_fresh_start_leaves_parked_runs_and_continues_lost_ones(
    db: &TestDb,
    route: &Route,
    parked: i64,
) {
    seed_parked_runs(&db.pool, parked).await;
    let engine = Engine::with_builtins(true);
    let set = json!({ "nodes": [ { "id": "finish", "type": "task", "capability": "set", "input": { "done": true } } ] });
    create_runs(&db.pool, &engine, 100, &set).await;
    let lost = sqlx::query("delete from apalis.jobs where job_type = 'hitl_advance'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(lost.rows_affected(), 100);
    let before = parked_digest(&db.pool).await;
    assert_eq!(before.len() as i64, parked);

    let logs = tempfile::tempdir().unwrap();
    let mut worker = start_worker(&worker_env_on(route), logs.path());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        100,
        Duration::from_secs(120),
    )
    .await;
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type in ('hitl_rescan', 'hitl_rehydrate') and status <> 'Done'",
        0,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        worker.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)),
        "{}",
        worker.log()
    );

    assert_eq!(
        parked_digest(&db.pool).await,
        before,
        "parked runs unchanged"
    );
    assert_eq!(scalar(&db.pool, "select count(*) from orchestrator_runs where rehydrated_at is null and status = 'awaiting_hitl'").await, 0);
    let repairs = scalar(
        &db.pool,
        "select count(*) from run_audit_events where action = 'rehydrate' and details ->> 'repaired' = 'advancement'",
    )
    .await;
    assert_eq!(
        repairs, 100,
        "one audit event per repaired run, none for the parked ones"
    );
}

#[tokio::test]
async fn workers_starting_together_run_one_rescan_and_each_restart_rescans_without_duplicates() {
    let db = crate::common::fresh_db().await;
    seed_parked_runs(&db.pool, 2000).await;
    let runs: Vec<String> = unfinished_runs(&db.pool)
        .await
        .iter()
        .map(|r| r.to_string())
        .collect();
    let audit = scalar(&db.pool, "select count(*) from run_audit_events").await;
    let logs = tempfile::tempdir().unwrap();
    let env = worker_env(&db.url);

    // Started at once: each waits for its own ready line on its own thread.
    let mut three: Vec<ServiceProcess> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..3)
            .map(|_| s.spawn(|| start_worker(&env, logs.path())))
            .collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_rehydrate' and status = 'Done'",
        4,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from apalis.jobs where job_type = 'hitl_rescan'"
        )
        .await,
        1,
        "one rescan"
    );
    let paged = paged_runs(&db.pool).await;
    assert_eq!(
        paged.keys().cloned().collect::<Vec<_>>(),
        runs,
        "every unfinished run is paged"
    );
    assert!(
        paged.values().all(|&n| n == 1),
        "each run in exactly one page"
    );
    for w in &mut three {
        assert!(w.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    }

    for restart in 2..=3 {
        let mut w = start_worker(&env, logs.path());
        let sql =
            "select count(*) from apalis.jobs where job_type = 'hitl_rescan' and status = 'Done'";
        wait_for_count(&db.pool, sql, restart, Duration::from_secs(60)).await;
        let done = "select count(*) from apalis.jobs where job_type = 'hitl_rehydrate' and status = 'Done'";
        wait_for_count(&db.pool, done, 4 * restart, Duration::from_secs(60)).await;
        assert!(w.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
        let paged = paged_runs(&db.pool).await;
        assert!(
            paged.values().all(|&n| n == restart as usize),
            "restart {restart}: each run once per rescan"
        );
    }
    assert_eq!(
        scalar(&db.pool, "select count(*) from run_audit_events").await,
        audit,
        "nothing to repair, nothing written"
    );
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from apalis.jobs where job_type = 'hitl_advance'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_sigkilled_workers_jobs_are_taken_over_within_the_orphan_timeout_and_applied_once() {
    let db = crate::common::fresh_db().await;
    let route = direct_route(&db.url);
    a_sigkilled_workers_jobs_move_on_and_apply_once(&db, &route).await;
}

/// A worker process SIGKILLed mid-drain leaves its jobs to one started after it, within
/// the orphan timeout, and each of 1,000 resumes applies once; both reach the database
/// by `route`.
pub(crate) async fn a_sigkilled_workers_jobs_move_on_and_apply_once(db: &TestDb, route: &Route) {
    seed_parked_runs(&db.pool, 1000).await;
    submit_resumes(&db.pool, &unfinished_runs(&db.pool).await).await;
    let logs = tempfile::tempdir().unwrap();
    let env = worker_env_on(route);

    let mut doomed = start_worker(&env, logs.path());
    let doomed_id = worker_id(&doomed);
    wait_for_count(
        &db.pool,
        "select least(count(*), 100) from hitl_commands where status = 'succeeded'",
        100,
        Duration::from_secs(60),
    )
    .await;
    assert!(doomed.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5)));
    let killed_at = Instant::now();
    let stranded: i64 = sqlx::query_scalar(
        "select count(*) from apalis.jobs where lock_by = $1 and status = 'Running'",
    )
    .bind(&doomed_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let mut heir = start_worker(&env, logs.path());
    let sql = format!(
        "select count(*) from apalis.jobs where lock_by = '{doomed_id}' and status = 'Running'"
    );
    wait_for_count(&db.pool, &sql, 0, Duration::from_secs(2 + 8)).await;
    let took = killed_at.elapsed();
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1000,
        Duration::from_secs(120),
    )
    .await;
    assert!(heir.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    eprintln!("{stranded} jobs stranded by SIGKILL were taken over {took:?} after it");

    assert_eq!(
        scalar(&db.pool, "select count(*) from hitl_responses").await,
        1000
    );
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from run_audit_events where action = 'resume'"
        )
        .await,
        1000
    );
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from hitl_commands where status = 'succeeded'"
        )
        .await,
        1000
    );
}

#[tokio::test]
async fn workers_ride_out_an_immediate_postgresql_restart_under_load_and_every_command_ends() {
    workers_ride_out_a_postgresql_restart(None).await;
}

/// Two worker processes draining 1,000 resumes ride out an immediate PostgreSQL restart
/// and every command ends, applied once. With `pooler` (a test name) they reach it
/// through a PgBouncer in session mode, which must log in again to the restarted server;
/// `false` when PgBouncer is missing (see `pooler::binary_or_skip`).
pub(crate) async fn workers_ride_out_a_postgresql_restart(pooler: Option<&str>) -> bool {
    // This test restarts PostgreSQL, so it owns its cluster even when DATABASE_URL is set.
    let dir = tempfile::Builder::new()
        .prefix("hitl-restart-")
        .tempdir()
        .unwrap();
    let pg = EmbeddedPostgres::start(&EmbeddedOptions::new(dir.path().join("data"))).unwrap();
    db::ensure_database(&pg.url_for("postgres"), "hitl")
        .await
        .unwrap();
    let pool = db::lazy_pool(&pg.database_url(), db::PoolSettings::default()).unwrap();
    db::migrate(&pool).await.unwrap();
    seed_parked_runs(&pool, 1000).await;
    submit_resumes(&pool, &unfinished_runs(&pool).await).await;

    let bouncer = match pooler {
        Some(test) => {
            match PgBouncer::start(test, &pg.database_url(), "transaction", TRANSACTION_POOL) {
                Some(b) => Some(b),
                None => return false,
            }
        }
        None => None,
    };
    let env = match &bouncer {
        Some(b) => worker_env_on(&b.route(&pg.database_url())),
        None => worker_env(&pg.database_url()),
    };
    let mut workers: Vec<_> = (0..2).map(|_| start_worker(&env, dir.path())).collect();
    wait_for_count(
        &pool,
        "select least(count(*), 100) from hitl_commands where status = 'succeeded'",
        100,
        Duration::from_secs(60),
    )
    .await;
    pg.stop_immediately().unwrap();
    // about time: the database stays down for a second while the workers run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.restart_after_stop().unwrap();

    wait_for_count(
        &pool,
        "select count(*) from hitl_commands where status in ('succeeded', 'rejected', 'failed')",
        1000,
        Duration::from_secs(180),
    )
    .await;
    for w in &mut workers {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "the worker recovered without a restart: {}",
            w.log()
        );
        assert!(
            w.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)),
            "{}",
            w.log()
        );
    }
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from hitl_commands where status = 'succeeded'"
        )
        .await,
        1000
    );
    assert_eq!(
        scalar(&pool, "select count(*) from hitl_responses").await,
        1000
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from run_audit_events where action = 'resume'"
        )
        .await,
        1000
    );
    if let Some(b) = &bouncer {
        b.assert_carried("hitl", 1000).await;
    }
    pool.close().await;
    pg.stop().unwrap();
    true
}

#[tokio::test]
async fn the_sweep_repairs_a_run_stranded_while_the_system_runs_and_a_quiet_sweep_writes_nothing() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let mut settings = fast_settings();
    settings.sweep_interval = Duration::from_millis(200);
    settings.sweep_settle = Duration::ZERO;
    let worker = RunningWorker::spawn(&db.pool, engine.clone(), settings);
    // Let the start-up rescan finish first, so what follows is the sweep's to find.
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_rescan' and status = 'Done'",
        1,
        Duration::from_secs(30),
    )
    .await;

    // A run whose advancement job is lost before any worker saw it.
    let mut tx = db.pool.begin().await.unwrap();
    let set = json!({ "nodes": [ { "id": "finish", "type": "task", "capability": "set", "input": { "done": true } } ] });
    let run = engine
        .create_run(
            &mut tx,
            hitl_orchestrator::persistence::NewRun {
                brief: hitl_orchestrator::persistence::BriefInput::New {
                    title: "t".into(),
                    content: json!({}),
                },
                thread_id: None,
                plan: set,
                execution_context: json!({}),
                runner_metadata: json!({}),
                principal: None,
            },
        )
        .await
        .unwrap();
    sqlx::query("delete from apalis.jobs where metadata -> 'run_id' = $1")
        .bind(run.run_id.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;

    // A deadline whose expiry job is lost: re-armed, and it expires by its policy.
    let timed = json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "?", "responseTypes": ["approval"],
                                     "timeoutSeconds": 1, "onTimeout": "approve" } ] });
    create_runs(&db.pool, &engine, 1, &timed).await;
    wait_for_count(
        &db.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_expire'",
        1,
        Duration::from_secs(30),
    )
    .await;
    sqlx::query("delete from apalis.jobs where job_type = 'hitl_expire'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        2,
        Duration::from_secs(15),
    )
    .await;
    let repairs: Vec<String> = sqlx::query_scalar(
        "select details ->> 'repaired' from run_audit_events where action = 'rehydrate' and details ->> 'by' = 'sweep' order by event_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(repairs, vec!["advancement", "deadline"]);

    // Quiet now: several sweeps later, not one orchestrator row has been rewritten.
    wait_for_count(&db.pool, "select count(*) from apalis.jobs where status in ('Pending', 'Running') and job_type <> 'hitl_cleanup'", 0, Duration::from_secs(30)).await;
    let versions = "select coalesce(sum(xmin::text::bigint), 0)::bigint from orchestrator_runs";
    let before = (
        scalar(&db.pool, versions).await,
        scalar(&db.pool, "select count(*) from run_audit_events").await,
    );
    // about time: several sweep intervals pass on a quiet system.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = (
        scalar(&db.pool, versions).await,
        scalar(&db.pool, "select count(*) from run_audit_events").await,
    );
    worker.stop().await;
    assert_eq!(before, after, "a quiet sweep writes nothing");
}
