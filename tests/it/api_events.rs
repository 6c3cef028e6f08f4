//! `GET /api/events`: a separate worker process's changes stream to an `api` process in
//! order; `Last-Event-ID` replays exactly what was missed; a client that reads nothing is
//! dropped while others are served; keep-alives flow; auth applies.

use std::time::Duration;

use crate::common::api::{
    ADMIN, AppOptions, OPERATOR, STRANGER, SUBMITTER, TestApp, approval, review_plan,
};
use hitl_orchestrator::service::EventSettings;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SSE event as received.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A bare SSE client over a socket.
pub(crate) struct SseClient {
    reader: BufReader<TcpStream>,
    comments: usize,
}

impl SseClient {
    pub(crate) async fn connect(
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (u16, Self) {
        Self::connect_with(base, path, token, last_event_id, None).await
    }

    /// Connects with a small socket receive buffer, so a client that stops reading
    /// stalls the server's writes quickly.
    async fn connect_with(
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> (u16, Self) {
        let auth = format!("Bearer {token}");
        Self::connect_raw(
            base,
            path,
            &[("Authorization", &auth)],
            last_event_id,
            recv_buffer,
        )
        .await
    }

    /// Connects sending `headers` (a cookie, a bearer token, both or none).
    pub(crate) async fn connect_raw(
        base: &str,
        path: &str,
        headers: &[(&str, &str)],
        last_event_id: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> (u16, Self) {
        let addr = base.trim_start_matches("http://");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await.unwrap();
            if header == "\r\n" || header.is_empty() {
                break;
            }
        }
        (
            status,
            Self {
                reader,
                comments: 0,
            },
        )
    }

    /// The next event, or `None` when the server closed the stream.
    pub(crate) async fn next(&mut self, within: Duration) -> Option<Sse> {
        let read = async {
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                // Chunked transfer framing: chunk-size lines are hex, not SSE fields.
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:"))
                {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(v);
                } else if line.starts_with(':') {
                    self.comments += 1;
                } else if line.is_empty() && !event.is_empty() {
                    return Some(Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .expect("an event in time")
    }

    /// Waits for a keep-alive comment on an idle stream.
    async fn keep_alive(&mut self, within: Duration) -> bool {
        let wait = async {
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                if line.starts_with(':') {
                    return true;
                }
            }
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }

    /// Events until one named `last` for `run` (inclusive), keeping only `run`'s.
    pub(crate) async fn until(&mut self, run: &str, last: &str) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self
                .next(Duration::from_secs(20))
                .await
                .expect("stream open");
            if e.data["runId"] != run {
                continue;
            }
            let done = e.event == last;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

pub(crate) fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn an_api_process_streams_in_order_a_run_that_a_separate_worker_process_advances_pauses_and_completes()
 {
    let db = crate::common::fresh_db().await;
    let route = crate::common::direct_route(&db.url);
    api_and_worker_processes_stream_a_run_in_order(&db, &route).await;
}

/// An `api` and a `worker` process, both reaching the database by `route`: a run created
/// and resumed over HTTP streams its every event, in order, each once.
pub(crate) async fn api_and_worker_processes_stream_a_run_in_order(
    db: &crate::common::TestDb,
    route: &crate::common::Route,
) {
    let logs = tempfile::tempdir().unwrap();
    let env = crate::common::env_with(route, &[("API_KEY", ADMIN)]);
    let mut api = crate::common::ServiceProcess::start(&["api"], &env, logs.path());
    let mut worker = crate::common::ServiceProcess::start_worker(&env, logs.path());
    let (status, mut sse) = SseClient::connect(&api.base_url, "/api/events", ADMIN, None).await;
    assert_eq!(status, 200, "{}", api.log());

    let client = crate::common::http_client();
    let plan = json!({ "nodes": [
        { "id": "prepare", "type": "task", "capability": "set", "input": { "draft": "v1" } },
        { "id": "review", "type": "hitl", "prompt": "Approve?", "responseTypes": ["approval"] },
        { "id": "publish", "type": "task", "capability": "set", "input": { "published": true } } ] });
    let created: Value = client
        .post(format!("{}/api/runs", api.base_url))
        .bearer_auth(ADMIN)
        .json(&json!({ "brief": { "title": "stream me" }, "plan": plan }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["runId"].as_str().unwrap().to_owned();
    let paused = sse.until(&run, "request_raised").await;
    let request = paused.last().unwrap().data["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let resumed = client
        .post(format!("{}/api/hitl/resume", api.base_url))
        .bearer_auth(ADMIN)
        .json(&approval(&run, &request, "op"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 202);
    let finished = sse.until(&run, "run_completed").await;

    let all: Vec<Sse> = paused.into_iter().chain(finished).collect();
    assert_eq!(
        names(&all),
        vec![
            "run_created",
            "run_started",
            "node_completed",
            "request_raised",
            "resumed",
            "node_completed",
            "run_completed"
        ]
    );
    let ids: Vec<i64> = all
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    let audit: Vec<i64> = sqlx::query_scalar(
        "select event_id from run_audit_events where run_id = $1 order by event_id",
    )
    .bind(&run)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted, audit,
        "every audit event of the run, each once, with its audit id"
    );
    assert!(all.iter().all(|e| e.data["runId"] == run.as_str()));
    assert_eq!(
        all[4].data["requestId"],
        request.as_str(),
        "request events carry the request id"
    );
    assert!(
        api.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)),
        "an open stream does not hold shutdown"
    );
    assert!(worker.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
}

#[tokio::test]
async fn reconnecting_with_last_event_id_replays_exactly_the_events_missed() {
    let app = TestApp::spawn().await;
    let (_, mut sse) = SseClient::connect(&app.base, "/api/events", OPERATOR, None).await;
    let run = app.create_run(review_plan()).await;
    let before = sse.until(&run, "request_raised").await;
    let last = before.last().unwrap().id.clone().unwrap();
    drop(sse);

    let request = before.last().unwrap().data["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = app
        .post("/api/hitl/resume", ADMIN, &approval(&run, &request, "op"))
        .await;
    assert_eq!(reply.status, 202);
    app.wait_for_run(&run, "completed").await;

    let (_, mut again) = SseClient::connect(&app.base, "/api/events", OPERATOR, Some(&last)).await;
    let after = again.until(&run, "run_completed").await;
    let missed: Vec<String> = sqlx::query_scalar(
        "select event_id::text from run_audit_events where run_id = $1 and event_id > $2::bigint order by event_id",
    )
    .bind(&run)
    .bind(&last)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let replayed: Vec<String> = after.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(
        replayed, missed,
        "exactly the missed events, no gap, no repeat"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_dropped_while_the_server_keeps_serving_others() {
    // A live channel far smaller than the burst, and a short write timeout.
    let options = AppOptions {
        events: EventSettings {
            capacity: 16,
            keep_alive: Duration::from_millis(200),
            poll: Duration::from_millis(100),
        },
        write_timeout: Duration::from_secs(1),
        ..AppOptions::default()
    };
    let app = TestApp::spawn_with(options).await;
    let (_, mut stalled) =
        SseClient::connect_with(&app.base, "/api/events", OPERATOR, None, Some(4096)).await;
    let (_, mut reader) = SseClient::connect(&app.base, "/api/events", OPERATOR, None).await;
    assert!(
        reader.keep_alive(Duration::from_secs(5)).await,
        "an idle stream gets keep-alive comments"
    );

    // 1,000 events of about 10 KB each (more than the kernel's socket buffers hold),
    // pushed at once while `stalled` reads nothing.
    let run = app.create_run(review_plan()).await;
    app.wait_for_run(&run, "awaiting_hitl").await;
    let rows = 1000;
    sqlx::query(
        "insert into run_audit_events (run_id, run_version, action, to_status, details) \
         select $1, 1000 + i, 'rehydrate', 'awaiting_hitl', jsonb_build_object('padding', repeat('x', 10000)) \
         from generate_series(1, $2) i",
    )
    .bind(&run)
    .bind(rows)
    .execute(&app.pool)
    .await
    .unwrap();

    // The reading client gets every event, in order, although the burst overran the
    // live channel: it caught up from the database.
    let mut ids = Vec::new();
    while ids.len() < rows as usize {
        let e = reader
            .next(Duration::from_secs(20))
            .await
            .expect("the reader is served");
        if e.event == "rehydrated" {
            ids.push(e.id.unwrap().parse::<i64>().unwrap());
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");

    // The stalled client's writes made no progress for longer than the timeout: when it
    // finally reads, its stream ends early. Dropped, not buffered for.
    // about time: longer than the write timeout, with the stalled client not reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stalled_got = 0;
    while let Some(e) = stalled.next(Duration::from_secs(20)).await {
        if e.event == "rehydrated" {
            stalled_got += 1;
        }
    }
    assert!(
        stalled_got < rows,
        "the stalled client was dropped (it got {stalled_got} of {rows})"
    );
    // And the server goes on serving.
    let (status, _) = SseClient::connect(&app.base, "/api/events", OPERATOR, None).await;
    assert_eq!(status, 200);
    let reply = app.get("/api/hitl/pending", OPERATOR).await;
    assert_eq!(reply.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_needs_a_token_with_the_operate_scope() {
    let app = TestApp::spawn().await;
    for (token, status) in [
        (STRANGER, 401),
        (SUBMITTER, 403),
        (OPERATOR, 200),
        (ADMIN, 200),
    ] {
        let (got, _) = SseClient::connect(&app.base, "/api/events", token, None).await;
        assert_eq!(got, status, "{token}");
    }
    let (got, _) =
        SseClient::connect(&app.base, "/api/events", OPERATOR, Some("not-a-number")).await;
    assert_eq!(got, 422);
    let (got, _) = SseClient::connect(&app.base, "/api/events?runId=bogus", OPERATOR, None).await;
    assert_eq!(got, 422);
    app.stop().await;
}
