//! The worker: claims jobs from apalis-postgres's queue and runs them, many at a time.
//!
//! apalis 1.0's own worker loop is not used; its measured traps (see ARCHITECTURE.md,
//! "The queue") each have an answer here:
//! - wake-up: LISTEN/NOTIFY on apalis's insert channel **and** an interval poll (delayed
//!   jobs do not notify; a notification can be lost while reconnecting);
//! - explicit concurrency and batch size; the claim never takes more than free slots, and
//!   during a backlog it waits (at most a few milliseconds) for half a batch of them;
//! - a unique worker id per process (host, pid, a fresh UUIDv7), never reused;
//! - heartbeats every `heartbeat` — also while draining — and a short orphan timeout:
//!   every worker re-queues jobs of workers silent for longer;
//! - retries with exponential backoff stored in `run_at` (apalis re-fetches failures at
//!   once), a bounded number of attempts, then `Killed` with the error, and the
//!   command `failed` in the same transaction;
//! - a payload that cannot be decoded kills that one job; its batch-mates run;
//! - database errors never end the loop: it backs off and carries on;
//! - graceful shutdown: stop claiming, let in-flight jobs finish within the grace
//!   period, then abort the rest and release their claims, so no job stays `Running`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Decoded, Erased, Handled, Handler, JobContext, JobError, Registry};
use crate::config::WorkerOptions;
use crate::engine::Engine;
use crate::persistence::jobs::{Cleanup, Rescan};
use crate::persistence::listen::Heard;
use crate::persistence::queue::{self, ClaimedJob};
use crate::telemetry::metrics::metrics;
use tracing::Instrument;

/// The apalis-postgres channel its insert trigger notifies.
const INSERT_CHANNEL: &str = "apalis::job::insert";

/// How long a worker with a backlog waits for enough free slots to claim a batch.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// How a worker behaves; see the `HITL_WORKER_*` and `HITL_JOB_*` settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub listen: bool,
    pub heartbeat: Duration,
    pub orphan_timeout: Duration,
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
    pub cleanup_interval: Duration,
    pub retain_done: Duration,
    pub retain_dead: Duration,
    pub sweep_interval: Duration,
    /// How long a run must be still before the sweep repairs it.
    pub sweep_settle: Duration,
}

impl WorkerSettings {
    /// Settings from the command line.
    pub fn from_options(o: &WorkerOptions, shutdown_grace: Duration) -> Self {
        Self {
            concurrency: o.worker_concurrency as usize,
            batch_size: o.worker_batch_size as usize,
            poll_interval: o.worker_poll_interval.0,
            listen: o.worker_listen,
            heartbeat: o.worker_heartbeat.0,
            orphan_timeout: o.worker_orphan_timeout.0,
            max_attempts: o.job_max_attempts,
            backoff_base: o.job_backoff_base.0,
            backoff_max: o.job_backoff_max.0,
            shutdown_grace,
            cleanup_interval: o.cleanup_interval.0,
            retain_done: o.retain_done.0,
            retain_dead: o.retain_dead.0,
            sweep_interval: o.sweep_interval.0,
            sweep_settle: super::sweep::SETTLE,
        }
    }

    /// The delay before attempt `attempt + 1`: base × 2^(attempt − 1), capped, ±20 %.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let raw = self.backoff_base.saturating_mul(2u32.saturating_pow(exp));
        let capped = raw.min(self.backoff_max);
        // Jitter spreads retries of jobs that failed together (a database restart).
        let noise = (uuid::Uuid::now_v7().as_u128() % 401) as f64 / 1000.0 - 0.2;
        capped.mul_f64(1.0 + noise)
    }
}

/// Why [`Worker::run_until_quiet`] stopped before the queue was quiet.
#[derive(Debug, thiserror::Error)]
pub enum QuietError {
    #[error(transparent)]
    Database(#[from] crate::persistence::PersistenceError),
    #[error("jobs were still due or running after {0:?}")]
    StillBusy(Duration),
}

/// One worker process's job runner.
pub struct Worker {
    ctx: Arc<JobContext>,
    settings: WorkerSettings,
    registry: Registry,
    announce: bool,
    /// Where LISTEN connects: a direct one when `pool` goes through a pooler.
    listen_pool: Option<PgPool>,
}

impl Worker {
    /// A worker on `pool` running `engine`, serving every kind of [`super::registry`].
    pub fn new(pool: PgPool, engine: Engine, settings: WorkerSettings) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        let worker_id = format!(
            "{host}:{}:{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let ctx = JobContext {
            pool,
            engine,
            worker_id,
            cleanup_interval: settings.cleanup_interval,
            retain_done: settings.retain_done,
            retain_dead: settings.retain_dead,
            can_retry: settings.max_attempts > 1,
        };
        Self {
            ctx: Arc::new(ctx),
            settings,
            registry: super::registry(),
            announce: true,
            listen_pool: None,
        }
    }

    /// The same worker LISTENing on a connection of `pool` (straight to PostgreSQL)
    /// instead of its own pool's (which may be a pooler's).
    pub fn with_listen_pool(mut self, pool: PgPool) -> Self {
        self.listen_pool = Some(pool);
        self
    }

    /// The same worker delivering notifications (`hitl_notify`) with `notifier`'s
    /// channels and secrets.
    pub fn with_notifier(self, notifier: Arc<super::Notifier>) -> Self {
        self.with_handler(super::notify::NotifyJob(notifier))
    }

    /// The same worker running `handler`'s kind too (replacing a handler of that kind).
    pub fn with_handler<H: Handler>(mut self, handler: H) -> Self {
        self.registry = self.registry.with(handler);
        self
    }

    /// The same worker running exactly the kinds of `registry`.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Does not print the "running" line on stdout (a worker inside a program whose
    /// stdout is its result, such as `bench`).
    pub fn quiet(mut self) -> Self {
        self.announce = false;
        self
    }

    /// Runs due jobs of its kinds right here, a batch at a time, until none is due and
    /// none is running anywhere; returns how many it ran. A deterministic drain for tests
    /// and tools: no background loop, no LISTEN, and nothing scheduled of its own (no
    /// cleanup, no rescan). A job that fails is retried later (its backoff), not here.
    pub async fn run_until_quiet(self, timeout: Duration) -> Result<usize, QuietError> {
        let (ctx, settings) = (self.ctx, self.settings);
        let kinds = self.registry.kinds();
        let deadline = std::time::Instant::now() + timeout;
        let mut ran = 0;
        loop {
            // Each round says it is alive, so no other worker re-queues these claims.
            queue::register_worker(&ctx.pool, &ctx.worker_id).await?;
            let limit = settings.batch_size.max(1) as i64;
            let claimed = queue::claim(&ctx.pool, &ctx.worker_id, &kinds, limit).await?;
            if claimed.is_empty() {
                if queue::busy(&ctx.pool, &kinds).await? == 0 {
                    return Ok(ran);
                }
                if std::time::Instant::now() > deadline {
                    return Err(QuietError::StillBusy(timeout));
                }
                // Poll: another worker holds a job that is still running.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            for job in &claimed {
                run_one(&ctx, &settings, &self.registry, job).await;
                ran += 1;
            }
        }
    }

    /// Runs until `shutdown` is cancelled, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let ctx = self.ctx.clone();
        let settings = self.settings.clone();
        let registry = Arc::new(self.registry);
        let listen_pool = self.listen_pool;
        let kinds = registry.kinds();
        tracing::info!(worker = %ctx.worker_id, concurrency = settings.concurrency, ?kinds, "worker starting");
        while let Err(e) = queue::register_worker(&ctx.pool, &ctx.worker_id).await {
            tracing::warn!(error = %e, "cannot register the worker yet; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if registry.get(<Cleanup as queue::JobPayload>::KIND).is_some() {
            schedule_cleanup(&ctx).await;
        }
        let rescan_at = if registry.get(<Rescan as queue::JobPayload>::KIND).is_some() {
            schedule_rescan(&ctx).await
        } else {
            None
        };
        // On stdout, apart from the logs, so scripts and tests know the worker is up.
        if self.announce {
            println!("hitl-orchestrator worker {} running", ctx.worker_id);
        }

        let wake = Arc::new(Notify::new());
        if let Some(at) = rescan_at {
            // A job due later sends no notification, and the poll would find it up to a
            // poll interval late: after a start, that delay is every parked run's.
            let wake = wake.clone();
            let wait = (at - Utc::now()).to_std().unwrap_or_default() + RESCAN_WAKE_MARGIN;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                wake.notify_one();
            });
        }
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let background = CancellationToken::new();
        let heart = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            settings.clone(),
            in_flight.clone(),
            background.clone(),
        ));
        let sweeper = tokio::spawn(super::sweep::sweep_loop(
            ctx.clone(),
            settings.sweep_interval,
            settings.sweep_settle,
            background.clone(),
        ));
        let listener = settings.listen.then(|| {
            tokio::spawn(listen_loop(
                listen_pool.unwrap_or_else(|| ctx.pool.clone()),
                kinds.clone(),
                wake.clone(),
                background.clone(),
            ))
        });

        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let mut tasks = JoinSet::new();
        let mut failures: u32 = 0;
        // While a backlog lasts (the last claim came back full), claim in batches of at
        // least half the batch size instead of one job per freed slot: each claim is a
        // commit of its own, and one per job costs a drain a third of its speed.
        let batch_floor = (settings.batch_size.min(settings.concurrency) / 2).max(1);
        let mut backlog = false;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => drop(permit),
                }
                continue;
            }
            if backlog && free < batch_floor {
                // Briefly: slots held by long jobs (agent calls) must not stall the rest.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permits = slots.clone().acquire_many_owned(batch_floor as u32) => drop(permits),
                    _ = tokio::time::sleep(BATCH_WAIT) => {}
                }
            }
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let limit = free.min(settings.batch_size) as i64;
            let claimed = match queue::claim(&ctx.pool, &ctx.worker_id, &kinds, limit).await {
                Ok(jobs) => {
                    failures = 0;
                    jobs
                }
                Err(e) => {
                    // The database is down or restarting: back off and try again.
                    failures += 1;
                    let pause = settings
                        .poll_interval
                        .min(Duration::from_millis(250) * failures.min(20));
                    tracing::warn!(error = %e, ?pause, "claiming jobs failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            let got = claimed.len();
            backlog = got == limit as usize;
            for job in claimed {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(job.id.clone());
                let ctx = ctx.clone();
                let settings = settings.clone();
                let in_flight = in_flight.clone();
                let registry = registry.clone();
                tasks.spawn(async move {
                    run_one(&ctx, &settings, &registry, &job).await;
                    in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&job.id);
                    drop(permit);
                });
            }
            if got < limit as usize {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        }

        // Drain: in-flight jobs get the grace period (heartbeats continue meanwhile).
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                left = tasks.len(),
                "jobs still running after the grace period; releasing them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        match queue::release_claims(&ctx.pool, &ctx.worker_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released unfinished jobs to the queue"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release claims; the orphan timeout will")
            }
        }
        background.cancel();
        let _ = heart.await;
        let _ = sweeper.await;
        if let Some(l) = listener {
            let _ = l.await;
        }
        tracing::info!(worker = %ctx.worker_id, "worker stopped");
    }
}

/// Runs one job and records its result: backoff, death, or nothing more to do.
async fn run_one(
    ctx: &JobContext,
    settings: &WorkerSettings,
    registry: &Registry,
    claimed: &ClaimedJob,
) {
    let span = tracing::info_span!("job", job.queue = %claimed.job_type, job.id = %claimed.id,
        job.attempt = claimed.attempts + 1, run.id = tracing::field::Empty,
        request.id = tracing::field::Empty, command.id = tracing::field::Empty,
        job.outcome = tracing::field::Empty);
    // Only registered kinds are claimed; a handler missing here is a bug, not the job's.
    let Some(handler) = registry.get(&claimed.job_type) else {
        tracing::error!(job = %claimed.id, kind = %claimed.job_type, "claimed a kind with no handler");
        return;
    };
    let decoded = handler.decode(ctx, claimed);
    // The parent must be set before the span is first entered.
    if let Ok(Decoded {
        trace: Some(carrier),
        ..
    }) = &decoded
    {
        crate::telemetry::continue_trace(&span, carrier);
    }
    run_in_span(ctx, settings, claimed, handler.as_ref(), decoded, &span)
        .instrument(span.clone())
        .await;
}

async fn run_in_span(
    ctx: &JobContext,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
    handler: &dyn Erased,
    decoded: Result<Decoded<'_>, String>,
    span: &tracing::Span,
) {
    let count = |outcome: &str| {
        span.record("job.outcome", outcome);
        metrics().inc(
            "hitl_jobs_total",
            &[("queue", &claimed.job_type), ("outcome", outcome)],
        );
    };
    let run = match decoded {
        Ok(Decoded { subject, run, .. }) => {
            if let Some((field, id)) = subject {
                span.record(field, id.as_str());
            }
            run
        }
        Err(error) => {
            // Retrying cannot make the payload readable: dead now, alone.
            tracing::error!(job = %claimed.id, %error, "poison job");
            bury(ctx, claimed, None, &error).await;
            count("dead");
            return;
        }
    };
    // A panic in a handler is caught here and treated as a failed attempt.
    let result = futures_catch(run).await;
    match &result {
        Ok(Handled::Done) => count("done"),
        Ok(Handled::Postponed) => count("postponed"),
        Ok(Handled::LostClaim) => count("lost_claim"),
        Err(JobError::Fatal(_)) => count("dead"),
        Err(JobError::Retry(_)) if claimed.attempts + 1 >= settings.max_attempts => count("dead"),
        Err(JobError::Retry(_)) => count("retried"),
    }
    match result {
        Ok(Handled::Done | Handled::Postponed) => {}
        Ok(Handled::LostClaim) => {
            tracing::warn!(job = %claimed.id, "claim lost before completion; nothing was committed");
        }
        Err(JobError::Fatal(error)) => {
            tracing::error!(job = %claimed.id, %error, "job cannot succeed");
            bury(ctx, claimed, Some(handler), &error).await;
        }
        Err(JobError::Retry(error)) => {
            let attempt = claimed.attempts + 1;
            if attempt >= settings.max_attempts {
                tracing::error!(job = %claimed.id, attempt, %error, "job failed for the last time");
                bury(
                    ctx,
                    claimed,
                    Some(handler),
                    &format!("{error} (after {attempt} attempts)"),
                )
                .await;
            } else {
                let delay = settings.backoff(attempt);
                tracing::warn!(job = %claimed.id, attempt, ?delay, %error, "job failed; will retry");
                let at =
                    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                if let Err(e) =
                    queue::retry_later(&ctx.pool, &claimed.id, &ctx.worker_id, &error, at).await
                {
                    // The heartbeat loop releases claims we could not record.
                    tracing::warn!(job = %claimed.id, error = %e, "could not schedule the retry");
                }
            }
        }
    }
}

/// Catches a panic in `fut` as a retryable error.
async fn futures_catch<F>(fut: F) -> Result<Handled, JobError>
where
    F: std::future::Future<Output = Result<Handled, JobError>>,
{
    use std::panic::AssertUnwindSafe;
    match futures_util::FutureExt::catch_unwind(AssertUnwindSafe(fut)).await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            Err(JobError::Retry(format!("handler panicked: {message}")))
        }
    }
}

/// Declares a job dead and records what it leaves behind (its handler's `on_dead`,
/// unless its payload could not even be read), in one transaction.
async fn bury(ctx: &JobContext, claimed: &ClaimedJob, handler: Option<&dyn Erased>, error: &str) {
    let result = async {
        let mut tx = ctx.pool.begin().await?;
        if queue::kill(&mut tx, &claimed.id, &ctx.worker_id, error).await?
            && let Some(handler) = handler
        {
            handler.on_dead(&mut tx, &claimed.job, error).await?;
        }
        tx.commit().await?;
        Ok::<_, crate::persistence::PersistenceError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(job = %claimed.id, error = %e, "could not record a dead job; it will be retried");
    }
}

/// Ensures one cleanup job is scheduled (a no-op when one is).
async fn schedule_cleanup(ctx: &JobContext) {
    let result = async {
        let mut tx = ctx.pool.begin().await?;
        if !queue::enqueue_singleton(&mut tx, &Cleanup {}, None).await? {
            let due = Utc::now()
                + chrono::Duration::from_std(ctx.cleanup_interval).unwrap_or(chrono::Duration::MAX);
            queue::bring_forward::<Cleanup>(&mut tx, due).await?;
        }
        tx.commit().await?;
        Ok::<_, crate::persistence::PersistenceError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not schedule the cleanup job");
    }
}

/// How long after the start-up rescan is due the claim loop is woken for it: the job's
/// due time is compared with the database's clock, which may run a little behind ours.
const RESCAN_WAKE_MARGIN: Duration = Duration::from_millis(5);

/// Enqueues this start's rescan of unfinished runs (a no-op while one is active); when
/// this call scheduled it, when it is due.
async fn schedule_rescan(ctx: &JobContext) -> Option<chrono::DateTime<Utc>> {
    let result = async {
        let mut tx = ctx.pool.begin().await?;
        // Workers of one deployment start within moments of each other; a short delay
        // lets them all join the first one's rescan instead of each running its own.
        // Due on a whole second, as the queue stores it: the wake-up is then exact.
        let at = Utc::now() + chrono::Duration::milliseconds(500);
        let at = chrono::DateTime::from_timestamp(
            at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0),
            0,
        )
        .unwrap_or(at);
        let scheduled = queue::enqueue_singleton(&mut tx, &Rescan::default(), Some(at)).await?;
        tx.commit().await?;
        Ok::<_, crate::persistence::PersistenceError>(scheduled.then_some(at))
    }
    .await;
    match result {
        Ok(Some(at)) => {
            tracing::info!("rescan of unfinished runs scheduled");
            Some(at)
        }
        Ok(None) => {
            tracing::info!("a rescan is already active");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not schedule the rescan; the sweep covers stranded runs");
            None
        }
    }
}

/// Heartbeats; re-queues other workers' orphans; releases claims of ours that no task
/// holds any more (a result that could not be recorded while the database was down).
async fn heartbeat_loop(
    ctx: Arc<JobContext>,
    settings: WorkerSettings,
    in_flight: Arc<Mutex<HashSet<String>>>,
    stop: CancellationToken,
) {
    let mut beat: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.heartbeat) => {}
        }
        beat += 1;
        if let Err(e) = queue::heartbeat(&ctx.pool, &ctx.worker_id).await {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        match queue::requeue_orphans(&ctx.pool, settings.orphan_timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(requeued = n, "re-queued jobs of a silent worker"),
            Err(e) => tracing::warn!(error = %e, "orphan scan failed"),
        }
        if beat.is_multiple_of(10) {
            let held: Vec<String> = in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if let Err(e) = queue::release_stray_claims(&ctx.pool, &ctx.worker_id, &held).await {
                tracing::warn!(error = %e, "stray-claim check failed");
            }
        }
    }
}

/// Wakes the claim loop when a job of one of `kinds` is inserted.
async fn listen_loop(
    pool: PgPool,
    kinds: Vec<&'static str>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    crate::persistence::listen::listen(
        &pool,
        INSERT_CHANNEL,
        Duration::from_secs(1),
        &stop,
        |heard| match heard {
            // Anything inserted while we were not listening is found by this poll.
            Heard::Listening => wake.notify_one(),
            Heard::Notification(payload) => {
                let job_type = serde_json::from_str::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v["job_type"].as_str().map(str::to_owned));
                if job_type.is_some_and(|t| kinds.contains(&t.as_str())) {
                    wake.notify_one();
                }
            }
        },
    )
    .await;
}
