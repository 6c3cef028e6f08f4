//! `GET /api/hitl/pending`: the operators' inbox, oldest first, keyset-paginated with an
//! opaque cursor, filterable by thread, brief and node.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::auth::{Authorized, Operate};
use super::extract::QueryParams;
use super::openapi::{AuthErrors, ErrorBody, PendingPage};
use super::{ApiError, AppState};
use crate::service::{PendingCursor, PendingQuery, input};

/// Lists pending requests.
#[utoipa::path(get, path = "/api/hitl/pending", tag = "hitl", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "page size, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, description = "the `nextCursor` of the previous page"),
        ("threadId" = Option<String>, Query, description = "only this thread's request"),
        ("briefId" = Option<String>, Query, description = "only requests of runs of this brief"),
        ("nodeId" = Option<String>, Query, description = "only requests raised at this node"),
        ("assignee" = Option<String>, Query, description = "`me`: only requests assigned to the credential's operator or one of its groups"),
        ("group" = Option<String>, Query, description = "only requests assigned to this group")),
    responses(
        (status = 200, description = "pending requests, oldest first", body = PendingPage),
        (status = 422, description = "a parameter is invalid (named in details.field)", body = ErrorBody),
        AuthErrors))]
pub async fn list(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let query = PendingQuery {
        limit: PendingQuery::parse_limit(query.get("limit"))?,
        after: query.get("cursor").map(input::pending_cursor).transpose()?,
        thread_id: input::thread_id("threadId", query.get("threadId"))?,
        brief_id: input::brief_id("briefId", query.get("briefId"))?,
        node_id: query.get("nodeId").map(str::to_owned),
        assigned_to: match query.get("assignee") {
            None => None,
            Some("me") => Some((
                principal.operator.as_ref().map(|o| o.id.clone()),
                principal.groups.to_vec(),
            )),
            Some(_) => {
                return Err(ApiError::invalid(
                    "assignee",
                    "must be `me`: requests assigned to this credential's operator or groups",
                ));
            }
        },
        group: match query.get("group") {
            None => None,
            Some(g) => {
                input::text("group", Some(g), 256)?;
                if g.trim().is_empty() {
                    return Err(ApiError::invalid("group", "must not be blank"));
                }
                Some(g.to_owned())
            }
        },
        // The console's search and deadline filters; the JSON API does not offer them.
        search: None,
        expiring_within: None,
    };
    let page = state.service.pending(query).await?;
    let next_cursor = page.next_cursor.as_ref().map(PendingCursor::encode);
    Ok(Json(
        json!({ "items": page.items, "nextCursor": next_cursor }),
    ))
}
