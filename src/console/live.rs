//! `GET /console/events`: the live stream the console's pages follow, as Server-Sent
//! Events, under the console's session cookie.
//!
//! A browser's `EventSource` cannot send a bearer token, and `/api` never reads the
//! cookie; so the console serves the stream itself, with the session checked by
//! [`Console::signed`] like every page. It is the same stream as `GET /api/events` — the
//! same hub, the same events and ids, the same replay after `Last-Event-ID` (which
//! `EventSource` sends by itself when it reconnects) — and only the way in differs.
//! Optional `run` narrows it to one run's events (a request's page).

use std::convert::Infallible;

use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Console;
use crate::service::{EventFilter, ServiceError, input};

/// The stream's query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    #[serde(default)]
    run: Option<String>,
}

/// `GET /console/events`.
pub async fn stream(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Response {
    if let Err(to_sign_in) = console.signed(&headers).await {
        // An EventSource cannot follow a page; 401 ends it (the page says so), and any
        // cookie the sign-in redirect would clear is cleared here too.
        let mut refused = StatusCode::UNAUTHORIZED.into_response();
        if let Some(cookie) = to_sign_in.headers().get(axum::http::header::SET_COOKIE) {
            refused
                .headers_mut()
                .insert(axum::http::header::SET_COOKIE, cookie.clone());
        }
        return refused;
    }
    let filter = match filter(query, &headers) {
        Ok(f) => f,
        Err(e) => return refused(e),
    };
    let events = match console.service.events(filter).await {
        Ok(events) => events,
        Err(e @ ServiceError::Internal(_)) => return super::pages::service_error(e, None),
        Err(e) => return refused(e),
    };
    let keep_alive = console.service.event_settings().keep_alive;
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        events.next().await.map(|event| {
            let (id, name, data) = crate::service::events::wire(&event);
            let event: Result<Event, Infallible> =
                Ok(Event::default().id(id).event(name).data(data));
            (event, events)
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response()
}

fn filter(
    query: Result<Query<LiveQuery>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<EventFilter, ServiceError> {
    let Query(query) =
        query.map_err(|_| ServiceError::invalid("query", "only `run` (a run id) may be given"))?;
    let run = input::run_id("run", query.run.as_deref())?;
    let after = input::last_event_id(headers.get("last-event-id").map(|v| v.as_bytes()))?;
    Ok(EventFilter { run, after })
}

/// 422 with the service's words, naming the field, as plain text (the stream's client is
/// a script, not a person reading a page).
fn refused(e: ServiceError) -> Response {
    let status = match e {
        ServiceError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceError::HitlDisabled | ServiceError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        e.to_string(),
    )
        .into_response()
}
