//! `watch`: follows `GET /api/events` (Server-Sent Events), printing one line per event.
//!
//! Whenever the stream breaks — the service restarts, a proxy drops the connection, the
//! network fails, nothing arrives for longer than three keep-alive intervals — the client
//! reconnects with `Last-Event-ID` set to the last event it printed. The service then
//! replays what came after it, in its stream order, and goes live: nothing is missed and
//! nothing is printed twice. A refusal (401, 403, 422) ends the command at once; an
//! outage is retried until it has lasted `--reconnect-for`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Client, Reply, describe};
use super::{Failure, render};
use crate::config::client::{OutputFormat, WatchArgs};
use crate::domain::RunId;

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Silence after which the connection is taken for dead: the service sends a keep-alive
/// comment every 15 s, so three of them missing means the peer is gone.
const IDLE: Duration = Duration::from_secs(45);

/// One parsed server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A line parser for `text/event-stream` (the WHATWG rules the service's stream uses:
/// `field: value` lines, `:` comments, a blank line ending an event; LF, CRLF or CR line
/// ends), fed chunks as they arrive.
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: SseEvent,
    has_data: bool,
    /// A CR ended the last chunk: an LF starting the next belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// The events `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut done = Vec::new();
        for &b in chunk {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line =
                        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
                    if let Some(event) = self.line(&line) {
                        done.push(event);
                    }
                }
                _ => self.pending.push(b),
            }
        }
        done
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.event.id = Some(value.to_owned()),
            "event" => self.event.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// How one connection ended.
enum Ended {
    /// The service refused the stream: give up.
    Refused(Failure),
    /// The stream broke or never opened (`connected` says which): reconnect.
    Broken { connected: bool, why: String },
}

/// `watch`.
pub async fn watch(client: &Client, args: &WatchArgs) -> Result<(), Failure> {
    let run = args
        .run
        .as_deref()
        .map(|r| RunId::parse(r).map_err(|e| Failure::Invalid(format!("--run: `{r}` {e}"))))
        .transpose()?;
    let mut last_id: Option<String> = args.last_event_id.map(|id| id.to_string());
    let mut failing_since: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match follow(client, run.as_ref(), &mut last_id, args.client.output).await {
            Ended::Refused(failure) => return Err(failure),
            Ended::Broken { connected, why } => {
                if connected {
                    failing_since = None;
                    backoff = FIRST_BACKOFF;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= args.reconnect_for.0 {
                    return Err(Failure::Network(format!(
                        "the event stream could not be reopened for {} s: {why}",
                        args.reconnect_for.0.as_secs()
                    )));
                }
                eprintln!(
                    "warning: event stream interrupted ({why}); reconnecting in {} ms{}",
                    backoff.as_millis(),
                    last_id
                        .as_deref()
                        .map_or(String::new(), |id| format!(" after event {id}"))
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection: opened after `last_id`, read until it ends; every event printed and
/// remembered in `last_id` as it arrives.
async fn follow(
    client: &Client,
    run: Option<&RunId>,
    last_id: &mut Option<String>,
    output: OutputFormat,
) -> Ended {
    let mut request = client
        .request(reqwest::Method::GET, "/api/events")
        .header("accept", "text/event-stream");
    if let Some(run) = run {
        request = request.query(&[("runId", run.as_str())]);
    }
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let broken = |connected, why: String| Ended::Broken { connected, why };
    let mut response = match tokio::time::timeout(IDLE, request.send()).await {
        Err(_) => return broken(false, "no answer".into()),
        Ok(Err(e)) => return broken(false, describe(&e)),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    if status != 200 {
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let reply = Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        };
        // An outage (503, a proxy's 502/504) passes; a refusal will not.
        if status >= 500 {
            return broken(false, format!("HTTP {status} {}", reply.code()));
        }
        return Ended::Refused(Failure::Api(Box::new(reply)));
    }
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(IDLE, response.chunk()).await {
            Err(_) => return broken(true, format!("nothing for {} s", IDLE.as_secs())),
            Ok(Err(e)) => return broken(true, describe(&e)),
            Ok(Ok(None)) => return broken(true, "the service closed the stream".into()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for event in parser.feed(&chunk) {
            match output {
                OutputFormat::Json => println!("{}", event.data),
                OutputFormat::Table => {
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    println!("{}", render::event(&data));
                }
            }
            if event.id.is_some() {
                *last_id = event.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_ends_are_read_whole() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nid: 4").is_empty());
        let events = p.feed(b"1\r\nevent: resumed\r\ndata: {\"a\":1}\r\ndata: x\r\r\n");
        assert_eq!(
            events,
            vec![SseEvent {
                id: Some("41".into()),
                event: Some("resumed".into()),
                data: "{\"a\":1}\nx".into()
            }]
        );
        assert_eq!(p.feed(b"id: 42\ndata:y\n\n")[0].data, "y");
    }
}
