//! The audit trail for auditors: the public keys events are signed with, verifying a
//! run's chain (or every run's, a page at a time), and exporting every event in the
//! commit-safe order of the live stream.

use super::{Entity, Service, ServiceError};
use crate::domain::RunId;
use crate::persistence::audit;
pub use crate::persistence::audit::{ExportedEvent, SigningKey, Verification};
use crate::persistence::events;

/// Largest page of an export, and of a verification of every run.
pub const MAX_EXPORT_PAGE: i64 = 1000;
pub const MAX_VERIFY_PAGE: i64 = 100;

impl Service {
    /// Every public key events were signed with, oldest first.
    pub async fn audit_keys(&self) -> Result<Vec<SigningKey>, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        Ok(audit::signing_keys(&mut conn).await?)
    }

    /// Run `run_id`'s chain: intact, or the first break (404 when there is no such run).
    pub async fn verify_run(&self, run_id: &RunId) -> Result<Verification, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let keys = audit::signing_keys(&mut conn).await?;
        audit::verify_run(&mut conn, run_id, &keys)
            .await?
            .ok_or_else(|| ServiceError::not_found(Entity::Run, "no such run"))
    }

    /// The chains of up to `limit` runs after `after` (run id order), and where the next
    /// page starts.
    pub async fn verify_runs(
        &self,
        after: Option<&RunId>,
        limit: i64,
    ) -> Result<(Vec<Verification>, Option<RunId>), ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        Ok(audit::verify_page(&mut conn, after, limit).await?)
    }

    /// Up to `limit` events after event `after` (from the start when `None`), in the
    /// live stream's commit-safe order: a page never skips an event that commits late.
    /// An `after` that names no event is read as the latest event before it.
    pub async fn export_audit(
        &self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ExportedEvent>, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let position = match after {
            None | Some(0) => (0, 0),
            Some(id) => events::position_at_or_before(&mut conn, id).await?,
        };
        Ok(audit::export_after(&mut conn, position, limit).await?)
    }
}
