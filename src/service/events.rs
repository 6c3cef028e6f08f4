//! The live event stream of run and HITL changes, made by any process.
//!
//! Every audit event is a stream event. One hub per process listens for `hitl_events`
//! notifications (sent by a trigger on the audit table, so changes committed by any
//! worker process arrive), reads new events up to the stream horizon (see
//! `persistence::events`) and fans them out through a bounded broadcast channel. A
//! subscriber first replays from the database what it missed after its last event id,
//! then follows the live channel. The channel is bounded and shared: a subscriber that
//! falls behind it (a burst, a slow reader) catches up from the database a page at a
//! time, so no subscriber makes the process buffer more than one page for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::CancellationToken;

use super::{Service, ServiceError};
use crate::domain::RunId;
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
    /// Where LISTEN connects: a direct one when `pool` goes through a pooler.
    listen_pool: PgPool,
    settings: EventSettings,
    sender: broadcast::Sender<Arc<StreamEvent>>,
    started: OnceCell<()>,
}

impl EventHub {
    /// A hub reading from `pool`, LISTENing on a connection of `listen_pool`.
    pub fn new(pool: PgPool, listen_pool: PgPool, settings: EventSettings) -> Self {
        let (sender, _) = broadcast::channel(settings.capacity.max(1));
        Self {
            inner: Arc::new(Hub {
                pool,
                listen_pool,
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

    async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<StreamEvent>>, ServiceError> {
        let hub = self.inner.clone();
        self.inner
            .started
            .get_or_try_init(|| async move {
                let mut conn = crate::db::session(&hub.pool).await?;
                let cursor = events::horizon(&mut conn).await?;
                drop(conn);
                tokio::spawn(pump(hub, cursor));
                Ok::<_, ServiceError>(())
            })
            .await?;
        Ok(self.inner.sender.subscribe())
    }
}

/// Reads new events after `cursor` whenever notified (or every `poll`) and broadcasts them.
async fn pump(hub: Arc<Hub>, mut cursor: StreamPosition) {
    let wake = Arc::new(Notify::new());
    tokio::spawn(listen(hub.listen_pool.clone(), wake.clone()));
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(hub.settings.poll) => {}
        }
        loop {
            let page = match crate::db::session(&hub.pool).await {
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
    // The hub lives as long as the process.
    let forever = CancellationToken::new();
    crate::persistence::listen::listen(
        &pool,
        "hitl_events",
        Duration::from_millis(500),
        &forever,
        |_| wake.notify_one(),
    )
    .await;
}

/// An event as both streams (`/api/events`, `/console/events`) send it: its SSE id (the
/// audit `event_id`), its name (the audit action's event name) and its data (the event
/// as JSON, with `event` set to the name).
pub fn wire(event: &StreamEvent) -> (String, &'static str, String) {
    let name = event.action.event_name();
    let mut data = serde_json::to_value(event).unwrap_or_default();
    data["event"] = name.into();
    (event.event_id.to_string(), name, data.to_string())
}

/// Which events a subscriber wants.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only the events of this run.
    pub run: Option<RunId>,
    /// Start after this event id (one the stream sent); from now when `None`, or when
    /// the id is not one this database issued.
    pub after: Option<i64>,
}

/// One subscriber's position and source.
pub struct EventStream {
    pool: PgPool,
    cursor: StreamPosition,
    replaying: bool,
    buffer: VecDeque<StreamEvent>,
    receiver: broadcast::Receiver<Arc<StreamEvent>>,
    run: Option<RunId>,
    shutdown: CancellationToken,
}

impl Service {
    /// Subscribes to the event stream from where `filter` says.
    pub async fn events(&self, filter: EventFilter) -> Result<EventStream, ServiceError> {
        // Subscribe before reading the start, so nothing falls between replay and live.
        let receiver = self.events.subscribe().await?;
        let mut conn = crate::db::session(&self.pool).await?;
        let start = match filter.after {
            Some(id) => match events::position_of(&mut conn, id).await? {
                Some(position) => position,
                // An id this database never issued: start from now rather than loop on errors.
                None => events::horizon(&mut conn).await?,
            },
            None => events::horizon(&mut conn).await?,
        };
        drop(conn);
        Ok(EventStream {
            pool: self.pool.clone(),
            cursor: start,
            replaying: true,
            buffer: VecDeque::new(),
            receiver,
            run: filter.run,
            shutdown: self.shutdown.clone(),
        })
    }
}

impl EventStream {
    fn wanted(&self, event: &StreamEvent) -> bool {
        event.position() > self.cursor && self.run.as_ref().is_none_or(|r| *r == event.run_id)
    }

    /// The next event; `None` ends the stream (shutdown, or the database is gone).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.cursor = event.position();
                if self.run.as_ref().is_none_or(|r| *r == event.run_id) {
                    return Some(event);
                }
                continue;
            }
            if self.replaying {
                let mut conn = crate::db::session(&self.pool).await.ok()?;
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
                Ok(event) if self.wanted(&event) => {
                    self.cursor = event.position();
                    return Some((*event).clone());
                }
                Ok(_) => {}
                // Behind the live channel (a burst, a slow reader): catch up from the
                // database from where this subscriber is, page by page, then rejoin live.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        "an event stream subscriber fell behind; catching up"
                    );
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
