//! The notification routes (scope `supervise`): `GET /api/notifications` lists
//! deliveries (`?status=failed` for those that ran out of attempts) and
//! `POST /api/notifications/{deliveryId}/resend` tries a failed one again.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use uuid::Uuid;

use super::audit::page_size;
use super::auth::{Authorized, Supervise};
use super::extract::QueryParams;
use super::openapi::{AuthErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::service::notifications::{DELIVERY_STATUSES, Delivery, MAX_DELIVERY_PAGE};

/// `GET /api/notifications`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    /// Oldest first.
    items: Vec<Delivery>,
    /// Pass back as `after` for the next page; `null` at the end.
    next_cursor: Option<String>,
}

fn delivery_id(field: &'static str, raw: &str) -> Result<Uuid, ApiError> {
    // The hyphenated form only, as the document states it.
    Uuid::try_parse(raw)
        .ok()
        .filter(|_| raw.len() == 36)
        .ok_or_else(|| ApiError::invalid(field, "must be a delivery id (a UUID)"))
}

/// `GET /api/notifications`: deliveries, oldest first.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "only deliveries in this status: pending, delivered or failed"),
        ("after" = Option<String>, Query, description = "the `nextCursor` of the previous page (a delivery id)"),
        ("limit" = Option<i64>, Query, description = "deliveries per page, 1 to 500 (default 500)")),
    responses(
        (status = 200, description = "a page of deliveries", body = DeliveryPage),
        (status = 422, description = "a malformed parameter", body = ErrorBody),
        AuthErrors))]
pub async fn list(
    _: Authorized<Supervise>,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<DeliveryPage>, ApiError> {
    let status = match query.get("status") {
        None => None,
        Some(s) if DELIVERY_STATUSES.contains(&s) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "must be pending, delivered or failed",
            ));
        }
    };
    let after = query
        .get("after")
        .map(|s| delivery_id("after", s))
        .transpose()?;
    let limit = page_size(query.get("limit"), MAX_DELIVERY_PAGE)?;
    let items = state.service.deliveries(status, after, limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|d| d.delivery_id.to_string()))
        .flatten();
    Ok(Json(DeliveryPage { items, next_cursor }))
}

/// `POST /api/notifications/{deliveryId}/resend`: a failed delivery is tried again
/// (same delivery id, attempts counted from zero).
#[utoipa::path(post, path = "/api/notifications/{deliveryId}/resend", tag = "notifications",
    security(("bearer" = [])),
    params(("deliveryId" = String, Path, description = "the delivery's id")),
    responses(
        (status = 200, description = "the delivery, pending again", body = Delivery),
        (status = 404, description = "no such delivery", body = ErrorBody),
        (status = 409, description = "the delivery is not failed", body = ErrorBody),
        AuthErrors))]
pub async fn resend(
    _: Authorized<Supervise>,
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Delivery>, ApiError> {
    let unknown = || ApiError::not_found("delivery_not_found", "no such delivery");
    let Path(raw) = path.map_err(|_| unknown())?;
    let id = delivery_id("deliveryId", &raw).map_err(|_| unknown())?;
    Ok(Json(state.service.resend_delivery(id).await?))
}
