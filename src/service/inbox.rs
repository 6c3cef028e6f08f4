//! What people answering requests read beside the pending list: each pending request's
//! brief title and deadline policy, and a brief by its id.

use std::collections::HashMap;

use super::{Entity, PendingItem, PendingPage, PendingQuery, Service, ServiceError};
use crate::domain::{BriefId, TimeoutAction};
use crate::persistence::{self, BriefRecord};

/// One pending request with its brief's title and its deadline's policy.
#[derive(Clone, Debug)]
pub struct InboxEntry {
    pub item: PendingItem,
    pub brief_title: String,
    /// What the deadline does when it passes (`None`: no deadline).
    pub on_timeout: Option<TimeoutAction>,
}

/// A page of [`InboxEntry`], oldest first, and where the next one starts.
#[derive(Clone, Debug)]
pub struct InboxPage {
    pub entries: Vec<InboxEntry>,
    pub next_cursor: Option<super::PendingCursor>,
}

impl Service {
    /// One page of the pending list (as [`Service::pending`] reads it) with each entry's
    /// brief title and deadline policy, read in one more statement for the page.
    pub async fn inbox(&self, query: PendingQuery) -> Result<InboxPage, ServiceError> {
        let PendingPage { items, next_cursor } = self.pending(query).await?;
        let ids: Vec<_> = items.iter().map(|i| i.pending_request_id.clone()).collect();
        let mut conn = crate::db::session(&self.pool).await?;
        let briefs = persistence::request_briefs(&mut *conn, &ids).await?;
        conn.close().await?;
        let mut extras: HashMap<_, _> = briefs
            .into_iter()
            .map(|b| (b.request_id.clone(), b))
            .collect();
        let entries = items
            .into_iter()
            .map(|item| {
                let extra = extras.remove(&item.pending_request_id);
                InboxEntry {
                    brief_title: extra
                        .as_ref()
                        .map(|e| e.brief_title.clone())
                        .unwrap_or_default(),
                    on_timeout: extra.and_then(|e| e.on_timeout),
                    item,
                }
            })
            .collect();
        Ok(InboxPage {
            entries,
            next_cursor,
        })
    }

    /// The brief `brief_id` (404 when there is none).
    pub async fn brief(&self, brief_id: &BriefId) -> Result<BriefRecord, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let brief = persistence::find_brief(&mut *conn, brief_id).await?;
        conn.close().await?;
        brief.ok_or_else(|| ServiceError::not_found(Entity::Brief, "no such brief"))
    }
}
