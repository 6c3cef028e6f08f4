//! `GET /api/events`: Server-Sent Events of run and HITL changes, made by any process.
//!
//! Every audit event is a stream event; its SSE `id` is the audit `event_id` and its
//! name the audit action's event name. The stream itself — replay after `Last-Event-ID`,
//! then live, catching up from the database when a client falls behind — is the
//! service's (`service::events`). A client that stops reading altogether is closed by
//! the listener's write timeout (`HITL_HTTP_WRITE_TIMEOUT`). A keep-alive comment keeps
//! idle connections open through proxies.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::auth::{Authorized, Operate};
use super::extract::QueryParams;
use super::openapi::{AuthErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::service::{EventFilter, StreamEvent, input};

fn sse_event(event: &StreamEvent) -> Event {
    let (id, name, data) = crate::service::events::wire(event);
    Event::default().id(id).event(name).data(data)
}

/// `GET /api/events` (scope `operate`; optional `runId`; honours `Last-Event-ID`).
#[utoipa::path(get, path = "/api/events", tag = "events", security(("bearer" = [])),
    params(
        ("runId" = Option<String>, Query, description = "only this run's events"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (1 to 18 digits)")),
    responses(
        (status = 200, description = "Server-Sent Events; each event's data is a StreamEvent",
         content_type = "text/event-stream", body = String),
        (status = 422, description = "runId or Last-Event-ID is malformed, or an unknown or repeated parameter", body = ErrorBody),
        AuthErrors))]
pub async fn stream(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = input::run_id("runId", query.get("runId"))?;
    let after = input::last_event_id(headers.get("last-event-id").map(|v| v.as_bytes()))?;
    let events = state.service.events(EventFilter { run, after }).await?;
    let keep_alive = state.service.event_settings().keep_alive;
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        events
            .next()
            .await
            .map(|event| (Ok(sse_event(&event)), events))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")))
}
