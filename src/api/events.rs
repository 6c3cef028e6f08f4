//! `GET /api/events`: Server-Sent Events of run and HITL changes, made by any process.
//!
//! Every audit event is a stream event; its SSE `id` is the audit `event_id`. One hub per
//! API process listens for `hitl_events` notifications (sent by a trigger on the audit
//! table, so changes committed by any worker process arrive), reads new events up to the
//! stream horizon (see `persistence::events`) and fans them out through a bounded
//! broadcast channel. A client first replays from the database what it missed after its
//! `Last-Event-ID`, then follows the live channel. The channel is bounded and shared: a
//! client that falls behind it (a burst, a slow reader) catches up from the database a
//! page at a time, so no client makes the server buffer more than one page for it; a
//! client that stops reading altogether is closed by the listener's write timeout
//! (`HITL_HTTP_WRITE_TIMEOUT`). A keep-alive comment keeps idle connections open
//! through proxies.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::CancellationToken;

use super::auth::{Authorized, Operate};
use super::openapi::{AuthErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::domain::{AuditAction, RunId};
use crate::persistence::events::{self, StreamEvent, StreamPosition};

/// Events read per database round trip.
const PAGE: i64 = 500;

/// How the hub and its streams behave.
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// Live events buffered for the slowest client before it is dropped.
    pub capacity: usize,
    /// Interval of the keep-alive comment on idle streams.
    pub keep_alive: Duration,
    /// How often the hub looks for events without a notification (events held back by
    /// a long transaction, a notification lost while reconnecting).
    pub poll: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            capacity: 1024,
            keep_alive: Duration::from_secs(15),
            poll: Duration::from_millis(500),
        }
    }
}

/// The process's fan-out of live events; started by the first subscriber.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Hub>,
}

struct Hub {
    pool: PgPool,
    settings: EventSettings,
    sender: broadcast::Sender<Arc<StreamEvent>>,
    started: OnceCell<()>,
}

impl EventHub {
    /// A hub reading from `pool`.
    pub fn new(pool: PgPool, settings: EventSettings) -> Self {
        let (sender, _) = broadcast::channel(settings.capacity.max(1));
        Self {
            inner: Arc::new(Hub {
                pool,
                settings,
                sender,
                started: OnceCell::new(),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &EventSettings {
        &self.inner.settings
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<StreamEvent>>, ApiError> {
        let hub = self.inner.clone();
        self.inner
            .started
            .get_or_try_init(|| async move {
                let mut conn = hub.pool.acquire().await?;
                let cursor = events::horizon(&mut conn).await?;
                drop(conn);
                tokio::spawn(pump(hub, cursor));
                Ok::<_, ApiError>(())
            })
            .await?;
        Ok(self.inner.sender.subscribe())
    }
}

/// Reads new events after `cursor` whenever notified (or every `poll`) and broadcasts them.
async fn pump(hub: Arc<Hub>, mut cursor: StreamPosition) {
    let wake = Arc::new(Notify::new());
    tokio::spawn(listen(hub.pool.clone(), wake.clone()));
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(hub.settings.poll) => {}
        }
        loop {
            let page = match hub.pool.acquire().await {
                Ok(mut conn) => events::events_after(&mut conn, cursor, PAGE).await,
                Err(e) => Err(e.into()),
            };
            match page {
                Ok(page) => {
                    let full = page.len() as i64 == PAGE;
                    for event in page {
                        cursor = event.position();
                        // No subscriber is not an error: events are in the database.
                        let _ = hub.sender.send(Arc::new(event));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading new events failed; retrying");
                    break;
                }
            }
        }
    }
}

async fn listen(pool: PgPool, wake: Arc<Notify>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen("hitl_events").await {
                    tracing::warn!(error = %e, "LISTEN hitl_events failed");
                } else {
                    wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) | Ok(None) => wake.notify_one(),
                            Err(e) => {
                                tracing::warn!(error = %e, "event notifications lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for events; polling meanwhile"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Query parameters of `GET /api/events`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsQuery {
    /// Only the events of this run.
    #[serde(default)]
    run_id: Option<String>,
}

/// The SSE event name of an audit action.
pub fn event_name(action: AuditAction) -> &'static str {
    match action {
        AuditAction::RunCreated => "run_created",
        AuditAction::RunStarted => "run_started",
        AuditAction::NodeCompleted => "node_completed",
        AuditAction::HitlRequested => "request_raised",
        AuditAction::Resume => "resumed",
        AuditAction::Remove => "removed",
        AuditAction::Expire => "expired",
        AuditAction::HitlDisabled => "hitl_disabled",
        AuditAction::RunCompleted => "run_completed",
        AuditAction::RunFailed => "run_failed",
        AuditAction::RunCancelled => "run_cancelled",
        AuditAction::Rehydrate => "rehydrated",
    }
}

fn sse_event(event: &StreamEvent) -> Event {
    let mut data = serde_json::to_value(event).unwrap_or_default();
    data["event"] = event_name(event.action).into();
    Event::default()
        .id(event.event_id.to_string())
        .event(event_name(event.action))
        .data(data.to_string())
}

/// `GET /api/events` (scope `operate`; optional `runId`; honours `Last-Event-ID`).
#[utoipa::path(get, path = "/api/events", tag = "events", security(("bearer" = [])),
    params(
        ("runId" = Option<String>, Query, description = "only this run's events"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses(
        (status = 200, description = "Server-Sent Events; each event's data is a StreamEvent",
         content_type = "text/event-stream", body = String),
        (status = 422, description = "runId or Last-Event-ID is malformed", body = ErrorBody),
        AuthErrors))]
pub async fn stream(
    _: Authorized<Operate>,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = match query.run_id.as_deref() {
        None => None,
        Some(id) => Some(RunId::parse(id).map_err(|e| ApiError::invalid("runId", e.to_string()))?),
    };
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID", "must be an event id sent by this stream")
                })?,
        ),
    };
    // Subscribe before reading the start, so nothing falls between replay and live.
    let receiver = state.events.subscribe().await?;
    let mut conn = state.pool.acquire().await?;
    let start = match last_id {
        Some(id) => match events::position_of(&mut conn, id).await? {
            Some(position) => position,
            // An id this database never issued: start from now rather than loop on errors.
            None => events::horizon(&mut conn).await?,
        },
        None => events::horizon(&mut conn).await?,
    };
    drop(conn);
    let keep_alive = state.events.settings().keep_alive;
    let client = Client {
        pool: state.pool.clone(),
        cursor: start,
        replaying: true,
        buffer: VecDeque::new(),
        receiver,
        run,
        shutdown: state.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(client, |mut c| async move {
        c.next().await.map(|event| (Ok(sse_event(&event)), c))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")))
}

/// One connected client's position and source.
struct Client {
    pool: PgPool,
    cursor: StreamPosition,
    replaying: bool,
    buffer: VecDeque<StreamEvent>,
    receiver: broadcast::Receiver<Arc<StreamEvent>>,
    run: Option<RunId>,
    shutdown: CancellationToken,
}

impl Client {
    fn wanted(&self, event: &StreamEvent) -> bool {
        event.position() > self.cursor && self.run.as_ref().is_none_or(|r| *r == event.run_id)
    }

    /// The next event for this client; `None` ends the stream.
    async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.cursor = event.position();
                if self.run.as_ref().is_none_or(|r| *r == event.run_id) {
                    return Some(event);
                }
                continue;
            }
            if self.replaying {
                let mut conn = self.pool.acquire().await.ok()?;
                let page = events::events_after(&mut conn, self.cursor, PAGE)
                    .await
                    .ok()?;
                self.replaying = page.len() as i64 == PAGE;
                self.buffer.extend(page);
                continue;
            }
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(event) if self.wanted(&event) => return Some(self.advance(&event)),
                Ok(_) => {}
                // Behind the live channel (a burst, a slow reader): catch up from the
                // database from where this client is, page by page, then rejoin live.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "an event stream client fell behind; catching up");
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn advance(&mut self, event: &StreamEvent) -> StreamEvent {
        self.cursor = event.position();
        event.clone()
    }
}
