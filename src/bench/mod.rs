//! `hitl-orchestrator bench <scenario>`: measured numbers anyone can rerun. Each scenario
//! gets a fresh database (on `DATABASE_URL`'s server, or on an embedded PostgreSQL
//! started for the run with durable settings: commit on), seeds it through
//! `persistence`, measures, and prints one JSON object (with `--out DIR`, also written to
//! `DIR/<scenario>.json`).
//!
//! This is the binary's own code, not the library's: it drives the library from outside,
//! as the service's processes do. Only the baseline writes orchestrator rows with SQL of
//! its own; the other SQL here reads what was measured.
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
//! - `scale`: `drain` with 1, 2 and 4 `worker` processes (`--process-counts`), each count
//!   on a fresh database: throughput, the CPU of PostgreSQL, the workers and a pooler,
//!   and an exactly-once check per count.
//!
//! With `HITL_DB_POOLER` the `worker` processes reach PostgreSQL through the pooler at
//! `DATABASE_URL`; the bench itself (creating, seeding, reading) goes straight, to
//! `HITL_DIRECT_DATABASE_URL`.

mod baseline;
mod cpu;
mod drain;
mod http;
mod rehydrate;
mod updates;

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use hitl_orchestrator::config::{BenchArgs, BenchScenario, DbPooler};
use hitl_orchestrator::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use hitl_orchestrator::db::{self, PoolSettings};
use hitl_orchestrator::domain::{CommandKind, RequestId, RunId};
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::jobs::WorkerSettings;
use hitl_orchestrator::persistence::{self, NewCommand, Operator};

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

/// How a benchmark's `worker` processes reach their database: the connection settings,
/// as environment variables.
pub(crate) type Route = Vec<(&'static str, String)>;

/// Where the bench reaches PostgreSQL.
struct Servers {
    /// For creating databases, seeding and the bench's own reads: straight to PostgreSQL.
    admin: String,
    /// The pooler's address and mode, when the service's processes go through one.
    pooled: Option<(String, DbPooler)>,
}

impl Servers {
    /// How `worker` processes reach the database `name`.
    fn route(&self, name: &str) -> Route {
        let direct = db::url_with_database(&self.admin, name);
        match &self.pooled {
            None => vec![("DATABASE_URL", direct)],
            Some((pooler_url, mode)) => vec![
                ("DATABASE_URL", db::url_with_database(pooler_url, name)),
                ("HITL_DB_POOLER", pooler_name(*mode).to_owned()),
                ("HITL_DIRECT_DATABASE_URL", direct),
            ],
        }
    }
}

fn pooler_name(mode: DbPooler) -> &'static str {
    match mode {
        DbPooler::None => "none",
        DbPooler::Session => "session",
        DbPooler::Transaction => "transaction",
    }
}

/// A fresh, migrated database of one measurement; dropped by [`BenchDb::drop`].
struct BenchDb {
    name: String,
    url: String,
    pool: PgPool,
}

impl BenchDb {
    async fn create(servers: &Servers, args: &BenchArgs) -> Result<Self, BenchError> {
        let name = format!("hitl_bench_{}", uuid::Uuid::now_v7().simple());
        db::ensure_database(&servers.admin, &name).await?;
        let url = db::url_with_database(&servers.admin, &name);
        let connections = (args.concurrency as u32 + 8).max(16);
        let pool = db::lazy_pool(
            &url,
            PoolSettings {
                max_connections: connections,
                acquire_timeout: Duration::from_secs(30),
            },
        )?;
        db::migrate(&pool).await?;
        persistence::audit::register_signer(&pool).await?;
        Ok(Self { name, url, pool })
    }

    async fn drop(self, servers: &Servers) -> Result<(), BenchError> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&servers.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists \"{}\" with (force)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// Runs the scenario and returns its results.
pub async fn run(args: &BenchArgs) -> Result<Value, BenchError> {
    let common = &args.common;
    let (servers, embedded) = match (&common.database_url, common.db_pooler) {
        (Some(url), DbPooler::None) => (
            Servers {
                admin: url.expose().to_owned(),
                pooled: None,
            },
            None,
        ),
        (Some(url), mode) => {
            let direct = common.direct_database_url.as_ref().ok_or_else(|| {
                BenchError::Other(
                    "bench behind a pooler (HITL_DB_POOLER) needs HITL_DIRECT_DATABASE_URL: it \
                     creates its databases and takes its own readings straight"
                        .into(),
                )
            })?;
            (
                Servers {
                    admin: direct.expose().to_owned(),
                    pooled: Some((url.expose().to_owned(), mode)),
                },
                None,
            )
        }
        (None, _) => {
            let dir =
                std::env::temp_dir().join(format!("hitl-bench-{}", uuid::Uuid::now_v7().simple()));
            let mut opts = EmbeddedOptions::new(dir.join("data"));
            // e2e reads each command's commit time (pg_xact_commit_timestamp).
            opts.settings.push("track_commit_timestamp=on".into());
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                .await
                .map_err(|e| BenchError::Other(e.to_string()))?
                .map_err(db::DbError::from)?;
            let servers = Servers {
                admin: pg.url_for("postgres"),
                pooled: None,
            };
            (servers, Some((pg, dir)))
        }
    };
    // Signed when HITL_AUDIT_SIGNING_KEY_FILE is set: in this process, and in the worker
    // processes a scenario starts (they inherit the environment).
    let signer = match &common.audit_signing_key_file {
        None => None,
        Some(path) => Some(std::sync::Arc::new(
            persistence::audit::Signer::from_pem_file(path).map_err(BenchError::Other)?,
        )),
    };
    persistence::audit::install_signer(signer);

    let n = args.n.unwrap_or(args.scenario.default_n());
    let measured = match args.scenario {
        BenchScenario::Scale => scale(&servers, args, n).await,
        _ => match BenchDb::create(&servers, args).await {
            Ok(bench_db) => {
                let result = scenario(&bench_db, &servers, args, n).await;
                bench_db.drop(&servers).await?;
                result
            }
            Err(e) => Err(e),
        },
    };
    if let Some((pg, dir)) = embedded {
        let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        let _ = std::fs::remove_dir_all(dir);
    }
    let mut result = measured?;
    if let Some((_, mode)) = &servers.pooled {
        result["pooler"] = json!(pooler_name(*mode));
    }
    if let Some(dir) = &args.out {
        let file = dir.join(format!("{}.json", args.scenario.name()));
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::write(
                    &file,
                    serde_json::to_string_pretty(&result).unwrap_or_default(),
                )
            })
            .map_err(|e| BenchError::Other(format!("writing {}: {e}", file.display())))?;
    }
    Ok(result)
}

/// One scenario (not `scale`) on `bench_db`.
async fn scenario(
    bench_db: &BenchDb,
    servers: &Servers,
    args: &BenchArgs,
    n: usize,
) -> Result<Value, BenchError> {
    let pool = &bench_db.pool;
    let mut result = match args.scenario {
        BenchScenario::Baseline => {
            seed(pool, n, true).await?;
            baseline::baseline(pool, args).await?
        }
        BenchScenario::Drain => {
            seed(pool, n, true).await?;
            drain::drain(pool, &servers.route(&bench_db.name), args, n).await?
        }
        BenchScenario::Submit => {
            seed(pool, n, false).await?;
            http::submit(pool, args, n).await?
        }
        BenchScenario::E2e => {
            let offered = (args.rate * args.e2e_seconds() as f64).ceil() as usize;
            seed(pool, offered, false).await?;
            http::e2e(pool, &servers.route(&bench_db.name), args, offered).await?
        }
        BenchScenario::Rehydrate => {
            seed(pool, n, false).await?;
            rehydrate::rehydrate(pool, &bench_db.url, args, n).await?
        }
        BenchScenario::Pending => {
            seed(pool, n, false).await?;
            http::pending(pool, args, n).await?
        }
        BenchScenario::Scale => unreachable!("scale runs on databases of its own"),
    };
    result["postgres"] = json!(server_version(pool).await?);
    Ok(result)
}

async fn server_version(pool: &PgPool) -> Result<String, BenchError> {
    Ok(sqlx::query_scalar("show server_version")
        .fetch_one(pool)
        .await?)
}

/// `drain` with each of `--process-counts` worker processes (each running
/// `--concurrency` jobs at once) on a fresh database of `n` queued resumes.
async fn scale(servers: &Servers, args: &BenchArgs, n: usize) -> Result<Value, BenchError> {
    let mut runs = Vec::new();
    let mut version = Value::Null;
    for &processes in &args.process_counts {
        let processes = processes.max(1);
        eprintln!("scale: {processes} worker process(es)");
        let bench_db = BenchDb::create(servers, args).await?;
        let bench_db_name = bench_db.name.clone();
        let mut drain_args = args.clone();
        drain_args.workers = processes;
        drain_args.processes = true;
        drain_args.concurrency = args.concurrency * processes;
        let measured = async {
            seed(&bench_db.pool, n, true).await?;
            version = json!(server_version(&bench_db.pool).await?);
            drain::drain(
                &bench_db.pool,
                &servers.route(&bench_db.name),
                &drain_args,
                n,
            )
            .await
        }
        .await;
        bench_db.drop(servers).await?;
        let mut measured = measured?;
        measured["database"] = json!(bench_db_name);
        runs.push(measured);
    }
    let one = runs
        .first()
        .and_then(|r| r["commands_per_second"].as_f64())
        .unwrap_or(0.0);
    let table: Vec<Value> = runs
        .iter()
        .map(|r| {
            let rate = r["commands_per_second"].as_f64().unwrap_or(0.0);
            json!({ "processes": r["workers"], "commands_per_second": rate,
                    "over_one_process": if one > 0.0 { json!(rate / one) } else { Value::Null },
                    "cpu": r["cpu"], "exactly_once": r["exactly_once"]["ok"] })
        })
        .collect();
    Ok(json!({ "scenario": "scale", "commands": n,
               "concurrency_per_process": args.concurrency, "summary": table, "runs": runs,
               "postgres": version, "machine": machine() }))
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
    // Seeded events are inserted in bulk, unchained; the service would chain them at its
    // start, inside what the rehydrate scenario measures.
    persistence::audit::chain_unhashed(pool).await?;
    if !commands {
        settle(pool).await?;
        return Ok(());
    }
    let parked: Vec<(RunId, RequestId)> = persistence::seed::parked_requests(pool).await?;
    for chunk in parked.chunks(500) {
        let mut tx = pool.begin().await?;
        for (run, request) in chunk {
            let command = NewCommand {
                kind: CommandKind::Resume,
                run_id: Some(run.clone()),
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
                principal: None,
                approver: None,
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
pub(crate) async fn settle(pool: &PgPool) -> Result<(), BenchError> {
    sqlx::query("vacuum analyze").execute(pool).await?;
    // Needs superuser (or pg_checkpoint); on a server where the bench lacks it, skip.
    if let Err(e) = sqlx::query("checkpoint").execute(pool).await {
        eprintln!("no checkpoint before measuring ({e})");
    }
    Ok(())
}

/// Worker settings for benchmarks: `concurrency` jobs at once, quiet background tasks.
pub(crate) fn worker_settings(concurrency: usize) -> WorkerSettings {
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

pub(crate) const TOKEN: &str = "bench-token-0123456789abcdef";

/// Serves the API in this process on a free loopback port until `stop`.
pub(crate) async fn start_api(
    pool: &PgPool,
    stop: &CancellationToken,
) -> Result<String, BenchError> {
    let auth = hitl_orchestrator::identity::Authenticator::from_settings(
        Some(&hitl_orchestrator::config::Secret::new(TOKEN)),
        None,
    )
    .map_err(BenchError::Other)?
    .ok_or_else(|| BenchError::Other("no token".into()))?;
    let service =
        hitl_orchestrator::service::Service::new(pool.clone(), Engine::with_builtins(true))
            .with_shutdown(stop.clone());
    let state = hitl_orchestrator::api::AppState::new(service, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| BenchError::Other(e.to_string()))?
    );
    tokio::spawn(hitl_orchestrator::api::serve(
        listener,
        state,
        hitl_orchestrator::api::HttpLimits::default(),
    ));
    Ok(base)
}

/// p50, p95, p99 and max of `samples` (seconds), in milliseconds.
pub(crate) fn percentiles(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1] * 1000.0
    };
    json!({ "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0), "samples": samples.len() })
}

/// The parked runs and their pending requests, as the API names them.
pub(crate) async fn parked(pool: &PgPool) -> Result<Vec<(String, String)>, BenchError> {
    Ok(persistence::seed::parked_requests(pool)
        .await?
        .into_iter()
        .map(|(run, request)| (run.to_string(), request.to_string()))
        .collect())
}

pub(crate) fn resume_body(run: &str, request: &str) -> Value {
    json!({ "runId": run, "requestId": request,
            "responses": [ { "responseType": "approval", "approved": true } ],
            "operator": { "id": "bench" } })
}

pub(crate) fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cores": cores })
}
