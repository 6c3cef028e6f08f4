//! The operators' inbox: pending requests, oldest first, keyset-paginated with an opaque
//! cursor, filterable by thread, brief and node.

use chrono::{DateTime, Utc};

use super::{PendingItem, Service, ServiceError};
use crate::domain::{BriefId, RequestId, ThreadId};
use crate::persistence::{self, PendingFilter};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 500;

/// A position in the inbox: after the request `(created_at, request_id)`. Clients see it
/// hex-encoded, as an opaque string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCursor {
    created_at: DateTime<Utc>,
    request_id: RequestId,
}

impl PendingCursor {
    /// The position after the request `(created_at, request_id)`.
    pub fn after(created_at: DateTime<Utc>, request_id: RequestId) -> Self {
        Self {
            created_at,
            request_id,
        }
    }

    /// The cursor of a page that starts after `item`.
    fn after_item(item: &PendingItem) -> Self {
        Self::after(item.created_at, item.pending_request_id.clone())
    }

    /// Reads a cursor this service returned (422 naming `cursor` otherwise).
    pub fn parse(raw: &str) -> Result<Self, ServiceError> {
        Self::decode(raw)
            .ok_or_else(|| ServiceError::invalid("cursor", "is not a cursor this API returned"))
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        let raw = format!("{}:{}", self.created_at.timestamp_micros(), self.request_id);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(cursor: &str) -> Option<Self> {
        if !cursor.len().is_multiple_of(2) || cursor.len() > 256 {
            return None;
        }
        let bytes = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let raw = String::from_utf8(bytes).ok()?;
        let (micros, request) = raw.split_once(':')?;
        let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Self::after(created_at, RequestId::parse(request).ok()?))
    }
}

/// Which page of the inbox to read.
#[derive(Clone, Debug)]
pub struct PendingQuery {
    /// Page size, 1 to [`MAX_LIMIT`].
    pub limit: i64,
    pub after: Option<PendingCursor>,
    pub thread_id: Option<ThreadId>,
    pub brief_id: Option<BriefId>,
    pub node_id: Option<String>,
    /// `assignee=me`: requests listing this operator (if the credential is bound to one)
    /// or one of these groups.
    pub assigned_to: Option<(Option<String>, Vec<String>)>,
    /// `group=…`: requests listing this group.
    pub group: Option<String>,
    /// Text the prompt, an item's title or the brief's title contains.
    pub search: Option<String>,
    /// Only requests whose deadline passes within this window from now.
    pub expiring_within: Option<std::time::Duration>,
}

impl Default for PendingQuery {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
            thread_id: None,
            brief_id: None,
            node_id: None,
            assigned_to: None,
            group: None,
            search: None,
            expiring_within: None,
        }
    }
}

impl PendingQuery {
    /// A page size from its text (422 naming `limit` unless 1 to 500); the default when
    /// absent.
    pub fn parse_limit(raw: Option<&str>) -> Result<i64, ServiceError> {
        match raw {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ServiceError::invalid(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                }),
        }
    }
}

/// One page of the inbox, and the cursor of the next one (`None`: this is the last).
#[derive(Clone, Debug)]
pub struct PendingPage {
    pub items: Vec<PendingItem>,
    pub next_cursor: Option<PendingCursor>,
}

impl Service {
    /// One page of pending requests, oldest first.
    pub async fn pending(&self, query: PendingQuery) -> Result<PendingPage, ServiceError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let filter = PendingFilter {
            thread_id: query.thread_id,
            brief_id: query.brief_id,
            node_id: query.node_id,
            assigned_to: query.assigned_to,
            group: query.group,
            search: query.search,
            expires_before: query
                .expiring_within
                .and_then(|w| chrono::Duration::from_std(w).ok())
                .map(|w| Utc::now() + w),
            after: query.after.map(|c| (c.created_at, c.request_id)),
            // One more than the page: whether it comes back says if there is a next page.
            limit: limit + 1,
        };
        let mut conn = crate::db::session(&self.pool).await?;
        let mut items = persistence::list_pending(&mut *conn, &filter).await?;
        conn.close().await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = more
            .then(|| items.last().map(PendingCursor::after_item))
            .flatten();
        Ok(PendingPage { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_763_700_000_123_456).unwrap();
        let cursor = PendingCursor::after(at, RequestId::new());
        assert_eq!(PendingCursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "zz", "abc", "3a", "not-a-cursor", "é"] {
            assert_eq!(PendingCursor::decode(bad), None, "{bad}");
        }
    }
}
