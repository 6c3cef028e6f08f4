//! The full snapshot of a run — the run row with plan, context and runner metadata, every
//! HITL request with its responses, and the audit log — read in one consistent view. It
//! serialises to the run JSON of DESIGN.md (camelCase, every field present, `null` when
//! empty), so the API and rehydration share one read model.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgConnection, PgPool, Row};

use super::PersistenceError;
use crate::domain::{
    AuditAction, BriefId, CommandId, RequestId, RequestStatus, ResponseId, ResponseType, RunId,
    RunStatus, ThreadId, TimeoutAction,
};

/// The run row.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub brief_id: BriefId,
    pub status: RunStatus,
    pub status_reason: Option<String>,
    pub pending_request_id: Option<RequestId>,
    pub version: i64,
    pub plan: Value,
    pub execution_context: Value,
    pub runner_metadata: Value,
    /// While the run waits for an agent that is down: the outage; else `null`.
    #[schema(value_type = Option<super::AgentRetry>)]
    pub agent_retry: Option<sqlx::types::Json<super::AgentRetry>>,
    pub rehydrated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One stored answer, with every field it was sent with.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseRecord {
    pub response_id: ResponseId,
    #[serde(skip)]
    pub request_id: RequestId,
    /// The item it answers.
    pub item_id: Option<String>,
    pub response_type: ResponseType,
    /// With `edit`: the arguments the tool is to run with.
    pub edited_arguments: Option<Value>,
    pub approved: Option<bool>,
    pub option_id: Option<String>,
    pub freeform_text: Option<String>,
    pub responder_id: Option<String>,
    pub responder_display_name: Option<String>,
    pub command_id: Option<CommandId>,
    pub created_at: DateTime<Utc>,
}

/// One HITL request with its answers.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub request_id: RequestId,
    pub node_id: String,
    pub status: RequestStatus,
    pub operator_prompt: String,
    pub response_types: Vec<String>,
    pub options: Value,
    /// Each decision the request asks for (one for a `hitl` node).
    #[sqlx(json)]
    pub items: Vec<super::RequestItem>,
    /// Who may answer it (`null`: anyone with the operate scope).
    #[schema(value_type = Option<super::Assignees>)]
    pub assignees: Option<sqlx::types::Json<super::Assignees>>,
    /// Who is working on it, while the claim's lease lasts (`null`: nobody).
    #[schema(value_type = Option<crate::domain::ClaimHolder>)]
    pub claimed_by: Option<sqlx::types::Json<crate::domain::ClaimHolder>>,
    /// When the claim's lease ends.
    pub claim_expires_at: Option<DateTime<Utc>>,
    /// For a request needing several approvals: how many, and who approved so far.
    #[schema(value_type = Option<super::Approvals>)]
    pub approvals: Option<sqlx::types::Json<super::Approvals>>,
    /// Reminders and escalation: what is planned and what was done (`reminded`,
    /// `escalated` steps); `null` without any.
    #[schema(value_type = Option<super::FollowUp>)]
    #[sqlx(default)]
    pub follow_up: Option<sqlx::types::Json<super::FollowUp>>,
    pub contract_summary: Value,
    pub expires_at: Option<DateTime<Utc>>,
    pub on_timeout: Option<TimeoutAction>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub denial_reason: Option<String>,
    #[sqlx(skip)]
    pub responses: Vec<ResponseRecord>,
}

/// What moving a run on reads of a request it waited on: how it ended and its answers.
#[derive(Clone, Debug)]
pub struct AnsweredRequest {
    pub request_id: RequestId,
    pub status: RequestStatus,
    pub on_timeout: Option<TimeoutAction>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub items: Vec<super::RequestItem>,
    pub responses: Vec<ResponseRecord>,
}

impl From<RequestRecord> for AnsweredRequest {
    fn from(r: RequestRecord) -> Self {
        AnsweredRequest {
            request_id: r.request_id,
            status: r.status,
            on_timeout: r.on_timeout,
            resolved_at: r.resolved_at,
            items: r.items,
            responses: r.responses,
        }
    }
}

/// A run as moving it on reads it: the run and its requests.
#[derive(Clone, Debug)]
pub struct RunState {
    pub run: RunRecord,
    pub requests: Vec<AnsweredRequest>,
}

impl From<RunSnapshot> for RunState {
    fn from(s: RunSnapshot) -> Self {
        RunState {
            run: s.run,
            requests: s.hitl_requests.into_iter().map(Into::into).collect(),
        }
    }
}

/// Who acted in an audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditOperator {
    pub id: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
}

/// One audit event (the run's `auditLog`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub event_id: i64,
    pub run_version: i64,
    pub action: AuditAction,
    pub operator: Option<AuditOperator>,
    /// The credential the change was made with (its name), beside the operator it acted as.
    pub principal: Option<String>,
    pub note: Option<String>,
    pub command_id: Option<CommandId>,
    pub request_id: Option<RequestId>,
    pub from_status: Option<RunStatus>,
    pub to_status: RunStatus,
    pub details: Value,
    pub at: DateTime<Utc>,
    /// The trace of the request or job that caused it (when tracing was on).
    pub trace_id: Option<String>,
}

/// A request joined with one of its answers (all `None` when it has none).
#[derive(sqlx::FromRow)]
struct RequestAnswerRow {
    #[sqlx(flatten)]
    request: RequestRecord,
    response_id: Option<ResponseId>,
    item_id: Option<String>,
    response_type: Option<ResponseType>,
    edited_arguments: Option<Value>,
    approved: Option<bool>,
    option_id: Option<String>,
    freeform_text: Option<String>,
    responder_id: Option<String>,
    responder_display_name: Option<String>,
    command_id: Option<CommandId>,
    answered_at: Option<DateTime<Utc>>,
}

/// The columns of the run `alias` that [`PrefixedRun`] reads, each prefixed `run_`.
pub(super) fn prefixed_run_columns(alias: &str) -> String {
    [
        "run_id",
        "thread_id",
        "brief_id",
        "status",
        "status_reason",
        "pending_request_id",
        "version",
        "plan",
        "execution_context",
        "runner_metadata",
        "agent_retry",
        "rehydrated_at",
        "created_at",
        "updated_at",
        "finished_at",
    ]
    .iter()
    .map(|c| format!("{alias}.{c} as run_{c}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The run's columns of [`load_parts`]'s rows (and of a command's locking read).
#[derive(sqlx::FromRow)]
pub(super) struct PrefixedRun {
    run_run_id: RunId,
    run_thread_id: ThreadId,
    run_brief_id: BriefId,
    run_status: RunStatus,
    run_status_reason: Option<String>,
    run_pending_request_id: Option<RequestId>,
    run_version: i64,
    run_plan: Value,
    run_execution_context: Value,
    run_runner_metadata: Value,
    run_agent_retry: Option<sqlx::types::Json<super::AgentRetry>>,
    run_rehydrated_at: Option<DateTime<Utc>>,
    run_created_at: DateTime<Utc>,
    run_updated_at: DateTime<Utc>,
    run_finished_at: Option<DateTime<Utc>>,
}

impl From<PrefixedRun> for RunRecord {
    fn from(r: PrefixedRun) -> Self {
        RunRecord {
            run_id: r.run_run_id,
            thread_id: r.run_thread_id,
            brief_id: r.run_brief_id,
            status: r.run_status,
            status_reason: r.run_status_reason,
            pending_request_id: r.run_pending_request_id,
            version: r.run_version,
            plan: r.run_plan,
            execution_context: r.run_execution_context,
            runner_metadata: r.run_runner_metadata,
            agent_retry: r.run_agent_retry,
            rehydrated_at: r.run_rehydrated_at,
            created_at: r.run_created_at,
            updated_at: r.run_updated_at,
            finished_at: r.run_finished_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    event_id: i64,
    run_version: i64,
    action: AuditAction,
    operator_id: Option<String>,
    operator_display_name: Option<String>,
    operator_email: Option<String>,
    principal: Option<String>,
    note: Option<String>,
    command_id: Option<CommandId>,
    request_id: Option<RequestId>,
    from_status: Option<RunStatus>,
    to_status: RunStatus,
    details: Value,
    created_at: DateTime<Utc>,
    trace_id: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        Self {
            event_id: r.event_id,
            run_version: r.run_version,
            action: r.action,
            operator: r.operator_id.map(|id| AuditOperator {
                id,
                display_name: r.operator_display_name,
                email: r.operator_email,
            }),
            principal: r.principal,
            note: r.note,
            command_id: r.command_id,
            request_id: r.request_id,
            from_status: r.from_status,
            to_status: r.to_status,
            details: r.details,
            at: r.created_at,
            trace_id: r.trace_id,
        }
    }
}

/// A run with everything that belongs to it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSnapshot {
    #[serde(flatten)]
    pub run: RunRecord,
    /// Oldest first.
    pub hitl_requests: Vec<RequestRecord>,
    /// In the order the events were written.
    pub audit_log: Vec<AuditRecord>,
}

/// One request with its answers, and the run it belongs to: what a client holding only a
/// request id needs to act on it (`GET /api/hitl/requests/{requestId}`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub brief_id: BriefId,
    /// The run's status now (a request stays `pending` only while its run awaits it).
    pub run_status: RunStatus,
    #[serde(flatten)]
    pub request: RequestRecord,
}

/// Reads one request as the run's snapshot shows it (the same rows, so the two never
/// disagree), in one repeatable-read transaction; `None` when no request has this id.
pub async fn load_request(
    pool: &PgPool,
    request_id: &RequestId,
) -> Result<Option<RequestView>, PersistenceError> {
    let mut tx = pool
        .begin_with("begin isolation level repeatable read read only")
        .await?;
    let run_id: Option<RunId> =
        crate::db::query_scalar("select run_id from hitl_requests where request_id = $1")
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?;
    let snapshot = match run_id {
        Some(run_id) => load_parts(&mut tx, &run_id, false).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(snapshot.and_then(|s| {
        let request = s
            .hitl_requests
            .into_iter()
            .find(|r| r.request_id == *request_id)?;
        Some(RequestView {
            run_id: s.run.run_id,
            thread_id: s.run.thread_id,
            brief_id: s.run.brief_id,
            run_status: s.run.status,
            request,
        })
    }))
}

/// Reads the snapshot in one repeatable-read, read-only transaction, so its parts agree
/// with each other even while the run moves on.
pub async fn load_snapshot(
    pool: &PgPool,
    run_id: &RunId,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    load_consistent(pool, run_id, true).await
}

/// One repeatable-read, read-only transaction around [`load_parts`].
async fn load_consistent(
    pool: &PgPool,
    run_id: &RunId,
    with_audit: bool,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    let mut tx = pool
        .begin_with("begin isolation level repeatable read read only")
        .await?;
    let snapshot = load_parts(&mut tx, run_id, with_audit).await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// Reads the snapshot on the caller's connection (inside its transaction, e.g. under the
/// run's lock).
pub async fn load_snapshot_in(
    conn: &mut PgConnection,
    run_id: &RunId,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    load_parts(conn, run_id, true).await
}

/// What the engine reads to advance a run: the snapshot **without its audit log** (left
/// empty), which grows with every step and which execution never consults. One
/// repeatable-read transaction, as [`load_snapshot`].
pub async fn load_run_state(
    pool: &PgPool,
    run_id: &RunId,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    load_consistent(pool, run_id, false).await
}

/// [`load_run_state`] on the caller's connection (inside its transaction, under the
/// run's lock).
pub async fn load_run_state_in(
    conn: &mut PgConnection,
    run_id: &RunId,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    load_parts(conn, run_id, false).await
}

/// What the advancement job reads, in one statement without a lock: the run as
/// [`load_run_state`] reads it (one statement is its own consistent snapshot) with the
/// runner states its agents sent, by node, and a write of its next steps fenced on the
/// run as read and chained on its head as read.
pub async fn read_for_advance(
    pool: &PgPool,
    run_id: &RunId,
) -> Result<Option<AdvanceRead>, PersistenceError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        // Bound by the parameter alone, the runner states are computed once, not per row.
        format!(
            "select {}, (select jsonb_object_agg(k.node_id, k.state) from run_runner_states k \
                 where k.run_id = $1) as runner_states \
             from orchestrator_runs o {SNAPSHOT_JOINS} where o.run_id = $1 {SNAPSHOT_ORDER}",
            snapshot_columns()
        )
    });
    let mut conn = crate::db::session(pool).await?;
    let rows: Vec<sqlx::postgres::PgRow> = crate::db::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(run_id)
        .fetch_all(&mut *conn)
        .await?;
    conn.close().await?;
    let runner_states = match rows.first() {
        Some(row) => row
            .try_get::<Option<sqlx::types::Json<HashMap<String, String>>>, _>("runner_states")?
            .map(|j| j.0)
            .unwrap_or_default(),
        None => HashMap::new(),
    };
    let Some((run, requests, head)) = snapshot_rows(&rows)? else {
        return Ok(None);
    };
    let fence = super::LockedRun {
        run_id: run.run_id.clone(),
        status: run.status,
        pending_request_id: run.pending_request_id.clone(),
        version: run.version,
    };
    let snapshot = RunSnapshot {
        run,
        hitl_requests: requests,
        audit_log: Vec::new(),
    };
    Ok(Some(AdvanceRead {
        state: snapshot.into(),
        write: super::TransitionWrite::optimistic(fence, head),
        runner_states,
    }))
}

/// What [`read_for_advance`] read.
pub struct AdvanceRead {
    pub state: RunState,
    /// The write of the steps, fenced on the run as read.
    pub write: super::TransitionWrite,
    /// The runner state of each node that has one, exactly as its agent sent it.
    pub runner_states: HashMap<String, String>,
}

async fn load_parts(
    conn: &mut PgConnection,
    run_id: &RunId,
    with_audit: bool,
) -> Result<Option<RunSnapshot>, PersistenceError> {
    Ok(read_parts(conn, run_id, with_audit)
        .await?
        .map(|(snapshot, _)| snapshot))
}

/// The snapshot, with the hash of the run's latest event.
async fn read_parts(
    conn: &mut PgConnection,
    run_id: &RunId,
    with_audit: bool,
) -> Result<Option<(RunSnapshot, Option<Vec<u8>>)>, PersistenceError> {
    // The run with its requests and their answers in one statement: a row per answer,
    // or one with no answer, or one with no request at all. The run's columns are
    // prefixed (`run_`), so the request's keep the names `RequestRecord` reads.
    let rows: Vec<sqlx::postgres::PgRow> = crate::db::query(sqlx::AssertSqlSafe(format!(
        "select {} from orchestrator_runs o {SNAPSHOT_JOINS} where o.run_id = $1 \
         {SNAPSHOT_ORDER}",
        snapshot_columns()
    )))
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let Some((run, requests, head)) = snapshot_rows(&rows)? else {
        return Ok(None);
    };
    if !with_audit {
        return Ok(Some((
            RunSnapshot {
                run,
                hitl_requests: requests,
                audit_log: Vec::new(),
            },
            head,
        )));
    }
    let audit_log = crate::db::query_as::<AuditRow>(
        "select event_id, run_version, action, operator_id, operator_display_name, \
             operator_email, principal, note, command_id, request_id, from_status, to_status, \
             details, created_at, trace_id \
         from run_audit_events where run_id = $1 order by event_id",
    )
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(AuditRecord::from)
    .collect();
    Ok(Some((
        RunSnapshot {
            run,
            hitl_requests: requests,
            audit_log,
        },
        head,
    )))
}

/// The select list of a run's snapshot rows, the run aliased `o` and joined to its
/// requests `q` and their answers `s` by [`SNAPSHOT_JOINS`]: a row per answer, or one
/// with no answer, or one with no request at all. The run's columns are prefixed
/// (`run_`), so the request's keep the names `RequestRecord` reads; `chain_head` is the
/// hash of the run's latest event.
pub(super) fn snapshot_columns() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "{}, \
             q.request_id, q.node_id, q.status, q.operator_prompt, q.response_types, \
             q.options, {} as items, q.assignees, {}, {} as approvals, q.follow_up, \
             q.contract_summary, \
             q.expires_at, q.on_timeout, \
             q.created_at, q.resolved_at, q.resolved_by, q.denial_reason, \
             s.response_id, coalesce(s.item_id, q.node_id) as item_id, s.response_type, \
             s.edited_arguments, s.approved, s.option_id, s.freeform_text, \
             s.responder_id, s.responder_display_name, s.command_id, \
             s.created_at as answered_at, \
             (select e.hash from run_audit_events e where e.run_id = o.run_id \
              order by e.run_version desc limit 1) as chain_head",
            prefixed_run_columns("o"),
            super::requests::items_sql("q"),
            super::requests::claim_sql("q"),
            super::requests::approvals_sql("q")
        )
    })
}

/// How [`snapshot_columns`] joins a run `o` to its requests and their answers.
pub(super) const SNAPSHOT_JOINS: &str = "left join hitl_requests q on q.run_id = o.run_id \
     left join hitl_responses s on s.request_id = q.request_id";

/// The order [`snapshot_rows`] reads the rows in.
pub(super) const SNAPSHOT_ORDER: &str =
    "order by q.created_at, q.request_id, s.command_id, s.position";

/// A run, its requests with their answers, and its chain head.
pub(super) type SnapshotParts = (RunRecord, Vec<RequestRecord>, Option<Vec<u8>>);

/// The run, its requests with their answers, and its chain head, from rows of
/// [`snapshot_columns`] in [`SNAPSHOT_ORDER`]; `None` for no rows, or rows without a run
/// (an outer join that found none).
pub(super) fn snapshot_rows(
    rows: &[sqlx::postgres::PgRow],
) -> Result<Option<SnapshotParts>, PersistenceError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    if first.try_get::<Option<RunId>, _>("run_run_id")?.is_none() {
        return Ok(None);
    }
    let run = PrefixedRun::from_row(first)?.into();
    let head: Option<Vec<u8>> = first.try_get("chain_head")?;
    let rows = rows
        .iter()
        .filter_map(
            |row| match row.try_get::<Option<RequestId>, _>("request_id") {
                Ok(Some(_)) => Some(RequestAnswerRow::from_row(row)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let mut requests: Vec<RequestRecord> = Vec::new();
    for row in rows {
        if requests.last().map(|r| &r.request_id) != Some(&row.request.request_id) {
            requests.push(row.request);
        }
        if let (Some(response_id), Some(response_type), Some(created_at), Some(request)) = (
            row.response_id,
            row.response_type,
            row.answered_at,
            requests.last_mut(),
        ) {
            request.responses.push(ResponseRecord {
                response_id,
                request_id: request.request_id.clone(),
                item_id: row.item_id,
                response_type,
                edited_arguments: row.edited_arguments,
                approved: row.approved,
                option_id: row.option_id,
                freeform_text: row.freeform_text,
                responder_id: row.responder_id,
                responder_display_name: row.responder_display_name,
                command_id: row.command_id,
                created_at,
            });
        }
    }
    Ok(Some((run, requests, head)))
}
