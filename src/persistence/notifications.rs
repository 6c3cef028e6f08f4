//! Notifications as rows: the channels the processes published, and one delivery per
//! (event, channel), inserted with its `hitl_notify` job in the transaction that appends
//! the event — so no event that committed goes untold and none that rolled back is told.
//!
//! Which channels want an event is decided here, in SQL, from the published channels
//! (`notification_channels`) and the request the event is about: every process, whether
//! or not it was given the channels file, enqueues the same deliveries. Sending them is
//! the `hitl_notify` job's (`jobs::notify`), with the secret only its process holds.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::jobs::Notify;
use super::{PersistenceError, queue};
use crate::domain::{RequestId, RunId};

/// A channel as published: what deciding who wants an event needs (its URL and secret
/// stay with the processes given the file).
#[derive(Clone, Debug)]
pub struct PublishedChannel<'a> {
    pub name: &'a str,
    /// `json` or `slack`.
    pub format: &'a str,
    pub events: &'a [String],
    pub nodes: &'a [String],
    pub groups: &'a [String],
    pub include_arguments: bool,
    /// When it wants `request_expiring`: how long before a deadline.
    pub expiring_notice_seconds: Option<u32>,
}

/// Makes `channels` the published set: channels not among them stop receiving events.
pub async fn publish_channels(
    pool: &PgPool,
    channels: &[PublishedChannel<'_>],
) -> Result<(), PersistenceError> {
    let mut tx = pool.begin().await?;
    let names: Vec<&str> = channels.iter().map(|c| c.name).collect();
    crate::db::query("delete from notification_channels where name <> all($1)")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    for c in channels {
        crate::db::query(
            "insert into notification_channels (name, format, events, nodes, groups, \
                 include_arguments, expiring_notice_seconds) \
             values ($1, $2, $3, $4, $5, $6, $7) \
             on conflict (name) do update set format = excluded.format, \
                 events = excluded.events, nodes = excluded.nodes, groups = excluded.groups, \
                 include_arguments = excluded.include_arguments, \
                 expiring_notice_seconds = excluded.expiring_notice_seconds, published_at = now()",
        )
        .bind(c.name)
        .bind(c.format)
        .bind(c.events)
        .bind(c.nodes)
        .bind(c.groups)
        .bind(c.include_arguments)
        .bind(
            c.expiring_notice_seconds
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What an audit event says that decides which channels want it.
#[derive(Debug, Default)]
pub(super) struct EventFacets<'a> {
    /// The node the event names when it is about no request (a failed run's node).
    pub node_id: Option<&'a str>,
    /// The channels the event names (an escalation step's `notify`).
    pub named: Vec<String>,
    /// A `request_expiring` notice: the channels whose notice it is.
    pub notice_seconds: Option<i32>,
}

impl<'a> EventFacets<'a> {
    /// The facets of an event's details.
    pub fn of(details: &'a Value) -> Self {
        EventFacets {
            node_id: details.get("nodeId").and_then(Value::as_str),
            named: details
                .get("notify")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            notice_seconds: details
                .get("noticeSeconds")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok()),
        }
    }
}

/// The parts of a statement appending audit events that insert a delivery for every
/// published channel that wants an event and the request it is about, or that the event
/// names, with the deliveries' `hitl_notify` jobs; the one text every append shares.
///
/// The statement has CTEs `event` (returning `event_id`, `run_version` and `request_id`
/// of each event it inserted, the run's id in `$1`) and `raised` (`request_id`, `node_id`,
/// `assignees` of a request inserted by the same statement, which its snapshot of
/// `hitl_requests` does not show). `facets` joins each event to its facets as
/// `f(name, node_id, named, notice_seconds)`: its name (none: no deliveries), the node it
/// names when it is about no request (a failed run's node), the channels it names (a
/// JSON array: an escalation step's `notify`), a deadline notice's period. `trace` is the
/// trace context the jobs carry (`{"trace": …}`) and `max_attempts` theirs, both SQL
/// expressions.
///
/// A channel filtering on groups wants requests assigned to one of them; one without
/// filters wants every event of its kinds. A deadline notice goes to the channels whose
/// notice period scheduled it.
pub(super) fn deliveries_cte(facets: &str, trace: &str, max_attempts: &str) -> String {
    format!(
        "delivery as ( \
            insert into notification_deliveries (delivery_id, channel, event_id, event, \
                run_id, request_id) \
            select gen_random_uuid(), c.name, event.event_id, f.name, $1, event.request_id \
            from event {facets} \
            cross join notification_channels c \
            left join hitl_requests q on q.request_id = event.request_id \
            left join raised on raised.request_id = event.request_id \
            where (f.name = any(c.events) \
                   or c.name in (select jsonb_array_elements_text(f.named))) \
              and (cardinality(c.nodes) = 0 \
                   or coalesce(q.node_id, raised.node_id, f.node_id) = any(c.nodes)) \
              and (cardinality(c.groups) = 0 or exists ( \
                  select 1 from jsonb_array_elements_text( \
                      coalesce(q.assignees, raised.assignees) -> 'groups') g \
                  where g = any(c.groups))) \
              and (f.name <> 'request_expiring' \
                   or c.expiring_notice_seconds = f.notice_seconds) \
            returning delivery_id), \
        delivery_job as ( \
            insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, \
                run_at, priority) \
            select apalis.generate_ulid(), 'hitl_notify', \
                convert_to((jsonb_build_object('deliveryId', delivery.delivery_id) \
                    || coalesce({trace}::jsonb, '{{}}'::jsonb))::text, 'UTF8'), \
                'Pending', 0, {max_attempts}, now(), 0 \
            from delivery \
            returning 1)"
    )
}

/// A delivery as stored.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    #[schema(value_type = String)]
    pub delivery_id: Uuid,
    pub channel: String,
    pub event_id: i64,
    pub event: String,
    #[schema(value_type = String)]
    pub run_id: RunId,
    #[schema(value_type = Option<String>)]
    pub request_id: Option<RequestId>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// What the last attempt met (an HTTP status or a kind of network error).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "delivery_id, channel, event_id, event, run_id, request_id, \
    status, attempts, last_error, created_at, updated_at, delivered_at";

/// The delivery `id`.
pub async fn find_delivery(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Delivery>, PersistenceError> {
    Ok(crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {DELIVERY_COLUMNS} from notification_deliveries where delivery_id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Deliveries in `status` (any when `None`), oldest first, after the delivery `after`.
pub async fn list_deliveries(
    pool: &PgPool,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Delivery>, PersistenceError> {
    let mut session = crate::db::session(pool).await?;
    let out = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {DELIVERY_COLUMNS} from notification_deliveries d \
         where ($1::text is null or status = $1) \
           and ($2::uuid is null or (created_at, delivery_id) > \
               (select created_at, delivery_id from notification_deliveries where delivery_id = $2)) \
         order by created_at, delivery_id limit $3"
    )))
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *session)
    .await?;
    session.close().await?;
    Ok(out)
}

/// The request a notification shows, beside its event.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NotifiedRequest {
    pub request_id: RequestId,
    pub node_id: String,
    pub operator_prompt: String,
    pub items: sqlx::types::Json<Vec<super::RequestItem>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub on_timeout: Option<String>,
    pub assignees: Option<sqlx::types::Json<super::Assignees>>,
    pub status: String,
}

/// The request `id`, as a notification shows it.
pub async fn notified_request(
    conn: &mut PgConnection,
    id: &RequestId,
) -> Result<Option<NotifiedRequest>, PersistenceError> {
    Ok(crate::db::query_as(
        "select request_id, node_id, operator_prompt, items, expires_at, \
             on_timeout::text as on_timeout, assignees, status::text as status \
         from hitl_requests where request_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// What one attempt at a delivery met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Worth another attempt (a network error, a timeout, a non-2xx answer).
    Failed(String),
}

/// Counts an attempt at a pending delivery; after `max_attempts` failed ones it is
/// `failed`. Returns the status it is in now, or `None` when it was not pending (another
/// worker finished it first).
pub async fn record_attempt(
    conn: &mut PgConnection,
    id: Uuid,
    result: &AttemptResult,
    max_attempts: u32,
) -> Result<Option<(String, i32)>, PersistenceError> {
    let (delivered, error) = match result {
        AttemptResult::Delivered => (true, None),
        AttemptResult::Failed(e) => (false, Some(e.chars().take(300).collect::<String>())),
    };
    Ok(crate::db::query_as(
        "update notification_deliveries set attempts = attempts + 1, last_error = $3, \
             updated_at = now(), \
             delivered_at = case when $2 then now() end, \
             status = case when $2 then 'delivered' \
                           when attempts + 1 >= $4 then 'failed' else 'pending' end \
         where delivery_id = $1 and status = 'pending' \
         returning status, attempts",
    )
    .bind(id)
    .bind(delivered)
    .bind(error)
    .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?)
}

/// Why a delivery cannot be re-sent.
#[derive(Debug)]
pub enum ResendRefusal {
    NotFound,
    /// Only failed deliveries are re-sent (a pending one is still being tried).
    NotFailed(String),
}

/// Makes failed delivery `id` pending again, with no attempts counted and a new job;
/// it keeps its id, so a receiver that did get it once can tell.
pub async fn resend(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Result<Delivery, ResendRefusal>, PersistenceError> {
    let Some(current) = find_delivery(conn, id).await? else {
        return Ok(Err(ResendRefusal::NotFound));
    };
    let updated: Option<Delivery> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "update notification_deliveries set status = 'pending', attempts = 0, \
             last_error = null, updated_at = now() \
         where delivery_id = $1 and status = 'failed' returning {DELIVERY_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match updated {
        None => Ok(Err(ResendRefusal::NotFailed(current.status))),
        Some(d) => {
            queue::enqueue_all(conn, &[Notify { delivery_id: id }]).await?;
            Ok(Ok(d))
        }
    }
}
