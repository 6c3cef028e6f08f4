//! Reads of briefs for the people who answer requests: a brief by its id, and for a page
//! of pending requests what the pending list does not carry (the brief's title, the
//! deadline's `onTimeout` policy), read in one statement for the whole page.

use serde_json::Value;
use sqlx::PgExecutor;

use super::PersistenceError;
use crate::domain::{BriefId, RequestId, TimeoutAction};

/// A brief as it was written.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BriefRecord {
    pub brief_id: BriefId,
    pub title: String,
    pub content: Value,
}

/// What the inbox shows of a pending request beside its pending-list entry.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RequestBrief {
    pub request_id: RequestId,
    pub brief_title: String,
    /// What the deadline does when it passes (`None`: no deadline).
    pub on_timeout: Option<TimeoutAction>,
}

/// The brief `brief_id`, if there is one.
pub async fn find_brief(
    executor: impl PgExecutor<'_>,
    brief_id: &BriefId,
) -> Result<Option<BriefRecord>, PersistenceError> {
    Ok(crate::db::query_as::<BriefRecord>(
        "select brief_id, title, content from briefs where brief_id = $1",
    )
    .bind(brief_id)
    .fetch_optional(executor)
    .await?)
}

/// The brief title and deadline policy of each request of `request_ids` (in no order;
/// ids naming no request are left out).
pub async fn request_briefs(
    executor: impl PgExecutor<'_>,
    request_ids: &[RequestId],
) -> Result<Vec<RequestBrief>, PersistenceError> {
    let ids: Vec<&str> = request_ids.iter().map(RequestId::as_str).collect();
    Ok(crate::db::query_as::<RequestBrief>(
        "select r.request_id, b.title as brief_title, r.on_timeout \
         from hitl_requests r join briefs b on b.brief_id = r.brief_id \
         where r.request_id = any($1)",
    )
    .bind(&ids)
    .fetch_all(executor)
    .await?)
}
