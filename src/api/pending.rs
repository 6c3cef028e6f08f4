//! `GET /api/hitl/pending`: the operators' inbox, oldest first, keyset-paginated with an
//! opaque cursor, filterable by thread, brief and node.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::auth::{Authorized, Operate};
use super::extract::QueryParams;
use super::openapi::{AuthErrors, ErrorBody, PendingPage};
use super::{ApiError, AppState};
use crate::domain::{BriefId, RequestId, ThreadId};
use crate::persistence::{self, PendingFilter, PendingItem};

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
const MAX_LIMIT: i64 = 500;

/// Lists pending requests.
#[utoipa::path(get, path = "/api/hitl/pending", tag = "hitl", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "page size, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, description = "the `nextCursor` of the previous page"),
        ("threadId" = Option<String>, Query, description = "only this thread's request"),
        ("briefId" = Option<String>, Query, description = "only requests of runs of this brief"),
        ("nodeId" = Option<String>, Query, description = "only requests raised at this node")),
    responses(
        (status = 200, description = "pending requests, oldest first", body = PendingPage),
        (status = 422, description = "a parameter is invalid (named in details.field)", body = ErrorBody),
        AuthErrors))]
pub async fn list(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    query.allow_only(&["limit", "cursor", "threadId", "briefId", "nodeId"])?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let after = query
        .get("cursor")
        .map(|c| {
            decode_cursor(c)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let thread_id = query
        .get("threadId")
        .map(|t| ThreadId::parse(t).map_err(|e| ApiError::invalid("threadId", e.to_string())))
        .transpose()?;
    let brief_id = query
        .get("briefId")
        .map(|b| BriefId::parse(b).map_err(|e| ApiError::invalid("briefId", e.to_string())))
        .transpose()?;
    let filter = PendingFilter {
        thread_id,
        brief_id,
        node_id: query.get("nodeId").map(str::to_owned),
        after,
        // One more than the page: whether it comes back says if there is a next page.
        limit: limit + 1,
    };
    let mut items = persistence::list_pending(&state.pool, &filter).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more.then(|| items.last().map(encode_cursor)).flatten();
    Ok(Json(json!({ "items": items, "nextCursor": next_cursor })))
}

/// The position after `item`: its `(created_at, request_id)` keyset, hex-encoded so that
/// clients treat it as opaque.
fn encode_cursor(item: &PendingItem) -> String {
    cursor_after(item.created_at, &item.pending_request_id)
}

/// The cursor of the page that starts after the request `(created_at, request_id)`.
pub fn cursor_after(created_at: DateTime<Utc>, request_id: &RequestId) -> String {
    let raw = format!("{}:{}", created_at.timestamp_micros(), request_id);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, RequestId)> {
    if !cursor.len().is_multiple_of(2) || cursor.len() > 256 {
        return None;
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let raw = String::from_utf8(bytes).ok()?;
    let (micros, request) = raw.split_once(':')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, RequestId::parse(request).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_763_700_000_123_456).unwrap();
        let request = RequestId::new();
        let item = PendingItem {
            run_id: crate::domain::RunId::new(),
            thread_id: ThreadId::new(),
            brief_id: BriefId::new(),
            pending_request_id: request.clone(),
            pending_node_id: "review".into(),
            operator_prompt: "?".into(),
            contract_summary: json!({}),
            response_types: vec![],
            options: json!([]),
            execution_context: json!({}),
            created_at: at,
            expires_at: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(&item)), Some((at, request)));
        for bad in ["", "zz", "abc", "3a", "not-a-cursor", "é"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
