//! Following a PostgreSQL notification channel, reconnecting for as long as it takes.
//!
//! The worker (new jobs) and the event hub (new audit events) both wait on LISTEN and
//! must never stop doing so because a connection dropped: they also poll, so a
//! notification lost while reconnecting costs one poll, and every (re)connection is
//! reported so the caller can look at once for what it may have missed.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// What the channel said.
#[derive(Debug)]
pub enum Heard<'a> {
    /// Listening (again): anything sent while not listening was missed.
    Listening,
    /// A notification and its payload.
    Notification(&'a str),
}

/// LISTENs on `channel` until `stop`, calling `on` for each notification and after each
/// (re)connection. Failures are logged and retried after `retry`.
pub async fn listen(
    pool: &PgPool,
    channel: &str,
    retry: Duration,
    stop: &CancellationToken,
    mut on: impl FnMut(Heard<'_>) + Send,
) {
    loop {
        match PgListener::connect_with(pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => {
                    on(Heard::Listening);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            message = listener.try_recv() => match message {
                                Ok(Some(n)) => on(Heard::Notification(n.payload())),
                                // The connection dropped; sqlx reconnects on the next call.
                                Ok(None) => on(Heard::Listening),
                                Err(e) => {
                                    tracing::warn!(error = %e, channel, "notifications lost; reconnecting");
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, channel, "LISTEN failed; polling meanwhile"),
            },
            Err(e) => {
                tracing::warn!(error = %e, channel, "cannot open the notification connection; polling meanwhile")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
