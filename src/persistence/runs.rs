//! Runs: creation, lookup, and the transitions the engine makes while it executes a plan
//! (start, checkpoint after a node, pause at a HITL node, finish).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgExecutor;

use super::jobs::{Advance, Expire};
use super::queue;
use super::{AuditEntry, PersistenceError, Tx};
use crate::domain::{
    AuditAction, BriefId, RequestId, ResponseType, RunId, RunStatus, ThreadId, TimeoutAction,
    Transition,
};

/// The brief a new run works from.
#[derive(Clone, Debug)]
pub enum BriefInput {
    /// Create a brief with this title and content.
    New { title: String, content: Value },
    /// Reuse an existing brief.
    Existing(BriefId),
}

/// Everything a new run starts with.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// Its brief.
    pub brief: BriefInput,
    /// A client-chosen thread id; generated when absent.
    pub thread_id: Option<ThreadId>,
    /// The validated plan (JSON object).
    pub plan: Value,
    /// Initial execution context (JSON object).
    pub execution_context: Value,
    /// Initial runner metadata (JSON object).
    pub runner_metadata: Value,
    /// The credential that created it (its name).
    pub principal: Option<String>,
}

/// What creating a run returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedRun {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub brief_id: BriefId,
    pub status: RunStatus,
    pub version: i64,
}

/// Creates the brief (when new) and the run, `queued`, at version 1, with its
/// `run_created` audit event (the first of its chain, hashed and signed here), the
/// deliveries of the channels that want it and the run's first advancement job, in one
/// statement of the caller's transaction (no run without its job). A taken thread id
/// leaves only the new brief written, which the caller's rollback undoes.
pub async fn create_run(tx: &mut Tx<'_>, new: NewRun) -> Result<CreatedRun, PersistenceError> {
    let (brief_id, created_brief) = match new.brief {
        BriefInput::New { title, content } => (BriefId::new(), Some((title, content))),
        BriefInput::Existing(id) => (id, None),
    };
    let run_id = RunId::new();
    let thread_id = new.thread_id.unwrap_or_else(ThreadId::new);
    let created_at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let entry = AuditEntry {
        run_version: 1,
        action: Some(AuditAction::RunCreated),
        principal: new.principal.as_deref(),
        to_status: Some(RunStatus::Queued),
        ..AuditEntry::default()
    };
    let fields = super::audit::chain_fields(&run_id, &entry, None, created_at);
    let hash = super::audit::event_hash(&fields);
    let (signature, key_id) = super::audit::signature_of(&hash);
    let job = queue::job_row(&Advance {
        run_id: run_id.clone(),
    });
    let trace = crate::telemetry::current_trace_context().map(|c| json!({ "trace": c }));
    let (title, content) = created_brief.unzip();
    // `on conflict do nothing` instead of catching the unique violation: a violation
    // would abort the caller's transaction.
    let (brief_found, created): (bool, bool) =
        crate::db::query_as(sqlx::AssertSqlSafe(create_sql()))
            .bind(&run_id)
            .bind(&thread_id)
            .bind(&brief_id)
            .bind(&new.plan)
            .bind(&new.execution_context)
            .bind(&new.runner_metadata)
            .bind(title.is_some())
            .bind(title)
            .bind(content)
            .bind(&fields.action)
            .bind(&fields.to_status)
            .bind(&fields.details)
            .bind(&fields.principal)
            .bind(fields.created_at)
            .bind(&fields.trace_id)
            .bind(hash.as_slice())
            .bind(signature)
            .bind(key_id)
            .bind(AuditAction::RunCreated.event_name())
            .bind(trace)
            .bind(queue::DEFAULT_MAX_ATTEMPTS)
            .bind(&job.id)
            .bind(job.kind)
            .bind(&job.job)
            .bind(job.max_attempts)
            .bind(job.meta_key)
            .bind(&job.meta_value)
            .fetch_one(&mut **tx)
            .await?;
    if !brief_found {
        return Err(PersistenceError::NotFound {
            entity: "brief",
            id: brief_id.to_string(),
        });
    }
    if !created {
        return Err(PersistenceError::ThreadTaken(thread_id.to_string()));
    }
    super::audit::remember_head(&run_id, 1, &hash);
    Ok(CreatedRun {
        run_id,
        thread_id,
        brief_id,
        status: RunStatus::Queued,
        version: 1,
    })
}

/// The statement [`create_run`] runs: `$1`–`$6` the run, `$7`–`$9` a new brief (`$7`:
/// whether there is one; else `$3` must exist), `$10`–`$18` its first event, `$19` the
/// event's name for notifications, `$20`–`$21` the deliveries' jobs' trace and max
/// attempts, `$22`–`$27` the advancement job.
fn create_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "with brief_new as ( \
                 insert into briefs (brief_id, title, content) \
                 select $3, $8, $9 where $7 returning brief_id), \
             brief as ( \
                 select brief_id from brief_new \
                 union all select brief_id from briefs where brief_id = $3 and not $7), \
             run_write as ( \
                 insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan, \
                     execution_context, runner_metadata) \
                 select $1, $2, brief.brief_id, 'queued', $4, $5, $6 from brief \
                 on conflict (thread_id) do nothing returning run_id), \
             event as ( \
                 insert into run_audit_events (run_id, run_version, action, to_status, \
                     details, principal, created_at, trace_id, prev_hash, hash, signature, \
                     key_id) \
                 select $1, 1, $10, $11, $12, $13, $14, $15, null, $16, $17, $18 \
                 from run_write \
                 returning event_id, run_version, request_id), \
             raised as (select null::text as request_id, null::text as node_id, \
                 null::jsonb as assignees where false), \
             {}, \
             job as ({} returning 1) \
             select exists (select 1 from brief), exists (select 1 from run_write)",
            super::notifications::deliveries_cte(
                "cross join (select $19::text, null::text, '[]'::jsonb, null::int) \
                     as f(name, node_id, named, notice_seconds)",
                "$20",
                "$21",
            ),
            queue::insert_job_sql(22, "run_write")
        )
    })
}

/// How a caller names a run.
#[derive(Clone, Debug)]
pub enum RunRef {
    /// By run id.
    Id(RunId),
    /// By thread id.
    Thread(ThreadId),
}

/// The run's identity and position in the state machine, without its large documents.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunHeader {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub brief_id: BriefId,
    pub status: RunStatus,
    pub pending_request_id: Option<RequestId>,
    pub version: i64,
}

/// Finds a run by run id or thread id.
pub async fn find_run(
    executor: impl PgExecutor<'_>,
    by: &RunRef,
) -> Result<Option<RunHeader>, PersistenceError> {
    const COLUMNS: &str = "select run_id, thread_id, brief_id, status, pending_request_id, version from orchestrator_runs";
    let row = match by {
        RunRef::Id(id) => {
            crate::db::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} where run_id = $1")))
                .bind(id)
                .fetch_optional(executor)
                .await?
        }
        RunRef::Thread(id) => {
            crate::db::query_as(sqlx::AssertSqlSafe(format!(
                "{COLUMNS} where thread_id = $1"
            )))
            .bind(id)
            .fetch_optional(executor)
            .await?
        }
    };
    Ok(row)
}

/// The documents the engine writes back as a run moves on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepState {
    /// The new execution context (JSON object).
    pub execution_context: Value,
    /// The new runner metadata: cursor, node attempts, agent notes (JSON object).
    pub runner_metadata: Value,
    /// New plan artifacts, when the plan document itself changes (JSON object).
    pub plan: Option<Value>,
    /// A node's runner state to store or clear with this step, if it changed.
    pub runner_state: Option<NodeRunnerState>,
}

/// A node's runner state as its agent sent it: exact JSON text, or `None` to clear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRunnerState {
    pub node_id: String,
    pub state: Option<String>,
}

/// The runner state `node_id` of the run stored last, exactly as its agent sent it.
pub async fn runner_state(
    executor: impl PgExecutor<'_>,
    run_id: &RunId,
    node_id: &str,
) -> Result<Option<String>, PersistenceError> {
    Ok(crate::db::query_scalar(
        "select state from run_runner_states where run_id = $1 and node_id = $2",
    )
    .bind(run_id)
    .bind(node_id)
    .fetch_optional(executor)
    .await?)
}

/// `queued → running`: a worker begins executing the run (the run locked with its
/// chain head, then one write).
pub async fn start_run(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    expected_version: i64,
) -> Result<i64, PersistenceError> {
    let mut write = super::lock_for_write(tx, run_id).await?;
    let version = write.start(expected_version)?;
    write.write(tx).await?;
    Ok(version)
}

/// A node that finished, as a checkpoint records it.
#[derive(Clone, Debug)]
pub struct Checkpoint<'a> {
    /// The node that finished.
    pub node_id: &'a str,
    /// The state the run moves on with.
    pub state: &'a StepState,
    /// `node_completed`, or `hitl_disabled` when a HITL node was resolved by its policy
    /// because HITL is switched off.
    pub action: AuditAction,
    /// What the audit event adds (`nodeId` is added to an object).
    pub details: Value,
}

/// Records that a node finished and the run moved on (`running → running`), with the
/// new state. Refused when `expected_version` is stale, so a worker that lost its lease
/// cannot write.
pub async fn checkpoint(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    expected_version: i64,
    step: Checkpoint<'_>,
) -> Result<i64, PersistenceError> {
    let mut write = super::lock_for_write(tx, run_id).await?;
    let version = write.checkpoint(expected_version, step)?;
    write.write(tx).await?;
    Ok(version)
}

/// A HITL request to raise.
#[derive(Clone, Debug)]
pub struct NewRequest {
    /// The id to raise it under (the caller records it in the runner metadata it
    /// writes in the same transaction).
    pub request_id: RequestId,
    /// The node that pauses.
    pub node_id: String,
    /// What the operator is asked.
    pub operator_prompt: String,
    /// The kinds of answer accepted (the one item's; empty with several items).
    pub response_types: Vec<ResponseType>,
    /// The options offered (`[{id, label}]`; the one item's, empty with several).
    pub options: Value,
    /// Each decision asked for (at least one).
    pub items: Vec<super::RequestItem>,
    /// Who may answer it; `None`: anyone with the operate scope.
    pub assignees: Option<super::Assignees>,
    /// Distinct approvals needed before it resolves (`None`: one answer settles it).
    pub approvals_required: Option<u32>,
    /// Facets and capability contract (JSON object).
    pub contract_summary: Value,
    /// The deadline, with what it does when it passes.
    pub deadline: Option<(DateTime<Utc>, TimeoutAction)>,
    /// Reminders and escalation while it is pending.
    pub follow_up: Option<Box<super::FollowUp>>,
}

/// `running → awaiting_hitl`: raises a request, makes it the run's pending request, and
/// stores the state the run paused with — the run locked with its chain head in one
/// statement, then everything in one write ([`raise_into`] on a `TransitionWrite`).
pub async fn raise_request(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    expected_version: i64,
    request: &NewRequest,
    state: &StepState,
) -> Result<(RequestId, i64), PersistenceError> {
    let mut write = super::lock_for_write(tx, run_id).await?;
    let raised = raise_into(&mut write, expected_version, request, state)?;
    write.write(tx).await?;
    Ok(raised)
}

/// The event details of raising `request`: what a live view needs to show it (arguments
/// stay in the request).
pub(super) fn raise_details(request: &NewRequest) -> Value {
    json!({ "nodeId": request.node_id, "items": request.items.iter().map(|i| json!({
        "itemId": i.item_id, "kind": i.kind, "title": i.title,
        "tool": i.tool.as_ref().map(|t| &t.name) })).collect::<Vec<_>>() })
}

/// [`raise_request`] as a step of `write` (a transition kept for one statement): the
/// request's row, the run's pause and the event, and the jobs of its deadline (the
/// expiry and the notices) and its follow-ups (reminders, escalations) join the write.
pub fn raise_into(
    write: &mut super::TransitionWrite,
    expected_version: i64,
    request: &NewRequest,
    state: &StepState,
) -> Result<(RequestId, i64), PersistenceError> {
    let version = write.raise(expected_version, request, state)?;
    let request_id = request.request_id.clone();
    // The deadline's notices are the write's own (from the channels that want them).
    if let Some((at, _)) = request.deadline {
        let expire = Expire {
            request_id: request_id.clone(),
        };
        write.enqueue_at(&expire, at);
    }
    if let Some(follow_up) = &request.follow_up {
        super::claims::follow_up_jobs(write, &request_id, follow_up);
    }
    Ok((request_id, version))
}

/// How the engine ends a run.
#[derive(Clone, Debug)]
pub struct Finish {
    /// `completed`, `failed` or `cancelled`.
    pub status: RunStatus,
    /// Why (a failure message, the rejection that cancelled it).
    pub reason: Option<String>,
    /// The node that ended it, if one did.
    pub node_id: Option<String>,
    /// The final state, when it changed.
    pub state: Option<StepState>,
}

/// The event details of a checkpoint: the step's, with the node named.
pub(super) fn checkpoint_details(step: &Checkpoint<'_>) -> Value {
    let mut details = step.details.clone();
    if let Value::Object(map) = &mut details {
        map.insert("nodeId".into(), json!(step.node_id));
    }
    details
}

/// The transition that ends a run with `status`.
pub(super) fn finish_transition(
    run_id: &RunId,
    status: RunStatus,
) -> Result<Transition, PersistenceError> {
    Ok(match status {
        RunStatus::Completed => Transition::Complete,
        RunStatus::Failed => Transition::Fail,
        RunStatus::Cancelled => Transition::Cancel,
        other => {
            return Err(PersistenceError::Transition {
                run_id: run_id.clone(),
                source: crate::domain::TransitionError::IllegalFrom {
                    from: other,
                    transition: "finish",
                },
            });
        }
    })
}

/// `running → completed | failed | cancelled` (and `queued → failed`), by the engine.
pub async fn finish_run(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    expected_version: i64,
    finish: &Finish,
) -> Result<i64, PersistenceError> {
    let mut write = super::lock_for_write(tx, run_id).await?;
    let version = write.finish(expected_version, finish)?;
    write.write(tx).await?;
    Ok(version)
}
