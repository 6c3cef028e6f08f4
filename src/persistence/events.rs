//! The audit trail read as a stream of events, for live SSE with gap-free resumption.
//!
//! Event ids (`event_id`) come from an identity column, handed out at insert, so a
//! transaction can commit event 55 after another committed event 60. Streams therefore
//! read in `(tx_id, event_id)` order and only up to the **horizon**: events whose
//! transaction is older than the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every event that can still appear then
//! sorts after what was sent, so a client resuming from its last position misses nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use super::PersistenceError;
use crate::domain::{AuditAction, CommandId, RequestId, RunId, RunStatus};

/// A position in the stream: (transaction id, event id).
pub type StreamPosition = (i64, i64);

/// One event as streamed.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamEvent {
    pub event_id: i64,
    #[serde(skip)]
    pub tx: i64,
    pub run_id: RunId,
    pub request_id: Option<RequestId>,
    pub command_id: Option<CommandId>,
    pub action: AuditAction,
    pub from_status: Option<RunStatus>,
    pub to_status: RunStatus,
    pub operator_id: Option<String>,
    /// The credential the change was made with.
    pub principal: Option<String>,
    pub run_version: i64,
    /// What the transition recorded (node id, decision, what was repaired, …).
    pub details: Value,
    pub at: DateTime<Utc>,
    /// The trace of the request or job that caused it (when tracing was on).
    pub trace_id: Option<String>,
}

impl StreamEvent {
    /// Its position in the stream.
    pub fn position(&self) -> StreamPosition {
        (self.tx, self.event_id)
    }
}

const COLUMNS: &str = "event_id, tx_id::text::bigint as tx, run_id, request_id, command_id, action, \
    from_status, to_status, operator_id, principal, run_version, details, created_at as at, trace_id";

/// Events after `after`, up to the horizon, in stream order (at most `limit`).
pub async fn events_after(
    conn: &mut PgConnection,
    after: StreamPosition,
    limit: i64,
) -> Result<Vec<StreamEvent>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from run_audit_events \
         where (tx_id, event_id) > ($1::text::xid8, $2) \
           and tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         order by tx_id, event_id limit $3"
    )))
    .bind(after.0.to_string())
    .bind(after.1)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The position of the last event at the horizon now (where a new client starts), or
/// the start of the stream when there is none.
pub async fn horizon(conn: &mut PgConnection) -> Result<StreamPosition, PersistenceError> {
    let last: Option<StreamPosition> = crate::db::query_as(
        "select tx_id::text::bigint, event_id from run_audit_events \
         where tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         order by tx_id desc, event_id desc limit 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(last.unwrap_or((0, 0)))
}

/// The stream position of event `event_id`, or of the latest event before it when it
/// does not exist (archived and removed, or never issued); the start of the stream when
/// there is none.
pub async fn position_at_or_before(
    conn: &mut PgConnection,
    event_id: i64,
) -> Result<StreamPosition, PersistenceError> {
    let found: Option<StreamPosition> = crate::db::query_as(
        "select tx_id::text::bigint, event_id from run_audit_events where event_id <= $1 \
         order by event_id desc limit 1",
    )
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    Ok(found.unwrap_or((0, 0)))
}

/// The stream position of event `event_id` (a client's `Last-Event-ID`).
pub async fn position_of(
    conn: &mut PgConnection,
    event_id: i64,
) -> Result<Option<StreamPosition>, PersistenceError> {
    Ok(crate::db::query_as(
        "select tx_id::text::bigint, event_id from run_audit_events where event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(conn)
    .await?)
}

/// The event `event_id`, if it is still stored (a notification's subject).
pub async fn event_by_id(
    conn: &mut PgConnection,
    event_id: i64,
) -> Result<Option<StreamEvent>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from run_audit_events where event_id = $1"
    )))
    .bind(event_id)
    .fetch_optional(conn)
    .await?)
}
