//! The job queue's rows: apalis-postgres's `apalis.jobs` and `apalis.workers`.
//!
//! Jobs are inserted as apalis-postgres's `push_tasks` writes them, inside the caller's
//! transaction — a command's job, a notification's in the very statement that writes
//! their cause, so a command never exists
//! without its job (nor a job without its command). Claiming, completing, retrying and killing use apalis's status vocabulary
//! (`Pending`, `Running`, `Failed`, `Done`, `Killed`), so apalis tooling still reads the
//! queue, but every completion is fenced on `lock_by`: a worker whose claim was taken
//! away (its heartbeats stopped and the job was re-queued) cannot complete it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use super::PersistenceError;

/// How many times a job is tried before it is declared dead, unless the worker's
/// settings say otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 8;

pub use super::jobs::JobPayload;

/// Reads a row's payload of kind `P`, and the trace context it carries, if any; a
/// malformed payload is an error for that one job.
pub fn decode<P: JobPayload>(
    bytes: &[u8],
) -> Result<(P, Option<std::collections::HashMap<String, String>>), String> {
    let undecodable = |e: serde_json::Error| format!("undecodable {} payload: {e}", P::KIND);
    let mut value: Value = serde_json::from_slice(bytes).map_err(undecodable)?;
    let trace = value
        .as_object_mut()
        .and_then(|m| m.remove("trace"))
        .and_then(|t| serde_json::from_value(t).ok());
    Ok((serde_json::from_value(value).map_err(undecodable)?, trace))
}

/// A job's payload as stored: its fields, and the trace of whatever enqueues it, so the
/// worker's span continues it (an API request → the command's application → the next
/// advancement).
fn payload_of<P: JobPayload>(job: &P) -> Vec<u8> {
    // A derived Serialize of ids and lists into a Value cannot fail.
    let mut payload = serde_json::to_value(job).unwrap_or_default();
    if let Some(carrier) = crate::telemetry::current_trace_context() {
        payload["trace"] = json!(carrier);
    }
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Inserts jobs of one kind, a row per element of the bound arrays, as apalis-postgres's
/// `push_tasks` writes them (pending, priority 0, the metadata as an hstore of at most
/// one pair). Ours rather than `push_tasks` because that one's statement is always
/// named, which a transaction pooler cannot carry (`crate::db::query`).
const ENQUEUE_SQL: &str = "insert into apalis.jobs (id, job_type, job, status, attempts, \
         max_attempts, run_at, priority, metadata) \
     select t.id, $1, t.job, 'Pending', 0, t.max_attempts, coalesce(to_timestamp(t.run_at), \
         now()), 0, coalesce(hstore(t.meta_key, t.meta_value), ''::hstore) \
     from unnest($2::text[], $3::bytea[], $4::int4[], $5::int8[], $6::text[], $7::text[]) \
         as t(id, job, max_attempts, run_at, meta_key, meta_value)";

/// Inserts `jobs`, each due at its time or now, in one statement of the caller's
/// transaction.
async fn push<P: JobPayload>(
    conn: &mut PgConnection,
    jobs: &[(&P, Option<DateTime<Utc>>)],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut keys = Vec::with_capacity(jobs.len());
    let mut values = Vec::with_capacity(jobs.len());
    for (job, run_at) in jobs {
        ids.push(ulid::Ulid::generate().to_string());
        payloads.push(payload_of(*job));
        // The queue is read in whole seconds; round up so a job never runs before its time.
        run_ats.push(run_at.map(|at| at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0)));
        let (key, value) = job.metadata().unzip();
        keys.push(key);
        values.push(value);
    }
    crate::db::query(ENQUEUE_SQL)
        .bind(P::KIND)
        .bind(ids)
        .bind(payloads)
        .bind(vec![DEFAULT_MAX_ATTEMPTS; jobs.len()])
        .bind(run_ats)
        .bind(keys)
        .bind(values)
        .execute(conn)
        .await?;
    Ok(())
}

/// A job row as an `insert into apalis.jobs` of another statement writes it (due now):
/// what `push_tasks` would insert, for a statement that writes the job with its cause.
pub(super) struct JobRow {
    pub id: String,
    pub kind: &'static str,
    pub job: Vec<u8>,
    pub max_attempts: i32,
    /// Its apalis metadata (what it acts on), as a key and a value.
    pub meta_key: Option<&'static str>,
    pub meta_value: Option<String>,
}

/// An `insert into apalis.jobs` of one [`JobRow`] per row of `from`, its id, kind, job,
/// max attempts, metadata key and value bound to `$first` … `$first + 5` (as `push_tasks`
/// writes it: pending, due now, priority 0).
pub(super) fn insert_job_sql(first: u8, from: &str) -> String {
    let [id, kind, job, max_attempts, key, value] =
        [first, first + 1, first + 2, first + 3, first + 4, first + 5];
    format!(
        "insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
             priority, metadata) \
         select ${id}, ${kind}, ${job}, 'Pending', 0, ${max_attempts}, now(), 0, \
             coalesce(hstore(${key}::text, ${value}::text), ''::hstore) from {from}"
    )
}

/// The row of `job`, due now.
pub(super) fn job_row<P: JobPayload>(job: &P) -> JobRow {
    let (meta_key, meta_value) = job.metadata().unzip();
    JobRow {
        id: ulid::Ulid::generate().to_string(),
        kind: P::KIND,
        job: payload_of(job),
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        meta_key,
        meta_value,
    }
}

/// Pushes `job` in the caller's transaction (due now, or at `run_at`). Rolled back with
/// it; its NOTIFY is delivered only on commit.
pub async fn enqueue<P: JobPayload>(
    conn: &mut PgConnection,
    job: &P,
    run_at: Option<DateTime<Utc>>,
) -> Result<(), PersistenceError> {
    Ok(push(conn, &[(job, run_at)]).await?)
}

/// Pushes every job of `jobs` (due now) in one statement of the caller's transaction.
pub async fn enqueue_all<P: JobPayload>(
    conn: &mut PgConnection,
    jobs: &[P],
) -> Result<(), PersistenceError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let jobs: Vec<_> = jobs.iter().map(|job| (job, None)).collect();
    Ok(push(conn, &jobs).await?)
}

/// Pushes a job of a singleton kind unless one is already active; returns whether it
/// was pushed. A savepoint keeps the refused insert from aborting the caller's work.
pub async fn enqueue_singleton<P: JobPayload>(
    conn: &mut PgConnection,
    job: &P,
    run_at: Option<DateTime<Utc>>,
) -> Result<bool, PersistenceError> {
    let mut savepoint = conn.begin().await?;
    match push(&mut savepoint, &[(job, run_at)]).await {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            savepoint.rollback().await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves a scheduled job of the singleton kind `P` earlier, to `at` at the latest (a
/// worker started with a shorter interval than the one that scheduled it).
pub async fn bring_forward<P: JobPayload>(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
) -> Result<(), PersistenceError> {
    crate::db::query(
        "update apalis.jobs set run_at = $2 \
         where job_type = $1 and status in ('Pending', 'Failed') and run_at > $2",
    )
    .bind(P::KIND)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job this worker claimed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: String,
    pub job_type: String,
    pub job: Vec<u8>,
    /// Attempts before this one.
    pub attempts: i32,
}

/// Registers (or refreshes) a worker; its id must be unique to the process.
pub async fn register_worker(pool: &PgPool, worker_id: &str) -> Result<(), PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    crate::db::query(
        "insert into apalis.workers (id, worker_type, storage_name, layers, last_seen, started_at) \
         values ($1, 'hitl-orchestrator', 'apalis.jobs', '', now(), now()) \
         on conflict (id) do update set last_seen = now()",
    )
    .bind(worker_id)
    .execute(&mut *session)
    .await?;
    session.close().await?;
    Ok(())
}

/// Records that the worker is alive.
pub async fn heartbeat(pool: &PgPool, worker_id: &str) -> Result<(), PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    crate::db::query("update apalis.workers set last_seen = now() where id = $1")
        .bind(worker_id)
        .execute(&mut *session)
        .await?;
    session.close().await?;
    Ok(())
}

/// Claims up to `limit` due jobs of the kinds `queues`, oldest first (`for update skip locked`, so
/// workers never block each other), marking them `Running` for this worker.
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit` off for this
/// one statement's transaction): a claim lost in a crash only returns its jobs to
/// `Pending`, and nothing can act on a lost claim, because every completion is fenced on
/// `lock_by` and `status = 'Running'`. The job's own transaction, which commits durably,
/// flushes the claim's WAL with it. This takes one disk flush off the path from a
/// submission to its application.
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    queues: &[&str],
    limit: i64,
) -> Result<Vec<ClaimedJob>, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query_as(
        "with async_commit as (select set_config('synchronous_commit', 'off', true)), \
         next as ( \
             select id from apalis.jobs \
             where job_type = any($2) \
               and (status = 'Pending' or (status = 'Failed' and attempts < max_attempts)) \
               and run_at <= now() \
             order by priority desc, run_at \
             limit $3 for update skip locked) \
         update apalis.jobs j set status = 'Running', lock_by = $1, lock_at = now() \
         from next, async_commit where j.id = next.id \
         returning j.id, j.job_type, j.job, j.attempts",
    )
    .bind(worker_id)
    .bind(queues)
    .bind(limit)
    .fetch_all(&mut *session)
    .await?;
    session.close().await?;
    Ok(out)
}

/// How many jobs of the kinds `queues` are running or due now: zero when the queue is
/// quiet for them.
pub async fn busy(pool: &PgPool, queues: &[&str]) -> Result<i64, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query_scalar(
        "select count(*) from apalis.jobs where job_type = any($1) \
           and (status = 'Running' \
                or ((status = 'Pending' or (status = 'Failed' and attempts < max_attempts)) \
                    and run_at <= now()))",
    )
    .bind(queues)
    .fetch_one(&mut *session)
    .await?;
    session.close().await?;
    Ok(out)
}

/// Marks a claimed job done, in the caller's transaction (the one that applied its
/// effect). Returns false — and the caller must roll back — when the job is no longer
/// this worker's.
pub async fn complete(
    conn: &mut PgConnection,
    job_id: &str,
    worker_id: &str,
) -> Result<bool, PersistenceError> {
    let done = crate::db::query(sqlx::AssertSqlSafe(complete_sql("$1", "$2", "true")))
        .bind(job_id)
        .bind(worker_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The update completing job `id` held by worker `worker` (SQL expressions) when `and`
/// holds: `Done`, its attempt counted, as apalis's own completion writes it.
pub(super) fn complete_sql(id: &str, worker: &str, and: &str) -> String {
    format!(
        "update apalis.jobs set status = 'Done', done_at = now(), attempts = attempts + 1, \
             last_result = '{{\"Ok\": null}}'::jsonb \
         where id = {id} and lock_by = {worker} and status = 'Running' and {and}"
    )
}

/// Gives a failed attempt back to the queue, due again at `run_at` (the backoff).
pub async fn retry_later(
    pool: &PgPool,
    job_id: &str,
    worker_id: &str,
    error: &str,
    run_at: DateTime<Utc>,
) -> Result<bool, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let r = crate::db::query(
        "update apalis.jobs set status = 'Failed', attempts = attempts + 1, run_at = $4, \
             lock_by = null, lock_at = null, last_result = jsonb_build_object('Err', $3::text) \
         where id = $1 and lock_by = $2 and status = 'Running'",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(error)
    .bind(run_at)
    .execute(&mut *session)
    .await?;
    session.close().await?;
    Ok(r.rows_affected() == 1)
}

/// Puts a job back, due at `run_at`, without counting an attempt (it ran too early).
pub async fn postpone(
    conn: &mut PgConnection,
    job_id: &str,
    worker_id: &str,
    run_at: DateTime<Utc>,
) -> Result<bool, PersistenceError> {
    let r = crate::db::query(
        "update apalis.jobs set status = 'Pending', run_at = $3, lock_by = null, lock_at = null \
         where id = $1 and lock_by = $2 and status = 'Running'",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(run_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Declares a job dead (`Killed`) with its error, in the caller's transaction, so the
/// caller can record the consequence (a command `failed`) with it.
pub async fn kill(
    conn: &mut PgConnection,
    job_id: &str,
    worker_id: &str,
    error: &str,
) -> Result<bool, PersistenceError> {
    let r = crate::db::query(
        "update apalis.jobs set status = 'Killed', attempts = attempts + 1, done_at = now(), \
             last_result = jsonb_build_object('Err', $3::text) \
         where id = $1 and lock_by = $2 and status = 'Running'",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Hands this worker's unfinished claims back to the queue (graceful shutdown).
pub async fn release_claims(pool: &PgPool, worker_id: &str) -> Result<u64, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query(
        "update apalis.jobs set status = 'Pending', lock_by = null, lock_at = null \
         where lock_by = $1 and status in ('Queued', 'Running')",
    )
    .bind(worker_id)
    .execute(&mut *session)
    .await?
    .rows_affected();
    session.close().await?;
    Ok(out)
}

/// Hands back this worker's claims that none of its tasks holds (a result that could not
/// be recorded while the database was unreachable). Claims younger than a few seconds
/// are left alone: their task may not have registered yet.
pub async fn release_stray_claims(
    pool: &PgPool,
    worker_id: &str,
    held: &[String],
) -> Result<u64, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query(
        "update apalis.jobs set status = 'Pending', lock_by = null, lock_at = null \
         where lock_by = $1 and status in ('Queued', 'Running') and id <> all($2) \
           and lock_at < now() - interval '5 seconds'",
    )
    .bind(worker_id)
    .bind(held)
    .execute(&mut *session)
    .await?
    .rows_affected();
    session.close().await?;
    Ok(out)
}

/// Re-queues jobs claimed by workers that stopped sending heartbeats `timeout` ago. A
/// job that has used up its attempts this way (it keeps killing workers) is declared
/// dead instead.
pub async fn requeue_orphans(pool: &PgPool, timeout: Duration) -> Result<u64, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query(
        "with stale as ( \
             select j.id from apalis.jobs j join apalis.workers w on w.id = j.lock_by \
             where j.status in ('Queued', 'Running') \
               and w.last_seen < now() - make_interval(secs => $1) \
             for update of j skip locked) \
         update apalis.jobs j set \
             status = case when j.attempts + 1 >= j.max_attempts then 'Killed' else 'Pending' end, \
             done_at = case when j.attempts + 1 >= j.max_attempts then now() end, \
             lock_by = null, lock_at = null, attempts = j.attempts + 1, \
             last_result = '{\"Err\": \"re-queued: its worker stopped sending heartbeats\"}'::jsonb \
         from stale where j.id = stale.id",
    )
    .bind(timeout.as_secs_f64())
    .execute(&mut *session)
    .await?
    .rows_affected();
    session.close().await?;
    Ok(out)
}

/// Deletes up to `limit` finished rows: `Done` ones finished before `done_before`,
/// dead (`Killed`) ones before `dead_before`; and worker rows long silent that no job
/// refers to any more.
pub async fn delete_finished(
    conn: &mut PgConnection,
    done_before: DateTime<Utc>,
    dead_before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, PersistenceError> {
    let jobs = crate::db::query(
        "delete from apalis.jobs where id in ( \
             select id from apalis.jobs \
             where (status = 'Done' and done_at < $1) or (status = 'Killed' and done_at < $2) \
             limit $3)",
    )
    .bind(done_before)
    .bind(dead_before)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    crate::db::query(
        "delete from apalis.workers w where w.last_seen < now() - interval '1 day' \
         and not exists (select 1 from apalis.jobs j where j.lock_by = w.id)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(jobs)
}
