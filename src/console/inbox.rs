//! `GET /console/`: the inbox — pending requests, oldest first, a page at a time (keyset
//! paging with the service's opaque cursor; `limit` rows a page, 50 unless asked),
//! filtered by text in prompts and titles (`q`), node, thread, brief, "assigned to me"
//! (`assigned=me`) and "expiring within" (`expiring=4h`). Every filter is in the query
//! string, so a filtered inbox is an address to share.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::pages::{self, Chrome, Filters, InboxPage};
use super::views::InboxRow;
use super::{Console, Signed};
use crate::service::input::{self, MAX_SHORT_TEXT};
use crate::service::{PendingQuery, ServiceError};

/// The inbox's query string.
#[derive(Debug, Default, Deserialize)]
pub struct InboxQuery {
    #[serde(default)]
    thread: Option<String>,
    #[serde(default)]
    brief: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    assigned: Option<String>,
    #[serde(default)]
    expiring: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    /// Rows per page, 1 to 500 (50 by default).
    #[serde(default)]
    limit: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl InboxQuery {
    fn parse(&self, signed: &Signed) -> Result<PendingQuery, ServiceError> {
        let search = given(&self.q).map(str::to_owned);
        input::text("q", search.as_deref(), MAX_SHORT_TEXT)?;
        let assigned_to = match given(&self.assigned) {
            None => None,
            // As `assignee=me` of the JSON API: the credential's bound operator and its
            // groups, the ones the service admits as assignees. An operator declared at
            // sign-in with a shared token is not one (the service would refuse their
            // answer), so such a session lists nothing here.
            Some("me") => Some((
                signed.principal.operator.as_ref().map(|o| o.id.clone()),
                signed.principal.groups.to_vec(),
            )),
            Some(_) => return Err(ServiceError::invalid("assigned", "must be `me` or empty")),
        };
        let expiring_within = given(&self.expiring)
            .map(|w| input::expiring_within("expiring", w))
            .transpose()?;
        Ok(PendingQuery {
            search,
            assigned_to,
            expiring_within,
            limit: PendingQuery::parse_limit(given(&self.limit))?,
            after: given(&self.cursor).map(input::pending_cursor).transpose()?,
            thread_id: input::thread_id("thread", given(&self.thread))?,
            brief_id: input::brief_id("brief", given(&self.brief))?,
            node_id: given(&self.node).map(str::to_owned),
            ..PendingQuery::default()
        })
    }

    /// The inbox's address with these filters, starting after `cursor`.
    fn href(&self, cursor: Option<&str>) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (name, value) in [
            ("q", &self.q),
            ("assigned", &self.assigned),
            ("expiring", &self.expiring),
            ("thread", &self.thread),
            ("brief", &self.brief),
            ("node", &self.node),
            ("limit", &self.limit),
        ] {
            if let Some(v) = given(value) {
                pairs.push((name, v));
            }
        }
        if let Some(c) = cursor {
            pairs.push(("cursor", c));
        }
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if query.is_empty() {
            "/console/".to_owned()
        } else {
            format!("/console/?{query}")
        }
    }
}

/// `GET /console/`.
pub async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let filters = Filters {
        q: text(&query.q),
        assigned_to_me: given(&query.assigned) == Some("me"),
        expiring: text(&query.expiring),
        thread: text(&query.thread),
        brief: text(&query.brief),
        node: text(&query.node),
    };
    let filtered = [
        &query.q,
        &query.assigned,
        &query.expiring,
        &query.thread,
        &query.brief,
        &query.node,
    ]
    .into_iter()
    .any(|v| given(v).is_some());
    let mut page = InboxPage {
        chrome: Chrome::of(&signed),
        filters,
        filtered,
        error: None,
        rows: Vec::new(),
        next: None,
        first: given(&query.cursor).map(|_| query.href(None)),
    };
    let parsed = match query.parse(&signed) {
        Ok(p) => p,
        Err(e) => {
            page.error = Some(e.to_string());
            return pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    let inbox = match console.service.inbox(parsed).await {
        Ok(inbox) => inbox,
        Err(e) => return pages::service_error(e, Some(&signed)),
    };
    let now = chrono::Utc::now();
    page.next = inbox.next_cursor.map(|c| query.href(Some(&c.encode())));
    page.rows = inbox
        .entries
        .into_iter()
        .map(|e| InboxRow::new(e, now))
        .collect();
    pages::render(StatusCode::OK, &page)
}
