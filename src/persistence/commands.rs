//! Commands: resume and remove submissions, recorded with their idempotency key and
//! applied exactly once in effect.
//!
//! Applying locks the run, then the command row, and looks at the command's status
//! first: a command already applied (a redelivered job) returns its stored outcome and
//! changes nothing. A command that lost a race, or targets a run or request that moved
//! on, ends `rejected` with a reason read from the audit trail (who won, and when); it is
//! a normal outcome, never an error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor};

use super::claims::{Actor, Claim};
use super::jobs::{Advance, ApplyRemove, ApplyResume, ApplyRetry};
use super::queue;
use super::requests::{Approvals, RequestItem, RequestShape, ResponseInput, validate_responses};
use super::{AdvanceBy, AuditEntry, LockedRun, Operator, PersistenceError, Tx};
use crate::domain::{
    AuditAction, CommandId, CommandKind, CommandStatus, Refusal, RefusalContext, RequestId,
    RequestNote, ResponseId, ResponseType, RunId, RunStatus, Transition, TransitionError, Winner,
};

/// A submission to record.
#[derive(Clone, Debug)]
pub struct NewCommand {
    pub kind: CommandKind,
    /// The run (for [`submit_command`], `None`: the run of the thread it names).
    pub run_id: Option<RunId>,
    /// Required for resume; optional for remove (when given, it must be pending).
    pub request_id: Option<RequestId>,
    pub idempotency_key: Option<String>,
    /// The validated submission; for a resume it holds `responses`, for a remove
    /// `reason`. A retry with the same key must carry an equal payload.
    pub payload: Value,
    pub operator: Operator,
    pub note: Option<String>,
    /// W3C trace context of the submitting request.
    pub trace_context: Option<Value>,
    /// The credential it came with (its name).
    pub principal: Option<String>,
    /// Who a resume's approval counts as (see `hitl_approvals`): `operator:<id>` for a
    /// bound credential, `principal:<name>` for an act-as one.
    pub approver: Option<String>,
}

/// A command row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    pub command_id: CommandId,
    pub kind: CommandKind,
    pub run_id: RunId,
    pub request_id: Option<RequestId>,
    pub idempotency_key: Option<String>,
    pub payload: Value,
    #[sqlx(json)]
    pub operator: Operator,
    pub note: Option<String>,
    pub status: CommandStatus,
    pub outcome: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub trace_context: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The credential it came with (its name).
    pub principal: Option<String>,
    /// Who its approval counts as, for a resume.
    pub approver: Option<String>,
}

/// What recording returned: the command, and whether this call created it (`false`: an
/// earlier submission with the same idempotency key).
#[derive(Clone, Debug)]
pub struct RecordedCommand {
    pub command: CommandRecord,
    pub created: bool,
}

const COMMAND_COLUMNS: &str = "command_id, kind, run_id, request_id, idempotency_key, payload, \
    operator, note, status, outcome, error, attempts, trace_context, created_at, updated_at, \
    started_at, finished_at, principal, approver";

/// Records a submission, `queued`, with its job, in one statement (the caller's
/// transaction or its own). With an idempotency key already used for the same kind,
/// returns the earlier command unchanged when the payload is equal, and refuses with
/// [`PersistenceError::IdempotencyKeyReused`] otherwise.
pub async fn record_command(
    conn: &mut PgConnection,
    new: NewCommand,
) -> Result<RecordedCommand, PersistenceError> {
    let command_id = CommandId::new();
    let job = command_job(new.kind, &command_id);
    if new.run_id.is_none() {
        return Err(PersistenceError::NotFound {
            entity: "run",
            id: String::new(),
        });
    }
    // No command without its job: the job is inserted only with the command, in the
    // same statement.
    let inserted: Option<CommandRecord> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "with command as ( \
             insert into hitl_commands (command_id, kind, run_id, request_id, idempotency_key, \
                 payload, operator, note, trace_context, principal, approver) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             on conflict (kind, idempotency_key) do nothing returning {COMMAND_COLUMNS}), \
         job as ({} returning id) \
         select command.* from command",
        queue::insert_job_sql(12, "command")
    )))
    .bind(&command_id)
    .bind(new.kind)
    .bind(&new.run_id)
    .bind(&new.request_id)
    .bind(&new.idempotency_key)
    .bind(&new.payload)
    .bind(sqlx::types::Json(&new.operator))
    .bind(&new.note)
    .bind(&new.trace_context)
    .bind(&new.principal)
    .bind(&new.approver)
    .bind(&job.id)
    .bind(job.kind)
    .bind(&job.job)
    .bind(job.max_attempts)
    .bind(job.meta_key)
    .bind(&job.meta_value)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(command) = inserted {
        return Ok(RecordedCommand {
            command,
            created: true,
        });
    }
    let key = new.idempotency_key.unwrap_or_default();
    let existing = find_command_by_idempotency_key(&mut *conn, new.kind, &key)
        .await?
        .ok_or_else(|| PersistenceError::NotFound {
            entity: "command",
            id: key.clone(),
        })?;
    if existing.payload != new.payload {
        return Err(PersistenceError::IdempotencyKeyReused(key));
    }
    Ok(RecordedCommand {
        command: existing,
        created: false,
    })
}

/// What [`submit_command`] found, and what it recorded.
#[derive(Debug)]
pub struct Submission {
    /// The command recorded earlier under the same kind and idempotency key: nothing
    /// was written.
    pub earlier: Option<CommandRecord>,
    /// The command recorded now, `queued`, with its job (the caller's transaction
    /// commits it once its checks pass, or rolls it back). `None` with no earlier one
    /// either: no such run, or a submission under the same key committed meanwhile.
    pub recorded: Option<CommandRecord>,
    /// The run named, with its requests and their answers (no audit log), as the
    /// statement saw it.
    pub run: Option<super::RunSnapshot>,
}

/// The submission `new` in one statement of the caller's transaction: the idempotency
/// lookup, the read of the run the early check needs (by `new.run_id`, else the run of
/// `thread_id`), and — when there is no earlier command and the run (and the request
/// named, in it) exists — the command with its job. The caller decides on what was read, then commits or rolls back.
pub async fn submit_command(
    conn: &mut PgConnection,
    thread_id: Option<&crate::domain::ThreadId>,
    new: NewCommand,
) -> Result<Submission, PersistenceError> {
    let command_id = CommandId::new();
    let job = command_job(new.kind, &command_id);
    let rows: Vec<sqlx::postgres::PgRow> = crate::db::query(sqlx::AssertSqlSafe(submit_sql()))
        .bind(&command_id)
        .bind(new.kind)
        .bind(&new.run_id)
        .bind(&new.request_id)
        .bind(&new.idempotency_key)
        .bind(&new.payload)
        .bind(sqlx::types::Json(&new.operator))
        .bind(&new.note)
        .bind(&new.trace_context)
        .bind(&new.principal)
        .bind(&new.approver)
        .bind(thread_id)
        .bind(&job.id)
        .bind(job.kind)
        .bind(&job.job)
        .bind(job.max_attempts)
        .bind(job.meta_key)
        .bind(&job.meta_value)
        .fetch_all(&mut *conn)
        .await?;
    let (command, created) = match rows.first() {
        Some(row) => {
            use sqlx::Row;
            let command: Option<sqlx::types::Json<CommandRecord>> = row.try_get("c_command")?;
            let created: Option<bool> = row.try_get("c_created")?;
            (command.map(|c| c.0), created.unwrap_or(false))
        }
        None => (None, false),
    };
    let run = super::snapshot::snapshot_rows(&rows)?.map(|(run, requests, _)| super::RunSnapshot {
        run,
        hitl_requests: requests,
        audit_log: Vec::new(),
    });
    let (earlier, recorded) = match (command, created) {
        (Some(c), true) => (None, Some(c)),
        (Some(c), false) => (Some(c), None),
        (None, _) => (None, None),
    };
    Ok(Submission {
        earlier,
        recorded,
        run,
    })
}

/// The job that applies a command of `kind`.
fn command_job(kind: CommandKind, command_id: &CommandId) -> queue::JobRow {
    let command_id = command_id.clone();
    match kind {
        CommandKind::Resume => queue::job_row(&ApplyResume { command_id }),
        CommandKind::Remove => queue::job_row(&ApplyRemove { command_id }),
        CommandKind::Retry => queue::job_row(&ApplyRetry { command_id }),
    }
}

/// The statement [`submit_command`] runs: `$1`–`$11` the command (`$3` its run, or null
/// for the run of thread `$12`), `$13`–`$18` its job. At least one row: the command (an
/// earlier one, or the one inserted, as `c_command`, with `c_created`) beside each of
/// the run's snapshot rows, or beside nulls when there is no such run.
fn submit_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let json = COMMAND_COLUMNS
            .split(", ")
            .map(|c| {
                let camel = c
                    .split('_')
                    .enumerate()
                    .map(|(i, w)| {
                        if i == 0 {
                            w.to_owned()
                        } else {
                            w[..1].to_uppercase() + &w[1..]
                        }
                    })
                    .collect::<String>();
                format!("'{camel}', c.{c}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "with earlier as ( \
                 select {COMMAND_COLUMNS} from hitl_commands \
                 where $5::text is not null and kind = $2 and idempotency_key = $5), \
             target as ( \
                 select t.run_id from orchestrator_runs t \
                 where t.run_id = coalesce($3, (select h.run_id from orchestrator_runs h \
                     where $3::text is null and h.thread_id = $12))), \
             command as ( \
                 insert into hitl_commands (command_id, kind, run_id, request_id, \
                     idempotency_key, payload, operator, note, trace_context, principal, \
                     approver) \
                 select $1, $2, target.run_id, $4, $5, $6, $7, $8, $9, $10, $11 from target \
                 where not exists (select 1 from earlier) \
                   and ($4::text is null or exists (select 1 from hitl_requests r \
                        where r.request_id = $4 and r.run_id = target.run_id)) \
                 on conflict (kind, idempotency_key) do nothing returning {COMMAND_COLUMNS}), \
             job as ({} returning id), \
             cmd as (select *, false as created from earlier \
                 union all select *, true from command) \
             select {}, \
                 (select jsonb_build_object({json}) from cmd c) as c_command, \
                 (select c.created from cmd c) as c_created \
             from (select 1) one \
             left join orchestrator_runs o on o.run_id = (select run_id from target) \
             {} {}",
            queue::insert_job_sql(13, "command"),
            super::snapshot::snapshot_columns(),
            super::snapshot::SNAPSHOT_JOINS,
            super::snapshot::SNAPSHOT_ORDER,
        )
    })
}

/// The command with this id.
pub async fn find_command(
    executor: impl PgExecutor<'_>,
    command_id: &CommandId,
) -> Result<Option<CommandRecord>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {COMMAND_COLUMNS} from hitl_commands where command_id = $1"
    )))
    .bind(command_id)
    .fetch_optional(executor)
    .await?)
}

/// The commands of `run_id`, oldest first, at most `limit` of them.
pub async fn run_commands(
    executor: impl PgExecutor<'_>,
    run_id: &RunId,
    limit: i64,
) -> Result<Vec<CommandRecord>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {COMMAND_COLUMNS} from hitl_commands where run_id = $1 \
         order by created_at, command_id limit $2"
    )))
    .bind(run_id)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// The command recorded with this idempotency key for this kind.
pub async fn find_command_by_idempotency_key(
    executor: impl PgExecutor<'_>,
    kind: CommandKind,
    key: &str,
) -> Result<Option<CommandRecord>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {COMMAND_COLUMNS} from hitl_commands where kind = $1 and idempotency_key = $2"
    )))
    .bind(kind)
    .bind(key)
    .fetch_optional(executor)
    .await?)
}

/// What applying a command did.
#[derive(Clone, Debug)]
pub enum ApplyOutcome {
    /// Applied now: the run moved to `run_status` at `version`.
    Applied {
        command: CommandRecord,
        run_status: RunStatus,
        version: i64,
    },
    /// Refused now (conflict, terminal run, request not pending, invalid answer); the
    /// reason is in the command's `outcome`.
    Rejected { command: CommandRecord },
    /// The command had already ended earlier: nothing changed (a redelivery).
    AlreadyFinal { command: CommandRecord },
}

/// [`COMMAND_COLUMNS`] of the command aliased `alias`.
fn command_columns(alias: &str) -> String {
    COMMAND_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The select-list entries of a [`ToApply`] beside the command `c`'s columns: the named
/// request's items, approvals and deadline policy, the claim on the request acted on —
/// the named one, or for a remove naming none, `pending` (the run's pending request) —
/// and the hash of the run's latest event (the head the transition's events chain on).
fn shape_sql(pending: &str) -> String {
    format!(
        "(select {} from hitl_requests q where q.request_id = c.request_id) as shape_items, \
         (select case when q.claim_expires_at > now() then jsonb_build_object( \
                  'claimedBy', q.claimed_by, 'claimExpiresAt', q.claim_expires_at) end \
          from hitl_requests q where q.request_id = coalesce(c.request_id, {pending})) \
             as shape_claim, \
         (select q.approvals_required from hitl_requests q where q.request_id = c.request_id) \
             as shape_approvals_required, \
         (select q.on_timeout from hitl_requests q where q.request_id = c.request_id) \
             as shape_on_timeout, \
         (select {} from hitl_requests q where q.request_id = c.request_id) \
             as shape_approvals, \
         (select e.hash from run_audit_events e where e.run_id = c.run_id \
          order by e.run_version desc limit 1) as chain_head",
        super::requests::items_sql("q"),
        super::requests::approvals_sql("q")
    )
}

/// What the locking read of [`apply`] returns: the command with its shape, its run as
/// locked, and the run's version as the statement's snapshot saw it.
#[derive(sqlx::FromRow)]
struct LockedCommand {
    #[sqlx(flatten)]
    to_apply: ToApply,
    #[sqlx(flatten)]
    run: super::snapshot::PrefixedRun,
    seen_version: Option<i64>,
}

/// A command with the shape of the request it names (absent for a remove of a run).
#[derive(sqlx::FromRow)]
struct ToApply {
    #[sqlx(flatten)]
    command: CommandRecord,
    /// The named request's items (`null` for a command naming no request).
    #[sqlx(rename = "shape_items")]
    items: Option<sqlx::types::Json<Vec<RequestItem>>>,
    /// The claim on the request the command acts on, while its lease lasts.
    #[sqlx(rename = "shape_claim")]
    claim: Option<sqlx::types::Json<Claim>>,
    /// Distinct approvals the named request needs.
    #[sqlx(rename = "shape_approvals_required")]
    approvals_required: Option<i32>,
    #[sqlx(rename = "shape_on_timeout")]
    on_timeout: Option<crate::domain::TimeoutAction>,
    /// The approvals counted so far towards the named request's number.
    #[sqlx(rename = "shape_approvals")]
    approvals: Option<sqlx::types::Json<Approvals>>,
    chain_head: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct CommandPayload {
    #[serde(default)]
    responses: Vec<ResponseInput>,
    #[serde(default)]
    reason: Option<String>,
    /// Override another principal's claim (the API checked the `supervise` scope).
    #[serde(default)]
    force: bool,
}

/// What the command acts on besides the run: the named request's items and the number
/// of approvals it needs, and the claim on the request it acts on.
struct Subject {
    items: Vec<RequestItem>,
    claim: Option<Claim>,
    approvals_required: Option<i32>,
    on_timeout: Option<crate::domain::TimeoutAction>,
    approvals: Option<Approvals>,
    /// The run's chain head as read under its lock.
    chain_head: Option<Vec<u8>>,
    /// The run as locked.
    run: super::RunRecord,
}

/// Applies a recorded resume or remove command, exactly once in effect.
/// A resume that applies leaves the run `running`; `advance` says who moves it on.
pub async fn apply_command(
    tx: &mut Tx<'_>,
    command_id: &CommandId,
    advance: AdvanceBy,
) -> Result<ApplyOutcome, PersistenceError> {
    let (outcome, applying) = apply(tx, command_id, None).await?;
    if let Applying::Unwritten(mut unwritten) = applying {
        // The run moves on: its next advancement is pushed with the resume.
        if advance == AdvanceBy::Job && unwritten.state.run.status == RunStatus::Running {
            let run_id = unwritten.write.run_id().clone();
            unwritten.write.enqueue(&Advance { run_id });
        }
        unwritten.write.write(tx).await?;
    }
    Ok(outcome)
}

/// The job a command is applied by: its id and the worker holding its claim.
#[derive(Clone, Copy, Debug)]
pub struct JobClaim<'a> {
    pub job_id: &'a str,
    pub worker_id: &'a str,
}

/// A resume applied in memory: its writes, not yet made, and the run as they leave it,
/// with the request it answered — where the run goes on from in the same write.
pub struct Unwritten {
    pub write: super::TransitionWrite,
    pub state: super::RunState,
}

/// What is left to do after [`apply_command_for_job`].
pub enum Applying {
    /// Nothing (more) to write — the command had ended already, the deadline had
    /// nothing to expire: the caller completes the job before committing.
    Left,
    /// Refused: the command's rejection is written, with the job's completion (fenced on
    /// its claim) when a job applied it — whether that held.
    Rejected { job_completed: bool },
    /// A resume whose writes (the job's completion among them) are still to be made,
    /// with `TransitionWrite::write`; the caller may add the run's next steps first.
    Unwritten(Box<Unwritten>),
}

/// Whether a transition's write completed the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCompletion {
    /// Completed (fenced on its claim): commit, and do not complete it again.
    Completed,
    /// Not completed here: the caller completes it before committing.
    Left,
    /// Its claim is no longer this worker's: roll back.
    LostClaim,
}

/// [`apply_command`] by `job`, which moves the run on itself: a resume that applies is
/// returned unwritten, its job's completion among its writes.
pub async fn apply_command_for_job(
    tx: &mut Tx<'_>,
    command_id: &CommandId,
    job: JobClaim<'_>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    apply(tx, command_id, Some(job)).await
}

async fn apply(
    tx: &mut Tx<'_>,
    command_id: &CommandId,
    job: Option<JobClaim<'_>>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    // One statement finds the command, locks its run and then it (the run first, as
    // every transition does), and brings the named request's shape and claim. Its
    // snapshot is taken before any wait for those locks: a transition committed
    // meanwhile is seen in the locked rows (re-read once locked) but not in the
    // request's, so the run's version is read twice — as locked and as the snapshot
    // saw it — and when they differ, the shape and claim are read again (every change
    // of a request bumps its run's version under the run's lock).
    let locked: LockedCommand = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {}, {}, \
             (select v.version from orchestrator_runs v where v.run_id = c.run_id) \
                 as seen_version, {} \
         from orchestrator_runs r join hitl_commands c on c.run_id = r.run_id \
         where c.command_id = $1 \
         for no key update of r for update of c",
        command_columns("c"),
        super::snapshot::prefixed_run_columns("r"),
        shape_sql("r.pending_request_id"),
    )))
    .bind(command_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| PersistenceError::NotFound {
        entity: "command",
        id: command_id.to_string(),
    })?;
    let record: super::RunRecord = locked.run.into();
    let mut run = LockedRun {
        run_id: record.run_id.clone(),
        status: record.status,
        pending_request_id: record.pending_request_id.clone(),
        version: record.version,
    };
    let to_apply = if locked.seen_version == Some(run.version) {
        locked.to_apply
    } else {
        crate::db::query_as(sqlx::AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS}, {} from hitl_commands c where command_id = $1",
            shape_sql("$2"),
        )))
        .bind(command_id)
        .bind(&run.pending_request_id)
        .fetch_one(&mut **tx)
        .await?
    };
    let command = to_apply.command;
    let subject = Subject {
        items: to_apply.items.map(|i| i.0).unwrap_or_default(),
        claim: to_apply.claim.map(|c| c.0),
        approvals_required: to_apply.approvals_required,
        on_timeout: to_apply.on_timeout,
        approvals: to_apply.approvals.map(|a| a.0),
        chain_head: to_apply.chain_head,
        run: record,
    };
    if command.status.is_final() {
        return Ok((ApplyOutcome::AlreadyFinal { command }, Applying::Left));
    }
    let payload: CommandPayload = match serde_json::from_value(command.payload.clone()) {
        Ok(p) => p,
        Err(e) => {
            let why = Refusal::InvalidPayload {
                message: e.to_string(),
            };
            return reject(tx, &command, why, job).await;
        }
    };
    match command.kind {
        CommandKind::Resume => apply_resume(tx, &mut run, command, payload, subject, job).await,
        CommandKind::Remove => apply_remove(tx, &mut run, command, payload, subject, job).await,
        CommandKind::Retry => apply_retry(tx, &run, command, subject, job).await,
    }
}

async fn apply_resume(
    tx: &mut Tx<'_>,
    run: &mut LockedRun,
    command: CommandRecord,
    payload: CommandPayload,
    subject: Subject,
    job: Option<JobClaim<'_>>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    let Some(request_id) = command.request_id.clone() else {
        let why = Refusal::InvalidPayload {
            message: "a resume names no request".into(),
        };
        return reject(tx, &command, why, job).await;
    };
    let transition = Transition::Resume {
        request_id: request_id.clone(),
    };
    let outcome = match run.check(&transition, None) {
        Ok(o) => o,
        Err(PersistenceError::Transition { source, .. }) => {
            let why = explain_refusal(tx, run.context(Some(&request_id)), &source).await?;
            return reject(tx, &command, why, job).await;
        }
        Err(e) => return Err(e),
    };
    let shape = RequestShape {
        request_id: &request_id,
        items: &subject.items,
        approvals_required: subject.approvals_required,
    };
    let answered = match validate_responses(&shape, &payload.responses) {
        Ok(answered) => answered,
        Err(problem) => {
            let why = Refusal::InvalidResponse {
                message: problem.to_string(),
                field: problem.field,
            };
            return reject(tx, &command, why, job).await;
        }
    };
    // Everything the resume writes (a claim it breaks, an approval it counts) joins
    // one write, started on the run as locked.
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let mut write = super::TransitionWrite::new(run.clone(), subject.chain_head.clone());
    if let Some(refused) = settle_claim(&mut write, &command, &payload, &request_id, &subject)? {
        return reject(tx, &command, refused, job).await;
    }
    let mut approvals = None;
    if let Some(required) = subject.approvals_required
        && payload
            .responses
            .iter()
            .all(|r| r.response_type == ResponseType::Approval && r.approved == Some(true))
    {
        match count_approval(&mut write, &command, &request_id, &subject, required, now)? {
            Counted::Twice(why) => return reject(tx, &command, why, job).await,
            Counted::Short { approvals, version } => {
                // The run keeps waiting on the same request.
                let command_outcome = Succeeded {
                    status: RunStatus::AwaitingHitl,
                    version,
                    pending: Some(&request_id),
                    approvals: Some(&approvals),
                }
                .outcome(&run.run_id);
                write.complete(settled_by(&command, job, &command_outcome, now));
                let mut state_run = subject.run;
                state_run.version = version;
                return Ok(applied(
                    command,
                    command_outcome,
                    now,
                    (RunStatus::AwaitingHitl, version),
                    write,
                    super::RunState {
                        run: state_run,
                        requests: Vec::new(),
                    },
                ));
            }
            Counted::Enough(all) => approvals = Some(all),
        }
    }
    // The answers, the request's resolution, the run's move and the event, kept for
    // the transition's one write (the run's next steps may join them).
    let answers = Answers::of(&payload.responses, &answered);
    // After a claim broken in the same write, its event's version comes first.
    let version = write.run().version + 1;
    let entry = AuditEntry {
        request_id: Some(&request_id),
        ..command_entry(
            &command,
            version,
            AuditAction::Resume,
            (run.status, outcome.status),
            match &approvals {
                None => json!({ "responses": payload.responses.len() }),
                Some(a) => json!({ "responses": payload.responses.len(), "approvals": a }),
            },
        )
    };
    let command_outcome = Succeeded {
        status: outcome.status,
        version,
        pending: None,
        approvals: approvals.as_ref(),
    }
    .outcome(&run.run_id);
    let responses = answers.records(&request_id, &command.command_id, now);
    write.settle(
        super::transition::Settle {
            request_id: Some(request_id.clone()),
            answers,
            ..settled_by(&command, job, &command_outcome, now)
        },
        outcome.status,
        entry,
    );
    // The run as the resume leaves it, and the request as it answered it.
    let mut state_run = subject.run;
    state_run.status = outcome.status;
    state_run.pending_request_id = None;
    state_run.version = version;
    let answered_request = super::AnsweredRequest {
        request_id: request_id.clone(),
        status: crate::domain::RequestStatus::Resolved,
        on_timeout: subject.on_timeout,
        resolved_at: Some(now),
        items: subject.items,
        responses,
    };
    Ok(applied(
        command,
        command_outcome,
        now,
        (outcome.status, version),
        write,
        super::RunState {
            run: state_run,
            requests: vec![answered_request],
        },
    ))
}

/// `command`'s part of its transition, applied by `job` at `now` with `outcome`: a
/// resume's resolution of no request and no answers, which each command fills in.
fn settled_by(
    command: &CommandRecord,
    job: Option<JobClaim<'_>>,
    outcome: &Value,
    now: DateTime<Utc>,
) -> super::transition::Settle {
    super::transition::Settle {
        request_id: None,
        request_status: crate::domain::RequestStatus::Resolved,
        command_id: Some(command.command_id.clone()),
        resolved_by: command.operator.id.clone(),
        answers: Answers::default(),
        denial_reason: None,
        outcome: Some(outcome.clone()),
        job: job.map(|j| (j.job_id.to_owned(), j.worker_id.to_owned())),
        finished_at: now,
    }
}

/// A command applied in memory: the command as `write` will leave it (succeeded at
/// `now` with `outcome`, the run at `status` and `version`), and the write with the run as
/// it leaves it.
fn applied(
    command: CommandRecord,
    outcome: Value,
    now: DateTime<Utc>,
    (status, version): (RunStatus, i64),
    write: super::TransitionWrite,
    state: super::RunState,
) -> (ApplyOutcome, Applying) {
    let command = CommandRecord {
        status: CommandStatus::Succeeded,
        outcome: Some(outcome),
        error: None,
        attempts: command.attempts + 1,
        started_at: command.started_at.or(Some(now)),
        finished_at: Some(now),
        updated_at: now,
        ..command
    };
    (
        ApplyOutcome::Applied {
            command,
            run_status: status,
            version,
        },
        Applying::Unwritten(Box::new(Unwritten { write, state })),
    )
}

/// The event of `command`'s transition (`from → to`) at `version`, naming who sent it.
fn command_entry<'a>(
    command: &'a CommandRecord,
    version: i64,
    action: AuditAction,
    (from, to): (RunStatus, RunStatus),
    details: Value,
) -> AuditEntry<'a> {
    AuditEntry {
        run_version: version,
        action: Some(action),
        request_id: None,
        command_id: Some(&command.command_id),
        principal: command.principal.as_deref(),
        operator: Some(&command.operator),
        note: command.note.as_deref(),
        from_status: Some(from),
        to_status: Some(to),
        details: Some(details),
    }
}

/// A resume's answers as columns, each bound as an array and unnested, so the statement
/// storing them has the same text whatever their number.
#[derive(Default)]
pub(super) struct Answers {
    pub ids: Vec<String>,
    pub positions: Vec<i32>,
    pub types: Vec<&'static str>,
    pub approved: Vec<Option<bool>>,
    pub options: Vec<Option<String>>,
    pub texts: Vec<Option<String>>,
    pub responders: Vec<Option<String>>,
    pub names: Vec<Option<String>>,
    pub items: Vec<String>,
    pub edited: Vec<Option<Value>>,
    /// The ids and types as typed values, for [`Answers::records`].
    typed: Vec<(ResponseId, ResponseType)>,
}

impl Answers {
    fn of(responses: &[ResponseInput], answered: &[&str]) -> Self {
        let mut a = Answers::default();
        for (position, (r, item_id)) in responses.iter().zip(answered).enumerate() {
            let id = ResponseId::new();
            a.ids.push(id.to_string());
            a.typed.push((id, r.response_type));
            a.positions
                .push(i32::try_from(position).unwrap_or(i32::MAX));
            a.types.push(r.response_type.as_str());
            // An edit approves, with other arguments.
            a.approved.push(match r.response_type {
                ResponseType::Edit => Some(true),
                _ => r.approved,
            });
            a.options.push(r.option_id.clone());
            a.texts.push(r.freeform_text.clone());
            a.responders.push(r.responder_id.clone());
            a.names.push(r.responder_display_name.clone());
            a.items.push((*item_id).to_owned());
            a.edited.push(r.edited_arguments.clone());
        }
        a
    }

    /// The answers as the request's records show them, as stored by `command_id` at `at`.
    fn records(
        &self,
        request_id: &RequestId,
        command_id: &CommandId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<super::ResponseRecord> {
        self.typed
            .iter()
            .enumerate()
            .map(|(i, (id, kind))| super::ResponseRecord {
                response_id: id.clone(),
                request_id: request_id.clone(),
                item_id: Some(self.items[i].clone()),
                response_type: *kind,
                edited_arguments: self.edited[i].clone(),
                approved: self.approved[i],
                option_id: self.options[i].clone(),
                freeform_text: self.texts[i].clone(),
                responder_id: self.responders[i].clone(),
                responder_display_name: self.names[i].clone(),
                command_id: Some(command_id.clone()),
                created_at: at,
            })
            .collect()
    }
}

/// What counting an approval came to.
enum Counted {
    /// This approver was counted before.
    Twice(Refusal),
    /// Counted, and still short of the number needed: the run keeps waiting.
    Short { approvals: Approvals, version: i64 },
    /// Counted, and the number is reached: the resume resolves the request.
    Enough(Approvals),
}

/// Counts the command's approval of `request_id` once per approver, in `write` (the
/// primary key of `hitl_approvals` would refuse a second; the approvals read under the
/// run's lock say so first). Short of the number needed, the run stays waiting with an
/// `approval_recorded` event, and the approver's own claim ends with it.
fn count_approval(
    write: &mut super::TransitionWrite,
    command: &CommandRecord,
    request_id: &RequestId,
    subject: &Subject,
    required: i32,
    now: DateTime<Utc>,
) -> Result<Counted, PersistenceError> {
    let approver = command
        .approver
        .clone()
        .unwrap_or_else(|| format!("operator:{}", command.operator.id));
    let mut approvals = subject.approvals.clone().unwrap_or(Approvals {
        required: i64::from(required),
        have: 0,
        by: Vec::new(),
    });
    if approvals.counts(&approver) {
        let mut context = write.run().context(Some(request_id));
        context.request_status = Some(crate::domain::RequestStatus::Pending);
        return Ok(Counted::Twice(Refusal::AlreadyApproved {
            message: format!(
                "{approver} has already approved request {request_id} ({} of {} approvals are in)",
                approvals.have, approvals.required
            ),
            approver,
            context,
        }));
    }
    approvals.have += 1;
    approvals.by.push(super::requests::Approval {
        approver: approver.clone(),
        principal: command.principal.clone(),
        operator: command.operator.clone(),
        command_id: command.command_id.clone(),
        at: now,
    });
    write.count_approval(super::transition::ApprovalRow {
        approver: approver.clone(),
        principal: command.principal.clone(),
        operator: json!(command.operator),
        at: now,
    });
    if approvals.have >= i64::from(required) {
        return Ok(Counted::Enough(approvals));
    }
    let mut details = json!({ "approver": approver, "have": approvals.have,
                              "required": approvals.required });
    if subject.claim.as_ref().is_some_and(|c| {
        c.claimed_by
            .is(command.principal.as_deref(), &command.operator)
    }) {
        write.set_claim(None);
        details["claimReleased"] = json!(true);
    }
    let t = Transition::Note {
        request_id: request_id.clone(),
        note: RequestNote::ApprovalRecorded,
    };
    let version = super::claims::note_in(
        write,
        &t,
        request_id,
        Some(Actor {
            principal: command.principal.as_deref(),
            operator: &command.operator,
            command_id: Some(&command.command_id),
        }),
        details,
    )?;
    Ok(Counted::Short { approvals, version })
}

/// A claim another principal holds on the request stops the command (`claimed`), unless
/// the command was forced (the API checked `supervise`): then the claim is broken in
/// `write`, with its own audit event before the command's.
fn settle_claim(
    write: &mut super::TransitionWrite,
    command: &CommandRecord,
    payload: &CommandPayload,
    request_id: &RequestId,
    subject: &Subject,
) -> Result<Option<Refusal>, PersistenceError> {
    let Some(claim) = &subject.claim else {
        return Ok(None);
    };
    if claim
        .claimed_by
        .is(command.principal.as_deref(), &command.operator)
    {
        return Ok(None);
    }
    if !payload.force {
        let mut context = write.run().context(Some(request_id));
        context.request_status = Some(crate::domain::RequestStatus::Pending);
        return Ok(Some(claimed_refusal(claim, context)));
    }
    let by = Actor {
        principal: command.principal.as_deref(),
        operator: &command.operator,
        command_id: Some(&command.command_id),
    };
    super::claims::break_claim(write, request_id, claim, by)?;
    Ok(None)
}

/// `claimed`: who holds the request, and until when.
pub fn claimed_refusal(claim: &Claim, context: RefusalContext) -> Refusal {
    let request = context
        .request_id
        .as_ref()
        .map_or_else(|| "the request".to_owned(), |id| format!("request {id}"));
    Refusal::Claimed {
        message: format!(
            "{request} is claimed by {} until {}",
            claim.claimed_by.describe(),
            claim
                .claim_expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        holder: claim.claimed_by.clone(),
        expires_at: claim.claim_expires_at,
        context,
    }
}

async fn apply_remove(
    tx: &mut Tx<'_>,
    run: &mut LockedRun,
    command: CommandRecord,
    payload: CommandPayload,
    subject: Subject,
    job: Option<JobClaim<'_>>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    let transition = Transition::Remove {
        request_id: command.request_id.clone(),
    };
    let outcome = match run.check(&transition, None) {
        Ok(o) => o,
        Err(PersistenceError::Transition { source, .. }) => {
            let why =
                explain_refusal(tx, run.context(command.request_id.as_ref()), &source).await?;
            return reject(tx, &command, why, job).await;
        }
        Err(e) => return Err(e),
    };
    let reason = payload
        .reason
        .clone()
        .unwrap_or_else(|| "removed by an operator".to_owned());
    let denied = run.pending_request_id.clone();
    // A claim broken, the request denied, the run cancelled, the events, the command's
    // success and its job's completion: one write.
    let mut write = super::TransitionWrite::new(run.clone(), subject.chain_head.clone());
    if let Some(request_id) = &denied
        && let Some(refused) = settle_claim(&mut write, &command, &payload, request_id, &subject)?
    {
        return reject(tx, &command, refused, job).await;
    }
    let version = write.run().version + 1;
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let command_outcome = Succeeded::moved(outcome.status, version).outcome(&run.run_id);
    let entry = AuditEntry {
        request_id: denied.as_ref(),
        ..command_entry(
            &command,
            version,
            AuditAction::Remove,
            (run.status, outcome.status),
            json!({ "reason": reason }),
        )
    };
    write.settle(
        super::transition::Settle {
            request_id: denied.clone(),
            request_status: crate::domain::RequestStatus::Denied,
            denial_reason: Some(reason.clone()),
            ..settled_by(&command, job, &command_outcome, now)
        },
        outcome.status,
        entry,
    );
    let mut state_run = subject.run;
    state_run.status = outcome.status;
    state_run.pending_request_id = None;
    state_run.version = version;
    state_run.status_reason = Some(reason);
    let command = CommandRecord {
        request_id: command.request_id.clone().or(denied),
        ..command
    };
    Ok(applied(
        command,
        command_outcome,
        now,
        (outcome.status, version),
        write,
        super::RunState {
            run: state_run,
            requests: Vec::new(),
        },
    ))
}

/// `failed → running` at the node that failed: the run's checkpointed context and
/// runner state are kept, its failure reason cleared, and the node is entered again: its
/// attempt counter (`runnerMetadata.nodeAttempts`) moves on, so the agent sees a new
/// attempt key. Returned unwritten, like a resume: the run's next steps may join it.
async fn apply_retry(
    tx: &mut Tx<'_>,
    run: &LockedRun,
    command: CommandRecord,
    subject: Subject,
    job: Option<JobClaim<'_>>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    let outcome = match run.check(&Transition::Retry, None) {
        Ok(o) => o,
        Err(PersistenceError::Transition { .. }) => {
            let why =
                explain_retry_refusal(tx, run.context(None), Some(command.created_at)).await?;
            return reject(tx, &command, why, job).await;
        }
        Err(e) => return Err(e),
    };
    let mut record = subject.run;
    let failed_because = record.status_reason.take();
    let mut meta = record.runner_metadata.clone();
    if let Some(cursor) = meta
        .get("cursor")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        let attempts = meta
            .get("nodeAttempts")
            .and_then(|a| a.get(&cursor))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if !meta.get("nodeAttempts").is_some_and(Value::is_object) {
            meta["nodeAttempts"] = json!({});
        }
        meta["nodeAttempts"][&cursor] = json!(attempts + 1);
    }
    let version = run.version + 1;
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let command_outcome = Succeeded::moved(outcome.status, version).outcome(&run.run_id);
    let entry = command_entry(
        &command,
        version,
        AuditAction::Retry,
        (run.status, outcome.status),
        json!({ "failedBecause": failed_because }),
    );
    let mut write = super::TransitionWrite::new(run.clone(), subject.chain_head);
    write.settle(
        settled_by(&command, job, &command_outcome, now),
        outcome.status,
        entry,
    );
    write.retry(meta.clone());
    record.status = outcome.status;
    record.version = version;
    record.runner_metadata = meta;
    record.finished_at = None;
    record.agent_retry = None;
    Ok(applied(
        command,
        command_outcome,
        now,
        (outcome.status, version),
        write,
        super::RunState {
            run: record,
            requests: Vec::new(),
        },
    ))
}

/// Why a retry cannot apply: another retry (after `since`, the refused command's own
/// submission) already put the run back to running (`conflict`, naming it), or the run
/// is simply not failed (`run_not_failed`).
pub async fn explain_retry_refusal(
    conn: &mut PgConnection,
    context: RefusalContext,
    since: Option<DateTime<Utc>>,
) -> Result<Refusal, PersistenceError> {
    let run_id = context.run_id.clone().unwrap_or_else(RunId::new);
    let status = context.run_status;
    if let Some(since) = since {
        let retried: Option<SettlingEvent> = crate::db::query_as(
            "select action, command_id, operator_id, operator_display_name, operator_email, \
                 created_at from run_audit_events \
             where run_id = $1 and action = 'retry' and created_at >= $2 \
             order by event_id limit 1",
        )
        .bind(&run_id)
        .bind(since)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(e) = retried {
            let winner = Winner::from(e);
            return Ok(Refusal::Conflict {
                message: format!("run {run_id} was already retried by {}", winner.describe()),
                winner,
                context,
            });
        }
    }
    let status = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    Ok(Refusal::RunNotFailed {
        message: format!("run {run_id} is {status}, not failed: only a failed run can be retried"),
        context,
    })
}

/// Where a command that applied left its run (the command's `outcome`).
struct Succeeded<'a> {
    status: RunStatus,
    version: i64,
    /// The request the run still waits on (an approval short of the number needed).
    pending: Option<&'a RequestId>,
    approvals: Option<&'a Approvals>,
}

impl Succeeded<'_> {
    fn moved(status: RunStatus, version: i64) -> Self {
        Self {
            status,
            version,
            pending: None,
            approvals: None,
        }
    }
}

impl Succeeded<'_> {
    /// The command's `outcome`: where it left the run.
    fn outcome(&self, run_id: &RunId) -> Value {
        let mut outcome = json!({ "run": { "runId": run_id, "status": self.status,
                                       "version": self.version,
                                       "pendingRequestId": self.pending } });
        if let Some(a) = self.approvals {
            outcome["approvals"] = json!(a);
        }
        outcome
    }
}

/// Ends `command` `rejected` with `why`, and completes `job` (fenced on its claim) in
/// the same statement.
async fn reject(
    tx: &mut Tx<'_>,
    command: &CommandRecord,
    why: Refusal,
    job: Option<JobClaim<'_>>,
) -> Result<(ApplyOutcome, Applying), PersistenceError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "with command as ( \
                 update hitl_commands set status = 'rejected', outcome = $2, error = null, \
                     attempts = attempts + 1, started_at = coalesce(started_at, now()), \
                     finished_at = now(), updated_at = now() \
                 where command_id = $1 returning {COMMAND_COLUMNS}), \
             job_done as ({} returning 1) \
             select command.*, exists (select 1 from job_done) as job_completed from command",
            queue::complete_sql("$3", "$4", "true")
        )
    });
    #[derive(sqlx::FromRow)]
    struct Rejected {
        #[sqlx(flatten)]
        command: CommandRecord,
        job_completed: bool,
    }
    let rejected: Rejected = crate::db::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(&command.command_id)
        .bind(why.to_json())
        .bind(job.map(|j| j.job_id))
        .bind(job.map(|j| j.worker_id))
        .fetch_one(&mut **tx)
        .await?;
    Ok((
        ApplyOutcome::Rejected {
            command: rejected.command,
        },
        Applying::Rejected {
            job_completed: rejected.job_completed,
        },
    ))
}

/// Ends a command `failed` for good (its job ran out of attempts), unless it already
/// ended. Returns the command as it now is.
pub async fn fail_command(
    tx: &mut Tx<'_>,
    command_id: &CommandId,
    error: &str,
) -> Result<Option<CommandRecord>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "update hitl_commands set status = 'failed', error = $2, outcome = null, \
             finished_at = now(), updated_at = now() \
         where command_id = $1 and status in ('queued', 'running') returning {COMMAND_COLUMNS}"
    )))
    .bind(command_id)
    .bind(error)
    .fetch_optional(&mut **tx)
    .await?)
}

#[derive(sqlx::FromRow)]
struct SettlingEvent {
    action: AuditAction,
    command_id: Option<CommandId>,
    operator_id: Option<String>,
    operator_display_name: Option<String>,
    operator_email: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<SettlingEvent> for Winner {
    fn from(e: SettlingEvent) -> Self {
        let operator = e.operator_id.map(|id| Operator {
            id,
            display_name: e.operator_display_name,
            email: e.operator_email,
        });
        Winner {
            command_id: e.command_id,
            action: e.action,
            operator,
            at: e.created_at,
        }
    }
}

/// Explains, from the audit trail, why a command naming `context.request_id` cannot
/// apply to the run `context` describes (the state machine said `error`): another
/// command (or the deadline) settled the request or ended the run first (`conflict`,
/// naming the winner), the run ended on its own (`run_terminal`), or the request is
/// simply not the pending one (`not_pending`). The API's early check and the worker
/// applying the command both ask this, so both answer alike.
pub async fn explain_refusal(
    conn: &mut PgConnection,
    mut context: RefusalContext,
    error: &TransitionError,
) -> Result<Refusal, PersistenceError> {
    const EVENT: &str = "select action, command_id, operator_id, operator_display_name, \
        operator_email, created_at from run_audit_events";
    let (Some(run_id), Some(status)) = (context.run_id.clone(), context.run_status) else {
        return Ok(Refusal::NotPending {
            message: error.to_string(),
            context,
        });
    };
    let pending = match &context.pending_request_id {
        Some(p) => format!("the pending request is {p}"),
        None => format!("the run has no pending request (it is {status})"),
    };
    if let Some(request_id) = context.request_id.clone() {
        if context.request_status.is_none() {
            context.request_status =
                crate::db::query_scalar("select status from hitl_requests where request_id = $1")
                    .bind(&request_id)
                    .fetch_optional(&mut *conn)
                    .await?;
        }
        let settled: Option<SettlingEvent> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
            "{EVENT} where run_id = $1 and request_id = $2 \
             and action in ('resume', 'remove', 'expire') order by event_id limit 1"
        )))
        .bind(&run_id)
        .bind(&request_id)
        .fetch_optional(&mut *conn)
        .await?;
        if context.pending_request_id.as_ref() != Some(&request_id) {
            let state = context
                .request_status
                .map_or_else(String::new, |s| format!(" ({s})"));
            return Ok(match settled {
                Some(e) => {
                    let winner = Winner::from(e);
                    Refusal::Conflict {
                        message: format!(
                            "request {request_id} was already settled{state} by {}; {pending}",
                            winner.describe()
                        ),
                        winner,
                        context,
                    }
                }
                None => Refusal::NotPending {
                    message: match context.request_status {
                        Some(s) => format!("request {request_id} is {s}, not pending; {pending}"),
                        None => format!("{error}; {pending}"),
                    },
                    context,
                },
            });
        }
    }
    if status.is_terminal() {
        let ended: Option<SettlingEvent> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
            "{EVENT} where run_id = $1 and to_status = $2 and command_id is not null \
             order by event_id desc limit 1"
        )))
        .bind(&run_id)
        .bind(status)
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(match ended {
            Some(e) => {
                let winner = Winner::from(e);
                Refusal::Conflict {
                    message: format!("run {run_id} was already {status} by {}", winner.describe()),
                    winner,
                    context,
                }
            }
            None => Refusal::RunTerminal {
                message: format!("run {run_id} is already {status}"),
                context,
            },
        });
    }
    Ok(Refusal::NotPending {
        message: format!("{error}; {pending}"),
        context,
    })
}
