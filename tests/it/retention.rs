//! The SQL of docs/SCALING.md, run as written (its psql variables filled in) on
//! databases the service wrote: retention removes whole finished runs and nothing else,
//! and every chain left still verifies; expiry jobs of settled requests go, live ones
//! stay; the audit table's partitioning cutover leaves a service that works on it, and a
//! partition whose runs are done drops whole. A schema change that breaks a statement
//! (a new table referencing runs, a renamed index) fails here instead of in production.

use std::path::Path;
use std::time::Duration;

use hitl_orchestrator::domain::RunId;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::persistence::audit;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::queue_support::{
    RunningWorker, create_runs, fast_settings, scalar, submit_resumes, wait_for_count,
};

/// The ```sql block after `<!-- sql: {marker} ` in docs/SCALING.md.
fn block(marker: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SCALING.md"))
            .unwrap();
    let start = doc
        .find(&format!("<!-- sql: {marker} "))
        .unwrap_or_else(|| panic!("docs/SCALING.md has the block {marker}"));
    let rest = &doc[start..];
    let open = rest.find("```sql\n").unwrap() + "```sql\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].to_owned()
}

/// `sql` with psql's `:'name'` (a quoted literal) and `:name` (as is) filled in.
fn fill(sql: &str, vars: &[(&str, &str)]) -> String {
    let mut sql = sql.to_owned();
    for (name, value) in vars {
        sql = sql.replace(
            &format!(":'{name}'"),
            &format!("'{}'", value.replace('\'', "''")),
        );
        let bare = format!(":{name}");
        let mut out = String::new();
        let mut rest = sql.as_str();
        while let Some(at) = rest.find(&bare) {
            let before = rest[..at].chars().last().or(out.chars().last());
            let after = rest[at + bare.len()..].chars().next();
            let whole = before != Some(':')
                && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            out.push_str(&rest[..at]);
            out.push_str(if whole { value } else { &bare });
            rest = &rest[at + bare.len()..];
        }
        out.push_str(rest);
        sql = out;
    }
    assert!(
        !sql.contains(":'") && !sql.lines().any(|l| l.trim_start().starts_with('\\')),
        "every psql variable is filled in:\n{sql}"
    );
    sql
}

/// Runs `sql` statement by statement on one connection, as psql does (`create index
/// concurrently` cannot share a transaction with anything); returns rows affected.
async fn run(pool: &PgPool, sql: &str) -> Vec<u64> {
    let mut conn = pool.acquire().await.unwrap();
    let mut affected = Vec::new();
    for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        affected.push(done.rows_affected());
    }
    affected
}

/// A one-node plan whose request has a deadline a day away, as the demo plan's has.
fn plan_with_deadline() -> Value {
    json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "Approve?",
                         "responseTypes": ["approval", "rejection"],
                         "timeoutSeconds": 86400, "onTimeout": "reject" } ] })
}

/// `n` runs parked at their request, by an in-process worker.
async fn park(pool: &PgPool, n: usize) -> Vec<RunId> {
    let engine = Engine::with_builtins(true);
    let ids = create_runs(pool, &engine, n, &plan_with_deadline()).await;
    let worker = RunningWorker::spawn(pool, engine, fast_settings());
    for run in &ids {
        wait_for_count(
            pool,
            &format!("select count(*) from orchestrator_runs where run_id = '{run}' and status = 'awaiting_hitl'"),
            1,
            Duration::from_secs(60),
        )
        .await;
    }
    worker.stop().await;
    ids
}

/// Resumes `runs` and lets an in-process worker complete them.
async fn complete(pool: &PgPool, runs: &[RunId]) {
    submit_resumes(pool, runs).await;
    let worker = RunningWorker::spawn(pool, Engine::with_builtins(true), fast_settings());
    for run in runs {
        wait_for_count(
            pool,
            &format!("select count(*) from orchestrator_runs where run_id = '{run}' and status = 'completed'"),
            1,
            Duration::from_secs(60),
        )
        .await;
    }
    worker.stop().await;
}

/// Rows anywhere that belong to `run`.
async fn rows_of(pool: &PgPool, run: &RunId) -> i64 {
    scalar(
        pool,
        &format!(
            "select (select count(*) from orchestrator_runs where run_id = '{run}') \
                  + (select count(*) from hitl_requests where run_id = '{run}') \
                  + (select count(*) from hitl_responses where run_id = '{run}') \
                  + (select count(*) from hitl_commands where run_id = '{run}') \
                  + (select count(*) from run_audit_events where run_id = '{run}') \
                  + (select count(*) from run_runner_states where run_id = '{run}') \
                  + (select count(*) from apalis.jobs j join hitl_requests q \
                       on j.metadata -> 'request_id' = q.request_id where q.run_id = '{run}')"
        ),
    )
    .await
}

async fn assert_every_chain_verifies(pool: &PgPool) -> usize {
    let mut conn = pool.acquire().await.unwrap();
    let (verdicts, next) = audit::verify_page(&mut conn, None, 1000).await.unwrap();
    assert!(next.is_none());
    for v in &verdicts {
        assert!(v.intact, "{v:?}");
    }
    verdicts.len()
}

async fn last_event(pool: &PgPool) -> String {
    scalar(
        pool,
        "select coalesce(max(event_id), 0) from run_audit_events",
    )
    .await
    .to_string()
}

#[tokio::test]
async fn retention_removes_whole_finished_runs_and_leaves_every_other_chain_verifying() {
    let db = crate::common::fresh_db().await;
    let runs = park(&db.pool, 6).await;
    let (done, waiting) = runs.split_at(4);
    complete(&db.pool, done).await;
    let expiries =
        "select count(*) from apalis.jobs where job_type = 'hitl_expire' and status = 'Pending'";
    assert_eq!(scalar(&db.pool, expiries).await, 6);

    // The deadlines of settled requests can no longer do anything; the live ones stay.
    let deleted = run(&db.pool, &block("expired-deadlines")).await;
    assert_eq!(deleted, vec![4]);
    assert_eq!(scalar(&db.pool, expiries).await, 2);

    run(&db.pool, &block("retention-indexes")).await;
    let retention = block("retention");
    // Nothing is archived yet: nothing goes.
    run(
        &db.pool,
        &fill(
            &retention,
            &[("retain", "0 seconds"), ("archived_through", "0")],
        ),
    )
    .await;
    for run in &runs {
        assert!(
            rows_of(&db.pool, run).await > 0,
            "{run} is kept until archived"
        );
    }
    // Archived, but finished too recently: nothing goes.
    let through = last_event(&db.pool).await;
    run(
        &db.pool,
        &fill(
            &retention,
            &[("retain", "1 day"), ("archived_through", &through)],
        ),
    )
    .await;
    assert_eq!(
        scalar(&db.pool, "select count(*) from orchestrator_runs").await,
        6
    );

    run(
        &db.pool,
        &fill(
            &retention,
            &[("retain", "0 seconds"), ("archived_through", &through)],
        ),
    )
    .await;
    for run in done {
        assert_eq!(rows_of(&db.pool, run).await, 0, "{run} went whole");
    }
    for run in waiting {
        assert!(rows_of(&db.pool, run).await > 0, "{run} is not finished");
    }
    assert_eq!(scalar(&db.pool, "select count(*) from briefs").await, 2);
    assert_eq!(scalar(&db.pool, expiries).await, 2);
    assert_eq!(assert_every_chain_verifies(&db.pool).await, 2);
}

#[tokio::test]
async fn the_audit_partitioning_cutover_keeps_the_service_working_and_a_finished_partition_drops_whole()
 {
    let db = crate::common::fresh_db().await;
    let pool = &db.pool;
    // The bounds' query, as the document writes it, gives month boundaries in order.
    let bounds = block("partition-bounds");
    let query = bounds
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    let (next_month, month_after): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_one(pool)
        .await
        .unwrap();
    for bound in [&next_month, &month_after] {
        assert!(bound.len() == 16 && bound.starts_with("run_"), "{bound}");
    }
    assert!(next_month < month_after);

    let old = park(pool, 3).await;
    complete(pool, &old[..2]).await;
    // Here the cutover is now, not next month, so that runs created after it land in
    // the new partition: one millisecond past the newest run id.
    let cutover: String = sqlx::query_scalar(
        "select 'run_' || lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint + 1), 12, '0')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let next_bound: String = sqlx::query_scalar(
        "select 'run_' || lpad(to_hex((extract(epoch from clock_timestamp() + interval '1 day') * 1000)::bigint), 12, '0')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(old.iter().all(|r| r.as_str() < cutover.as_str()));
    run(pool, &block("retention-indexes")).await;
    run(
        pool,
        &fill(
            &block("partition-cutover"),
            &[("cutover", &cutover), ("next_bound", &next_bound)],
        ),
    )
    .await;
    let partitions: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid \
         where i.inhparent = 'run_audit_events'::regclass order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        partitions,
        [
            "run_audit_events_default",
            "run_audit_events_legacy",
            "run_audit_events_next"
        ]
    );

    // The legacy partition holds a run still waiting: it may not go until it finishes.
    let through_old = scalar(pool, "select max(event_id) from run_audit_events_legacy")
        .await
        .to_string();
    let check = block("partition-retire-check");
    let vars = |through: &str| {
        fill(
            &check,
            &[
                ("from", "run_"),
                ("to", &cutover),
                ("retain", "0 seconds"),
                ("archived_through", through),
            ],
        )
    };
    let in_the_way = |sql: String| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
            sql.trim().trim_end_matches(';').to_owned(),
        ))
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(in_the_way(vars(&through_old)).await, 1);
    complete(pool, &old[2..]).await;
    let through_old = scalar(pool, "select max(event_id) from run_audit_events_legacy")
        .await
        .to_string();
    assert_eq!(in_the_way(vars(&through_old)).await, 0);

    // The service on the partitioned table: runs created after the cutover move through
    // their whole life, their events in the new partition, every chain intact.
    let past_cutover = format!(
        "select ('run_' || lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint), \
         12, '0') >= '{cutover}')::int::int8"
    );
    while scalar(pool, &past_cutover).await == 0 {
        crate::common::poll_pause().await;
    }
    let new = park(pool, 2).await;
    complete(pool, &new).await;
    for (partition, runs) in [
        ("run_audit_events_legacy", &old),
        ("run_audit_events_next", &new),
    ] {
        let ids: Vec<String> = runs.iter().map(|r| format!("'{r}'")).collect();
        let elsewhere = scalar(
            pool,
            &format!(
                "select count(*) from run_audit_events where run_id in ({}) \
                 and tableoid <> '{partition}'::regclass",
                ids.join(", ")
            ),
        )
        .await;
        assert_eq!(elsewhere, 0, "every event of these runs is in {partition}");
    }
    assert_eq!(
        scalar(pool, "select count(*) from run_audit_events_default").await,
        0
    );
    assert_eq!(assert_every_chain_verifies(pool).await, 5);
    // The export stops at the cluster's oldest running transaction (its commit-safe
    // horizon), which other tests' transactions on the same server hold back for a
    // moment: read again until it is past this database's events, for at most 10 s.
    let stored = scalar(pool, "select count(*) from run_audit_events").await;
    let mut exported = 0;
    for _ in 0..100 {
        let mut conn = pool.acquire().await.unwrap();
        exported = audit::export_after(&mut conn, (0, 0), 1000)
            .await
            .unwrap()
            .len() as i64;
        if exported == stored {
            break;
        }
        // the poll's pause: the horizon moves when another test's transaction ends.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(exported, stored, "the export reads across partitions");

    run(pool, &block("partition-retire")).await;
    // The runs whose chains went with the partition, removed whole: the events archived
    // through the legacy partition's last one, so the new runs stay.
    let retention = fill(
        &block("retention"),
        &[("retain", "0 seconds"), ("archived_through", &through_old)],
    );
    run(pool, &retention).await;
    for r in &old {
        assert_eq!(rows_of(pool, r).await, 0, "{r} went whole");
    }
    for r in &new {
        assert!(rows_of(pool, r).await > 0, "{r} stays");
    }
    assert_eq!(assert_every_chain_verifies(pool).await, 2);
}
