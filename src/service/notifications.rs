//! Notification deliveries for supervisors: listing them (the failed ones, above all)
//! and re-sending one that failed.

use uuid::Uuid;

use super::{Entity, Service, ServiceError};
pub use crate::persistence::notifications::Delivery;
use crate::persistence::notifications::{self, ResendRefusal};

/// The largest page of deliveries.
pub const MAX_DELIVERY_PAGE: i64 = 500;

/// The statuses a delivery can be in.
pub const DELIVERY_STATUSES: [&str; 3] = ["pending", "delivered", "failed"];

impl Service {
    /// Deliveries in `status` (any when `None`), oldest first, after delivery `after`.
    pub async fn deliveries(
        &self,
        status: Option<&str>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Delivery>, ServiceError> {
        Ok(notifications::list_deliveries(&self.pool, status, after, limit).await?)
    }

    /// Makes failed delivery `id` pending again (same id, attempts from zero, a new job).
    pub async fn resend_delivery(&self, id: Uuid) -> Result<Delivery, ServiceError> {
        let mut tx = self.pool.begin().await?;
        match notifications::resend(&mut tx, id).await? {
            Ok(delivery) => {
                tx.commit().await?;
                tracing::info!(delivery_id = %id, channel = %delivery.channel, "notification re-sent");
                Ok(delivery)
            }
            Err(ResendRefusal::NotFound) => Err(ServiceError::not_found(
                Entity::Delivery,
                "no such delivery",
            )),
            Err(ResendRefusal::NotFailed(status)) => Err(ServiceError::Conflict(format!(
                "only a failed delivery is re-sent; this one is {status}"
            ))),
        }
    }
}
