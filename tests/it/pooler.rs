//! The service behind a real PgBouncer (Debian's, started by the tests): API, worker,
//! rehydration, takeover and PostgreSQL-restart scenarios of the other modules, re-run
//! with the service's pooled connections through PgBouncer in transaction mode — six
//! server connections for every client of the test's processes — and LISTEN and
//! migrations straight to PostgreSQL; one re-run in session mode; each checks that
//! PgBouncer carried the traffic. And why the service sends what it sends behind a
//! transaction pooler (`db::statements`): what sqlx's statements do through PgBouncer
//! 1.18 in transaction mode, measured.

use std::process::{Command, Stdio};
use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::pooler::{PgBouncer, SESSION_POOL, TRANSACTION_POOL};
use crate::common::{TestDb, fresh_db};

/// A fresh database and a PgBouncer in transaction mode in front of it; `None` when
/// PgBouncer is missing (the test then says so loudly, or fails under CI).
async fn behind_pgbouncer(test: &str) -> Option<(TestDb, PgBouncer)> {
    let db = fresh_db().await;
    let bouncer = PgBouncer::start(test, &db.url, "transaction", TRANSACTION_POOL)?;
    Some((db, bouncer))
}

/// As [`behind_pgbouncer`], in session mode.
async fn behind_pgbouncer_in_session_mode(test: &str) -> Option<(TestDb, PgBouncer)> {
    let db = fresh_db().await;
    let bouncer = PgBouncer::start(test, &db.url, "session", SESSION_POOL)?;
    Some((db, bouncer))
}

#[tokio::test]
async fn behind_pgbouncer_worker_processes_drain_every_command_exactly_once() {
    let test = "pooler::behind_pgbouncer_worker_processes_drain_every_command_exactly_once";
    let Some((db, bouncer)) = behind_pgbouncer(test).await else {
        return;
    };
    crate::worker::worker_processes_drain_exactly_once(&db, &bouncer.route(&db.url), 2, 1000).await;
    bouncer.assert_carried(&db.name, 1000).await;
}

#[tokio::test]
async fn behind_pgbouncer_an_api_and_a_worker_process_stream_a_run_in_order() {
    let test = "pooler::behind_pgbouncer_an_api_and_a_worker_process_stream_a_run_in_order";
    let Some((db, bouncer)) = behind_pgbouncer(test).await else {
        return;
    };
    crate::api_events::api_and_worker_processes_stream_a_run_in_order(&db, &bouncer.route(&db.url))
        .await;
    bouncer.assert_carried(&db.name, 10).await;
}

#[tokio::test]
async fn behind_pgbouncer_in_session_mode_an_api_and_a_worker_process_stream_a_run_in_order() {
    let test = "pooler::behind_pgbouncer_in_session_mode_an_api_and_a_worker_process_stream_a_run_in_order";
    let Some((db, bouncer)) = behind_pgbouncer_in_session_mode(test).await else {
        return;
    };
    crate::api_events::api_and_worker_processes_stream_a_run_in_order(&db, &bouncer.route(&db.url))
        .await;
    bouncer.assert_carried(&db.name, 10).await;
}

#[tokio::test]
async fn behind_pgbouncer_a_fresh_start_leaves_parked_runs_and_continues_lost_ones() {
    let test = "pooler::behind_pgbouncer_a_fresh_start_leaves_parked_runs_and_continues_lost_ones";
    let Some((db, bouncer)) = behind_pgbouncer(test).await else {
        return;
    };
    crate::rehydrate::a_fresh_start_leaves_parked_runs_and_continues_lost_ones(
        &db,
        &bouncer.route(&db.url),
        2000,
    )
    .await;
    bouncer.assert_carried(&db.name, 100).await;
}

#[tokio::test]
async fn behind_pgbouncer_a_sigkilled_workers_jobs_move_on_and_apply_once() {
    let test = "pooler::behind_pgbouncer_a_sigkilled_workers_jobs_move_on_and_apply_once";
    let Some((db, bouncer)) = behind_pgbouncer(test).await else {
        return;
    };
    crate::rehydrate::a_sigkilled_workers_jobs_move_on_and_apply_once(&db, &bouncer.route(&db.url))
        .await;
    bouncer.assert_carried(&db.name, 1000).await;
}

#[tokio::test]
async fn behind_pgbouncer_workers_ride_out_an_immediate_postgresql_restart() {
    let test = "pooler::behind_pgbouncer_workers_ride_out_an_immediate_postgresql_restart";
    crate::rehydrate::workers_ride_out_a_postgresql_restart(Some(test)).await;
}

#[tokio::test]
async fn the_scale_benchmark_runs_its_worker_processes_through_pgbouncer() {
    let test = "pooler::the_scale_benchmark_runs_its_worker_processes_through_pgbouncer";
    let Some((db, bouncer)) = behind_pgbouncer(test).await else {
        return;
    };
    let route = bouncer.route(&db.url);
    let scale = crate::bench::bench_with(
        &[crate::bench::TINY_SCALE, &["--process-counts", "2"]].concat(),
        &crate::common::env_with(&route, &[]),
    );
    assert_eq!(scale["pooler"], "transaction", "{scale}");
    assert_eq!(scale["summary"][0]["exactly_once"], true, "{scale}");
    // The bench's databases are its own (created beside the test's): find its by name.
    let database = scale["runs"][0]["database"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!database.is_empty(), "{scale}");
    bouncer.assert_carried(&database, 40).await;
}

#[test]
fn serve_refuses_transaction_pooling_without_a_direct_url_naming_the_setting() {
    let mut cmd = Command::new(crate::common::service_binary());
    cmd.arg("serve")
        .env("DATABASE_URL", "postgres://u:secret-pw@127.0.0.1:1/hitl")
        .env("HITL_DB_POOLER", "transaction")
        .env_remove("HITL_DIRECT_DATABASE_URL")
        .stdin(Stdio::null());
    // Refused while the settings are checked, before any connection is tried, so the
    // unreachable port 1 is never dialled and the process ends at once.
    let out = cmd.output().expect("run the service binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("HITL_DB_POOLER"), "{stderr}");
    assert!(stderr.contains("HITL_DIRECT_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("secret-pw"), "{stderr}");
}

/// Runs 8 clients × 100 queries through `pool`, half `$1 + 1`, half `$1 * 1000`, each
/// checking its answer; returns (errors, wrong answers).
async fn mixed_queries(pool: &PgPool, persistent: bool, in_transaction: bool) -> (usize, usize) {
    let mut tasks = Vec::new();
    for client in 0..8i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut wrong) = (0, 0);
            for i in 0..100i64 {
                let (sql, expected) = if client % 2 == 0 {
                    ("select $1::int8 + 1", i + 1)
                } else {
                    ("select $1::int8 * 1000", i * 1000)
                };
                let query = sqlx::query_scalar::<_, i64>(sql)
                    .bind(i)
                    .persistent(persistent);
                let answer = if in_transaction {
                    let mut tx = pool.begin().await.unwrap();
                    let answer = query.fetch_one(&mut *tx).await;
                    let _ = tx.commit().await;
                    answer
                } else {
                    query.fetch_one(&pool).await
                };
                match answer {
                    Ok(v) if v == expected => {}
                    Ok(_) => wrong += 1,
                    Err(_) => errors += 1,
                }
            }
            (errors, wrong)
        }));
    }
    let mut total = (0, 0);
    for task in tasks {
        let (e, w) = task.await.unwrap();
        total = (total.0 + e, total.1 + w);
    }
    total
}

#[tokio::test]
async fn through_a_transaction_pooler_only_unnamed_statements_inside_a_transaction_are_safe() {
    let test = "pooler::through_a_transaction_pooler_only_unnamed_statements_inside_a_transaction_are_safe";
    let db = fresh_db().await;
    // Two server connections for eight clients: they must share.
    let Some(bouncer) = PgBouncer::start(test, &db.url, "transaction", 2) else {
        return;
    };
    let options = PgConnectOptions::from_str(&bouncer.url_through(&db.url))
        .unwrap()
        .extra_float_digits(None)
        .statement_cache_capacity(0);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();

    // sqlx names a statement even with no cache: the name is another client's too.
    let (errors, _) = mixed_queries(&pool, true, false).await;
    assert!(
        errors > 0,
        "named statements collided on shared server connections"
    );
    // Unnamed, outside a transaction: prepared in one round trip and executed in the
    // next, possibly on another server connection, where another client's statement is.
    let (errors, wrong) = mixed_queries(&pool, false, false).await;
    eprintln!(
        "unnamed statements outside a transaction: {errors} errors, {wrong} wrong answers of 800"
    );
    assert!(
        errors + wrong > 0,
        "if this now holds, PgBouncer or sqlx changed: re-measure what db::statements needs"
    );
    // Inside a transaction the server connection stays ours between the round trips.
    assert_eq!(mixed_queries(&pool, false, true).await, (0, 0));
    pool.close().await;
}
