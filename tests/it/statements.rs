//! What a transition costs in statements, counted by `pg_stat_statements` on the test
//! cluster (loaded there by `start_ephemeral_cluster`): the API and the worker log in as
//! roles of their own, so each one's statements are told apart from the test's reads and
//! from other tests' databases.
//!
//! Issue 29's budget is 3 statements for the API and 4 for the worker (BEGIN and COMMIT
//! included), with signing (every test process signs) and notifications on; the
//! ceilings below are what the code does, so a statement added to a transition fails
//! here.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::api::{ADMIN, AppOptions, OPERATOR, TestApp, approval, review_plan};
use crate::common::pooler::PgBouncer;
use crate::common::queue_support::{RunningWorker, fast_settings};

const API_ROLE: &str = "hitl_probe_api";
const WORKER_ROLE: &str = "hitl_probe_worker";

/// The API's statements for one accepted resume: BEGIN, the one statement that looks up
/// the idempotency key, reads the run with its requests for the early check and writes
/// the command with its job, and COMMIT once the check passed.
const API_CEILING: i64 = 3;
/// The worker's statements for one resume that completes the run (review_plan: the
/// resume, then the last node's step and the run's end), without its share of the
/// claim: BEGIN, the locking read of the command, its run, the request's shape and the
/// chain head, the one write of the resume with the run's next steps and its end, COMMIT.
const WORKER_CEILING: i64 = 4;

/// Whether `pg_stat_statements` is loaded on the test server (it is on the embedded
/// one; a `DATABASE_URL` server may lack it).
async fn counting(pool: &PgPool) -> bool {
    let loaded: bool = sqlx::query_scalar(
        "select coalesce(current_setting('shared_preload_libraries', true), '') \
             like '%pg_stat_statements%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if !loaded {
        assert!(
            std::env::var_os("CI").is_none(),
            "pg_stat_statements is not loaded on the test server"
        );
        eprintln!(
            "NOT RUN: the statement budget needs pg_stat_statements in shared_preload_libraries"
        );
        return false;
    }
    sqlx::query("create extension if not exists pg_stat_statements")
        .execute(pool)
        .await
        .unwrap();
    true
}

/// Waits until the worker has nothing left to do now (its start-up jobs done too).
async fn quiet(pool: &PgPool) {
    crate::common::queue_support::wait_for_count(
        pool,
        "select count(*) from apalis.jobs where (status = 'Running' \
             or (status = 'Pending' and run_at < now() + interval '2 seconds')) \
           and job_type <> 'hitl_notify'",
        0,
        Duration::from_secs(30),
    )
    .await;
}

/// Forgets what `role` ran in this database.
async fn reset(pool: &PgPool, role: &str) {
    sqlx::query(
        "select pg_stat_statements_reset( \
             (select oid from pg_roles where rolname = $1), \
             (select oid from pg_database where datname = current_database()), 0::bigint)",
    )
    .bind(role)
    .execute(pool)
    .await
    .unwrap();
}

/// What `role` ran in this database since its reset: (query id and text, calls), the
/// claim of jobs left out (it is shared by the jobs of a batch), as are sqlx's type
/// look-ups (once per connection). The id, a hash of the
/// parsed statement, is what tells statements apart (the text kept is the first one
/// seen, its constants sometimes replaced by placeholders).
async fn ran(pool: &PgPool, role: &str) -> Vec<(String, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select queryid::text || ' ' || query, calls from pg_stat_statements s \
         where s.userid = (select oid from pg_roles where rolname = $1) \
           and s.dbid = (select oid from pg_database where datname = current_database()) \
         order by query",
    )
    .bind(role)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .filter(|(q, _)| !q.contains(" with async_commit as"))
        // sqlx's look-up of a type's id: once per connection, not per transition.
        .filter(|(q, _)| !q.contains(" SELECT pg_type.oid,"))
        .collect()
}

/// Every statement `role` ran in this database since its reset, claims included.
async fn ran_all(pool: &PgPool, role: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select queryid::text || ' ' || query, calls from pg_stat_statements s \
         where s.userid = (select oid from pg_roles where rolname = $1) \
           and s.dbid = (select oid from pg_database where datname = current_database()) \
         order by query",
    )
    .bind(role)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Calls of the statements whose text contains `part`.
fn calls_of(statements: &[(String, i64)], part: &str) -> i64 {
    statements
        .iter()
        .filter(|(q, _)| q.contains(part))
        .map(|(_, n)| n)
        .sum()
}

fn total(statements: &[(String, i64)]) -> i64 {
    statements.iter().map(|(_, n)| n).sum()
}

/// `statements` made the transition's write exactly once, within `ceiling` statements.
fn assert_one_write(statements: &[(String, i64)], ceiling: i64) {
    assert_eq!(
        calls_of(statements, "with run_write as"),
        1,
        "{statements:#?}"
    );
    assert!(total(statements) <= ceiling, "ran {statements:#?}");
}

/// Waits until run `run` has `status`, reading as the test's own user.
async fn wait_status(pool: &PgPool, run: &str, status: &str) {
    crate::common::queue_support::wait_for_count(
        pool,
        &format!(
            "select count(*) from orchestrator_runs where run_id = '{run}' and status = '{status}'"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
}

/// Waits until command `id` is final, reading as the test's own user.
async fn wait_final(pool: &PgPool, id: &str) {
    crate::common::queue_support::wait_for_count(
        pool,
        &format!(
            "select count(*) from hitl_commands where command_id = '{id}' \
             and status in ('succeeded', 'rejected', 'failed')"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
}

/// A worker whose heartbeat (and the orphan checks it runs) stays out of the window; its
/// idle polls are claims, which are left out of the count.
fn quiet_worker(pool: PgPool, app: &TestApp) -> RunningWorker {
    let mut settings = fast_settings();
    settings.heartbeat = Duration::from_secs(60);
    RunningWorker::spawn(&pool, app.engine().clone(), settings)
}

/// An app whose API runs as [`API_ROLE`], no workers of its own, with `pg_stat_statements`
/// counting, the notification channel `ops` wanting `events` (a `{…}` array literal),
/// and a quiet worker running as [`WORKER_ROLE`]; `None` where the module is not loaded.
async fn counted(events: &str) -> Option<(TestApp, RunningWorker)> {
    let app = TestApp::spawn_with(AppOptions {
        workers: false,
        service_role: Some(API_ROLE),
        ..AppOptions::default()
    })
    .await;
    if !counting(&app.pool).await {
        return None;
    }
    sqlx::query(
        "insert into notification_channels (name, format, events) values ('ops', 'json', $1::text[])",
    )
    .bind(events)
    .execute(&app.pool)
    .await
    .unwrap();
    let worker_pool = crate::common::pool_as(&app.db, WORKER_ROLE).await;
    let worker = quiet_worker(worker_pool, &app);
    Some((app, worker))
}

#[tokio::test]
async fn one_resume_costs_the_api_and_the_worker_a_bounded_number_of_statements() {
    // Notifications on: a channel wants the resume and the run's end.
    let Some((app, worker)) = counted("{resumed,run_completed}").await else {
        return;
    };
    let (run, request) = app.parked_with(review_plan()).await;

    quiet(&app.pool).await;
    reset(&app.pool, API_ROLE).await;
    reset(&app.pool, WORKER_ROLE).await;
    let accepted = app
        .post(
            "/api/hitl/resume",
            OPERATOR,
            &approval(&run, &request, "alice"),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let api = ran(&app.pool, API_ROLE).await;
    let command = accepted.body["commandId"].as_str().unwrap().to_owned();
    wait_final(&app.pool, &command).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;

    let status: String =
        sqlx::query_scalar("select status::text from orchestrator_runs where run_id = $1")
            .bind(&run)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "completed");
    let deliveries: i64 = sqlx::query_scalar("select count(*) from notification_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 2, "the resume and the run's end were told");
    eprintln!(
        "API: {} statements {api:#?}\nworker: {} statements {worker_ran:#?}",
        total(&api),
        total(&worker_ran)
    );
    assert!(total(&api) <= API_CEILING, "API ran {api:#?}");
    assert!(
        total(&worker_ran) <= WORKER_CEILING,
        "worker ran {worker_ran:#?}"
    );
    app.stop().await;
}

/// A remove is the same shape: the locking read, then one write denying the request,
/// cancelling the run and recording the event, the command's success and the job's
/// completion.
#[tokio::test]
async fn one_remove_costs_the_worker_one_read_and_one_write() {
    let Some((app, worker)) = counted("{removed}").await else {
        return;
    };
    let (run, request) = app.parked_with(review_plan()).await;
    quiet(&app.pool).await;
    reset(&app.pool, API_ROLE).await;
    reset(&app.pool, WORKER_ROLE).await;
    let body = json!({ "runId": run, "reason": "not needed", "operator": { "id": "alice" } });
    let accepted = app.post("/api/hitl/remove", OPERATOR, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let api = ran(&app.pool, API_ROLE).await;
    wait_final(&app.pool, accepted.body["commandId"].as_str().unwrap()).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let (status, request_status, told): (String, String, i64) = sqlx::query_as(
        "select (select status::text from orchestrator_runs where run_id = $1), \
             (select status from hitl_requests where request_id = $2), \
             (select count(*) from notification_deliveries where event = 'removed')",
    )
    .bind(&run)
    .bind(&request)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), request_status.as_str(), told),
        ("cancelled", "denied", 1)
    );
    assert!(total(&api) <= API_CEILING, "API ran {api:#?}");
    assert!(
        total(&worker_ran) <= WORKER_CEILING,
        "worker ran {worker_ran:#?}"
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

/// An expiry too: the locking read of the request with its run, then one write
/// expiring the request, moving the run on through its last node to its end, with the
/// events and the job's completion.
#[tokio::test]
async fn one_expiry_costs_the_worker_one_read_and_one_write() {
    let Some((app, worker)) = counted("{expired,run_completed}").await else {
        return;
    };
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Ship?", "responseTypes": ["approval"],
          "timeoutSeconds": 3600, "onTimeout": "approve" },
        { "id": "ship", "type": "task", "capability": "set", "input": { "shipped": true } }
    ] });
    let (run, request) = app.parked_with(plan).await;
    quiet(&app.pool).await;
    reset(&app.pool, WORKER_ROLE).await;
    // The deadline is now: the worker's next poll claims the expiry.
    sqlx::query("update hitl_requests set expires_at = now() where request_id = $1")
        .bind(&request)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "update apalis.jobs set run_at = now() where job_type = 'hitl_expire' \
         and convert_from(job, 'UTF8')::jsonb ->> 'requestId' = $1",
    )
    .bind(&request)
    .execute(&app.pool)
    .await
    .unwrap();
    wait_status(&app.pool, &run, "completed").await;
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_expire' and status <> 'Done'",
        0,
        Duration::from_secs(30),
    )
    .await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let (request_status, told): (String, i64) = sqlx::query_as(
        "select (select status from hitl_requests where request_id = $1), \
             (select count(*) from notification_deliveries)",
    )
    .bind(&request)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((request_status.as_str(), told), ("expired", 2));
    assert!(
        total(&worker_ran) <= WORKER_CEILING,
        "worker ran {worker_ran:#?}"
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

/// A retry of a failed run likewise: the locking read, then one write putting the run
/// back to running and re-entering its node — here a HITL node whose rejection failed
/// the run, so the write raises its request again.
#[tokio::test]
async fn one_retry_costs_the_worker_one_read_and_one_write() {
    let Some((app, worker)) = counted("{run_failed}").await else {
        return;
    };
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Ship?",
          "responseTypes": ["approval", "rejection"], "onRejection": "fail" }
    ] });
    let (run, request) = app.parked_with(plan).await;
    let rejection = json!({ "runId": run, "requestId": request,
        "responses": [ { "responseType": "rejection", "freeformText": "not yet" } ],
        "operator": { "id": "alice" } });
    let rejected = app.post("/api/hitl/resume", OPERATOR, &rejection).await;
    assert_eq!(rejected.status, 202, "{rejected:?}");
    wait_status(&app.pool, &run, "failed").await;
    quiet(&app.pool).await;
    reset(&app.pool, WORKER_ROLE).await;
    let body = json!({ "operator": { "id": "alice" }, "note": "try again" });
    let accepted = app
        .post(&format!("/api/runs/{run}/retry"), OPERATOR, &body)
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    wait_final(&app.pool, accepted.body["commandId"].as_str().unwrap()).await;
    wait_status(&app.pool, &run, "awaiting_hitl").await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let (reason, pending, attempts): (Option<String>, i64, Option<i64>) = sqlx::query_as(
        "select status_reason, \
             (select count(*) from hitl_requests q where q.run_id = o.run_id \
              and q.status = 'pending'), \
             (runner_metadata -> 'nodeAttempts' ->> 'review')::bigint \
         from orchestrator_runs o where run_id = $1",
    )
    .bind(&run)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (reason, pending),
        (None, 1),
        "the run waits on a new request"
    );
    assert!(attempts.is_some_and(|n| n >= 2), "{attempts:?}");
    assert!(
        total(&worker_ran) <= WORKER_CEILING,
        "worker ran {worker_ran:#?}"
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

/// The API's statements for a claim or a release, which it writes itself (no command):
/// BEGIN, the locking read of the request with its run and chain head, the one write of
/// the claim with its event and deliveries, COMMIT.
const CLAIM_CEILING: i64 = 4;

/// A claim, and its release, each cost the API one locking read and one write.
#[tokio::test]
async fn a_claim_and_its_release_each_cost_the_api_one_read_and_one_write() {
    let Some((app, worker)) = counted("{request_claimed,request_released}").await else {
        return;
    };
    let (run, request) = app.parked_with(review_plan()).await;
    quiet(&app.pool).await;
    let body = json!({ "requestId": request, "operator": { "id": "alice" } });
    let mut costs = Vec::new();
    for path in ["/api/hitl/claim", "/api/hitl/unclaim"] {
        reset(&app.pool, API_ROLE).await;
        let reply = app.post(path, OPERATOR, &body).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        costs.push((path, ran(&app.pool, API_ROLE).await));
    }
    worker.stop().await;
    let (claimed, events, told): (Option<String>, Vec<String>, i64) = sqlx::query_as(
        "select (select claimed_by::text from hitl_requests where request_id = $2), \
             (select array_agg(action order by run_version) from run_audit_events \
              where run_id = $1 and action in ('request_claimed', 'request_released')), \
             (select count(*) from notification_deliveries)",
    )
    .bind(&run)
    .bind(&request)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(claimed, None, "released");
    assert_eq!(events, ["request_claimed", "request_released"]);
    assert_eq!(told, 2, "the claim and the release were told");
    for (path, api) in &costs {
        assert!(total(api) <= CLAIM_CEILING, "{path}: the API ran {api:#?}");
        assert_eq!(
            calls_of(api, "with run_write as"),
            1,
            "{path}: one write {api:#?}"
        );
    }
    app.assert_audit_intact().await;
    app.stop().await;
}

/// An approval short of the number a request needs: the locking read (which brings
/// the approvals counted so far), then one write counting it, with its event, the
/// command's success and the job's completion; the run keeps waiting.
#[tokio::test]
async fn an_approval_short_of_the_number_costs_the_worker_one_read_and_one_write() {
    let Some((app, worker)) = counted("{approval_recorded}").await else {
        return;
    };
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Pay?",
          "responseTypes": ["approval", "rejection"], "approvals": { "required": 2 } },
        { "id": "pay", "type": "task", "capability": "set", "input": { "paid": true } } ] });
    let (run, request) = app.parked_with(plan).await;
    quiet(&app.pool).await;
    reset(&app.pool, WORKER_ROLE).await;
    let accepted = app
        .post(
            "/api/hitl/resume",
            OPERATOR,
            &approval(&run, &request, "alice"),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let command = accepted.body["commandId"].as_str().unwrap().to_owned();
    wait_final(&app.pool, &command).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let (status, approvals, outcome, told): (String, i64, Value, i64) = sqlx::query_as(
        "select (select status::text from orchestrator_runs where run_id = $1), \
             (select count(*) from hitl_approvals where request_id = $2), \
             (select outcome from hitl_commands where command_id = $3), \
             (select count(*) from notification_deliveries where event = 'approval_recorded')",
    )
    .bind(&run)
    .bind(&request)
    .bind(&command)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), approvals, told), ("awaiting_hitl", 1, 1));
    assert_eq!(outcome["approvals"]["have"], 1, "{outcome}");
    assert_eq!(outcome["run"]["pendingRequestId"], request.as_str());
    assert_one_write(&worker_ran, WORKER_CEILING);
    app.assert_audit_intact().await;
    app.stop().await;
}

/// The API's statements for creating a run: BEGIN, the one write of the brief, the run,
/// its first event with its deliveries and its advancement job, COMMIT.
const CREATE_CEILING: i64 = 3;

/// Creating a run costs the API one write; its advancement through a local node to its
/// first pause costs the worker one read (no lock) and one write, which completes the
/// job too.
#[tokio::test]
async fn creating_a_run_costs_the_api_one_write_and_its_advancement_one_read_and_one_write() {
    let Some((app, worker)) = counted("{run_created,request_raised}").await else {
        return;
    };
    // A first run, so that the worker's start-up jobs (rescan, rehydration, clean-up)
    // are behind it.
    app.parked_with(review_plan()).await;
    quiet(&app.pool).await;
    reset(&app.pool, API_ROLE).await;
    reset(&app.pool, WORKER_ROLE).await;
    let plan = json!({ "nodes": [
        { "id": "draft", "type": "task", "capability": "set", "input": { "drafted": true } },
        { "id": "review", "type": "hitl", "prompt": "Ship?", "responseTypes": ["approval"] } ] });
    let body = json!({ "brief": { "title": "Launch", "content": { "text": "draft" } },
                       "plan": plan });
    let created = app
        .post("/api/runs", crate::common::api::SUBMITTER, &body)
        .await;
    assert_eq!(created.status, 202, "{created:?}");
    let api = ran(&app.pool, API_ROLE).await;
    let run = created.body["runId"].as_str().unwrap().to_owned();
    wait_status(&app.pool, &run, "awaiting_hitl").await;
    quiet(&app.pool).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let (events, told, undone): (Vec<String>, i64, i64) = sqlx::query_as(
        "select (select array_agg(action order by run_version) from run_audit_events \
                 where run_id = $1), \
             (select count(*) from notification_deliveries where run_id = $1), \
             (select count(*) from apalis.jobs where job_type = 'hitl_advance' \
              and status <> 'Done')",
    )
    .bind(&run)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "run_created",
            "run_started",
            "node_completed",
            "hitl_requested"
        ]
    );
    assert_eq!(
        (told, undone),
        (2, 0),
        "told of its creation and its request"
    );
    assert!(total(&api) <= CREATE_CEILING, "API ran {api:#?}");
    assert_one_write(&worker_ran, WORKER_CEILING);
    app.assert_audit_intact().await;
    app.stop().await;
}

/// A resume whose run goes on to a request with a deadline, a reminder and an escalation
/// costs the worker no more than one that completes the run: the request's expiry job,
/// the deadline notice its channel wants, the reminder and the escalation are pushed by
/// the resume's one write.
#[tokio::test]
async fn a_resume_that_raises_a_request_with_a_deadline_and_follow_ups_is_still_one_write() {
    let Some((app, worker)) = counted("{resumed}").await else {
        return;
    };
    sqlx::query(
        "insert into notification_channels (name, format, events, expiring_notice_seconds) \
         values ('soon', 'json', '{request_expiring}', 60)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Ship?", "responseTypes": ["approval"] },
        { "id": "sign", "type": "hitl", "prompt": "Sign?", "responseTypes": ["approval"],
          "timeoutSeconds": 3600, "onTimeout": "reject", "remindEverySeconds": 600,
          "escalation": [ { "afterSeconds": 1200, "addAssignees": { "groups": ["leads"] } } ] } ] });
    let (run, request) = app.parked_with(plan).await;
    quiet(&app.pool).await;
    reset(&app.pool, WORKER_ROLE).await;
    let body = json!({ "runId": run, "requestId": request,
                       "responses": [ { "responseType": "approval", "approved": true } ],
                       "operator": { "id": "op" } });
    let accepted = app.post("/api/hitl/resume", OPERATOR, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    wait_final(&app.pool, accepted.body["commandId"].as_str().unwrap()).await;
    quiet(&app.pool).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let next: String = sqlx::query_scalar(
        "select pending_request_id from orchestrator_runs where run_id = $1 and status = 'awaiting_hitl'",
    )
    .bind(&run)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // Each job due at its time (whole seconds), acting on the new request.
    let jobs: Vec<(String, String, f64)> = sqlx::query_as(
        "select j.job_type, convert_from(j.job, 'UTF8'), \
             extract(epoch from j.run_at - q.created_at)::float8 \
         from apalis.jobs j, hitl_requests q \
         where q.request_id = $1 and j.job_type in ('hitl_expire', 'hitl_expiring', \
               'hitl_remind', 'hitl_escalate') \
           and convert_from(j.job, 'UTF8')::jsonb ->> 'requestId' = q.request_id \
           and (j.job_type not in ('hitl_expire', 'hitl_expiring') \
                or j.metadata -> 'request_id' = q.request_id) \
         order by j.run_at",
    )
    .bind(&next)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = jobs.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "hitl_remind",
            "hitl_escalate",
            "hitl_expiring",
            "hitl_expire"
        ],
        "{jobs:#?}"
    );
    for ((kind, _, after), due) in jobs.iter().zip([600.0, 1200.0, 3540.0, 3600.0]) {
        assert!(
            (after - due).abs() < 3.0,
            "{kind} due {after} s after, not {due}"
        );
    }
    let notice: Value = serde_json::from_str(&jobs[2].1).unwrap();
    assert_eq!(notice, json!({ "requestId": next, "noticeSeconds": 60 }));
    assert_one_write(&worker_ran, WORKER_CEILING);
    app.stop().await;
}

/// An app as [`counted`] makes it (no channel), whose engine calls `agent` over HTTP,
/// with the agent's URL; `None` where `pg_stat_statements` is not loaded.
async fn with_agent(
    agent: std::sync::Arc<crate::agent_faults::RawAgent>,
) -> Option<(TestApp, RunningWorker, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = crate::agent_faults::serve(listener, agent);
    let app = TestApp::spawn_with(AppOptions {
        workers: false,
        service_role: Some(API_ROLE),
        engine: crate::agent_faults::webhook_engine(&url, 1 << 20, None),
        ..AppOptions::default()
    })
    .await;
    if !counting(&app.pool).await {
        return None;
    }
    let worker_pool = crate::common::pool_as(&app.db, WORKER_ROLE).await;
    let worker = quiet_worker(worker_pool, &app);
    Some((app, worker, url))
}

/// A resume of a calling node's question, where the agent keeps a runner state: the
/// resume's job (one read and one write) defers to the advancement job, which reads the
/// run with the node's runner state in its one read, calls the agent with it, and
/// writes the node's end with its new runner state and the run's end in one write.
#[tokio::test]
async fn a_calling_nodes_runner_state_rides_in_the_advancement_jobs_one_read_and_one_write() {
    let agent = crate::agent_faults::raw_agent(|body, _| {
        if body["responses"].is_null() {
            crate::agent_faults::reply(
                200,
                json!({ "status": "interrupted", "runnerState": { "turn": 1 },
                        "request": { "prompt": "Send?", "responseTypes": ["approval"] } })
                .to_string(),
            )
        } else {
            crate::agent_faults::reply(
                200,
                json!({ "status": "completed", "output": { "sent": true },
                        "runnerState": { "turn": 2 } })
                .to_string(),
            )
        }
    });
    let Some((app, worker, url)) = with_agent(agent.clone()).await else {
        return;
    };
    let plan = json!({ "nodes": [ { "id": "mail", "type": "task", "capability": "agent.webhook",
                                    "config": { "url": url } } ] });
    let (run, request) = app.parked_with(plan).await;
    quiet(&app.pool).await;
    reset(&app.pool, WORKER_ROLE).await;
    let body = json!({ "runId": run, "requestId": request,
                       "responses": [ { "responseType": "approval", "approved": true } ],
                       "operator": { "id": "op" } });
    let accepted = app.post("/api/hitl/resume", OPERATOR, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    wait_status(&app.pool, &run, "completed").await;
    quiet(&app.pool).await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    let calls = agent.calls();
    assert_eq!(calls.len(), 2, "asked, then answered");
    assert_eq!(
        calls[1].body["runnerState"],
        json!({ "turn": 1 }),
        "the state it kept"
    );
    let stored: String = sqlx::query_scalar(
        "select state from run_runner_states where run_id = $1 and node_id = 'mail'",
    )
    .bind(&run)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap(),
        json!({ "turn": 2 })
    );
    let apart: Vec<_> = worker_ran
        .iter()
        .filter(|(q, _)| {
            q.contains("run_runner_states")
                && !q.contains(" with run_write as")
                && !q.contains(" as runner_states from orchestrator_runs")
        })
        .collect();
    assert!(
        apart.is_empty(),
        "runner states only in the job's read and the write: {apart:#?}"
    );
    assert_eq!(calls_of(&worker_ran, " as runner_states from"), 1);
    // The resume's job (BEGIN, read, write, COMMIT), then the advancement job's read and
    // its one write in BEGIN/COMMIT: nothing to write before the call.
    assert!(
        total(&worker_ran) <= WORKER_CEILING + 4,
        "worker ran {worker_ran:#?}"
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

/// An agent that asks about `n` tool calls at once, then completes.
fn agent_of(n: usize) -> std::sync::Arc<crate::agent_faults::RawAgent> {
    crate::agent_faults::raw_agent(move |body, _| {
        if body["responses"].is_null() {
            let items: Vec<Value> = (0..n)
                .map(|i| {
                    json!({ "itemId": format!("call_{i}"),
                                 "tool": { "name": "t", "arguments": { "i": i } } })
                })
                .collect();
            crate::agent_faults::reply(
                200,
                json!({ "status": "interrupted", "request": { "prompt": "?", "items": items } })
                    .to_string(),
            )
        } else {
            crate::agent_faults::completed(json!({ "n": n }))
        }
    })
}

/// The statements (query ids) the API and the worker ran for one resume of `n` items.
async fn texts_for(n: usize) -> (Vec<String>, Vec<String>) {
    let (app, worker, url) = with_agent(agent_of(n))
        .await
        .expect("pg_stat_statements is loaded");
    let plan = json!({ "nodes": [ { "id": "tools", "type": "task", "capability": "agent.webhook",
                                    "config": { "url": url } } ] });
    let (run, request) = app.parked_with(plan).await;
    quiet(&app.pool).await;
    reset(&app.pool, API_ROLE).await;
    reset(&app.pool, WORKER_ROLE).await;
    let responses: Vec<Value> = (0..n)
        .map(|i| json!({ "itemId": format!("call_{i}"), "responseType": "approval", "approved": true }))
        .collect();
    let body = json!({ "runId": run, "requestId": request, "responses": responses,
                       "operator": { "id": "op" } });
    let accepted = app.post("/api/hitl/resume", OPERATOR, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let api = ran(&app.pool, API_ROLE).await;
    wait_final(&app.pool, accepted.body["commandId"].as_str().unwrap()).await;
    wait_status(&app.pool, &run, "completed").await;
    let worker_ran = ran(&app.pool, WORKER_ROLE).await;
    worker.stop().await;
    app.stop().await;
    // The query ids: the same statement however its text was kept. Left out: the read of
    // the chain head a write falls back on when the head its read brought is no longer
    // the stored one (a transition committed while the read waited for the run's lock):
    // it depends on timing, not on the number of answers.
    let texts = |s: Vec<(String, i64)>| {
        s.into_iter()
            .filter(|(q, _)| !is_guess_fallback(q))
            .map(|(q, _)| q.split_once(' ').map_or(q.clone(), |(id, _)| id.to_owned()))
            .collect::<Vec<_>>()
    };
    (texts(api), texts(worker_ran))
}

/// Whether `query` is the read of the chain head a write falls back on
/// (`audit::stored_head`).
fn is_guess_fallback(query: &str) -> bool {
    query.contains(" select hash from run_audit_events where run_id = $1 order by")
}

#[tokio::test]
async fn the_sql_of_a_resume_is_the_same_for_one_answer_and_for_ten() {
    let probe = TestApp::spawn_with(AppOptions {
        workers: false,
        ..AppOptions::default()
    })
    .await;
    if !counting(&probe.pool).await {
        return;
    }
    probe.stop().await;
    let one = texts_for(1).await;
    let ten = texts_for(10).await;
    let differ = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|q| !b.contains(q))
            .map(|q| format!("only for one: {q}"))
            .chain(
                b.iter()
                    .filter(|q| !a.contains(q))
                    .map(|q| format!("only for ten: {q}")),
            )
            .collect()
    };
    assert_eq!(
        differ(&one.0, &ten.0),
        Vec::<String>::new(),
        "the API's statements"
    );
    assert_eq!(
        differ(&one.1, &ten.1),
        Vec::<String>::new(),
        "the worker's statements"
    );
}

/// The budget above through PgBouncer 1.18 in transaction mode, which keeps no prepared
/// statements: the service's statements are unnamed there and each runs inside a
/// transaction (`db::statements`). An `api` and a `worker` process, each through a
/// PgBouncer of its own logging in upstream as the role its statements are counted
/// under, with two server connections for all of a process's clients.
#[tokio::test]
async fn through_a_transaction_pooler_a_resume_stays_within_the_budget_with_unnamed_statements() {
    let test = "statements::through_a_transaction_pooler_a_resume_stays_within_the_budget_with_unnamed_statements";
    let db = crate::common::fresh_db().await;
    if !counting(&db.pool).await {
        return;
    }
    let api_url = crate::common::url_as(&db, API_ROLE).await;
    let worker_url = crate::common::url_as(&db, WORKER_ROLE).await;
    let Some(api_bouncer) = PgBouncer::start(test, &api_url, "transaction", 2) else {
        return;
    };
    let Some(worker_bouncer) = PgBouncer::start(test, &worker_url, "transaction", 2) else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let api_route = api_bouncer.route(&api_url);
    let api_env = crate::common::env_with(&api_route, &[("API_KEY", ADMIN)]);
    let worker_route = worker_bouncer.route(&worker_url);
    // No heartbeat (nor the orphan check it runs) in the window; its idle polls are
    // claims, left out below.
    let worker_env = crate::common::env_with(
        &worker_route,
        &[
            ("HITL_WORKER_HEARTBEAT", "60s"),
            ("HITL_WORKER_ORPHAN_TIMEOUT", "600s"),
        ],
    );
    let api = crate::common::ServiceProcess::start(&["api"], &api_env, logs.path());
    let worker = crate::common::ServiceProcess::start_worker(&worker_env, logs.path());
    let client = crate::common::http_client();
    let created: Value = client
        .post(format!("{}/api/runs", api.base_url))
        .bearer_auth(ADMIN)
        .json(&json!({ "brief": { "title": "counted" }, "plan": review_plan() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["runId"].as_str().unwrap().to_owned();
    wait_status(&db.pool, &run, "awaiting_hitl").await;
    let request: String =
        sqlx::query_scalar("select pending_request_id from orchestrator_runs where run_id = $1")
            .bind(&run)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query(
        "insert into notification_channels (name, format, events) \
         values ('ops', 'json', '{resumed,run_completed}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    quiet(&db.pool).await;
    reset(&db.pool, API_ROLE).await;
    reset(&db.pool, WORKER_ROLE).await;
    let accepted = client
        .post(format!("{}/api/hitl/resume", api.base_url))
        .bearer_auth(ADMIN)
        .json(&approval(&run, &request, "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{}", api.log());
    let accepted: Value = accepted.json().await.unwrap();
    let api_ran = ran_all(&db.pool, API_ROLE).await;
    wait_final(&db.pool, accepted["commandId"].as_str().unwrap()).await;
    wait_status(&db.pool, &run, "completed").await;
    let worker_ran = ran_all(&db.pool, WORKER_ROLE).await;
    let deliveries: i64 = sqlx::query_scalar("select count(*) from notification_deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 2, "the resume and the run's end were told");
    drop((api, worker));

    eprintln!("through PgBouncer, API: {api_ran:#?}\nworker: {worker_ran:#?}");
    // The API's one statement, in its one transaction.
    assert_eq!(calls_of(&api_ran, " BEGIN"), 1, "{api_ran:#?}");
    assert_eq!(calls_of(&api_ran, " COMMIT"), 1, "{api_ran:#?}");
    let api_total = total(&api_ran) - calls_of(&api_ran, " SELECT pg_type.oid,");
    assert!(api_total <= API_CEILING, "API ran {api_ran:#?}");
    // Each claim is a transaction of its own here: it, its BEGIN and its COMMIT are the
    // claim's share, left out as above.
    let claims = calls_of(&worker_ran, " with async_commit as");
    let type_lookups = calls_of(&worker_ran, " SELECT pg_type.oid,");
    let worker_total = total(&worker_ran) - 3 * claims - type_lookups;
    assert!(
        worker_total <= WORKER_CEILING,
        "worker ran {worker_total} beside {claims} claims: {worker_ran:#?}"
    );
    api_bouncer.assert_carried(&db.name, 2).await;
    worker_bouncer.assert_carried(&db.name, 2).await;
}
