//! Notifications to local HTTP receivers on port 0: one delivery per (event, channel),
//! signed as documented, in the json and Slack formats, retried while a receiver is
//! down, listed as failed after the last attempt and re-sent; and across a worker
//! process SIGKILLed mid-delivery, no delivery lost and every repeat with an id already
//! seen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hitl_orchestrator::config::channels::{Channel, parse_channels_file};
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::jobs::notify::publish_channels;
use hitl_orchestrator::jobs::{Notifier, NotifySettings, Worker};
use serde_json::{Value, json};

use crate::common::api::{ADMIN, OPERATOR, TestApp, approval, spawn_with_tokens};
use crate::common::queue_support::{RunningWorker, fast_settings};

/// One POST a receiver got.
#[derive(Clone, Debug)]
struct Hit {
    delivery: String,
    event: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A receiver: records every POST; answers 503 to the first `failing` of them.
struct Receiver {
    hits: Mutex<Vec<Hit>>,
    failing: AtomicUsize,
    /// How long it takes to answer (a slow receiver, to be killed in the middle of).
    delay: Mutex<Duration>,
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    rx.hits.lock().unwrap().push(Hit {
        delivery: header("x-hitl-delivery"),
        event: header("x-hitl-event"),
        timestamp: header("x-hitl-timestamp"),
        signature: header("x-hitl-signature"),
        body: body.to_vec(),
    });
    let delay = *rx.delay.lock().unwrap();
    // about time: a slow receiver answers only after its delay.
    tokio::time::sleep(delay).await;
    let failing = rx
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// Serves a receiver on `listener`; returns it and its URL.
    fn serve(listener: tokio::net::TcpListener, failing: usize) -> (Arc<Self>, String) {
        let rx = Arc::new(Receiver {
            hits: Mutex::new(Vec::new()),
            failing: AtomicUsize::new(failing),
            delay: Mutex::new(Duration::ZERO),
        });
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (rx, url)
    }

    async fn start(failing: usize) -> (Arc<Self>, String) {
        Self::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            failing,
        )
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` POSTs arrived.
    async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let started = Instant::now();
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {} of {n} deliveries arrived: {hits:?}",
                hits.len()
            );
            crate::common::poll_pause().await;
        }
    }
}

const SECRET: &str = "receiver-secret-0123456789";

/// `[[channel]]` entries: (name, url, format, events, extra lines).
fn channels_toml(entries: &[(&str, &str, &str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, url, format, events, extra)| {
            format!(
                "[[channel]]\nname = \"{name}\"\nurl = \"{url}\"\nformat = \"{format}\"\n\
                 secret = \"{SECRET}\"\nevents = [{events}]\n{extra}\n"
            )
        })
        .collect()
}

fn settings(allowed: &[&str], max_attempts: u32) -> NotifySettings {
    NotifySettings {
        allowed_urls: allowed.iter().map(|s| (*s).to_owned()).collect(),
        timeout: Duration::from_secs(5),
        max_attempts,
        public_url: Some("https://hitl.example.com".into()),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

/// Publishes the channels of `text` and starts a worker that delivers them.
async fn notifying_worker(app: &TestApp, text: &str, settings: NotifySettings) -> RunningWorker {
    let allowed = settings.allowed_urls.clone();
    let channels: Vec<Channel> =
        parse_channels_file(text, &|url| Notifier::url_allowed(&allowed, url)).unwrap();
    publish_channels(&app.pool, &channels).await.unwrap();
    let notifier = Notifier::new(channels, settings).unwrap();
    RunningWorker::start(
        Worker::new(
            app.pool.clone(),
            Engine::with_builtins(true),
            fast_settings(),
        )
        .with_notifier(notifier),
    )
}

/// The signature as a receiver checks it: HMAC-SHA256 over `timestamp.body`.
fn verifies(hit: &Hit) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.", hit.timestamp).as_bytes());
    mac.update(&hit.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hit.signature == format!("v1={expected}")
}

fn plan(prompt: &str, extra: Value) -> Value {
    let mut node = json!({ "id": "review", "type": "hitl", "prompt": prompt,
                           "responseTypes": ["approval", "rejection"] });
    if let (Some(n), Some(e)) = (node.as_object_mut(), extra.as_object()) {
        n.extend(e.clone());
    }
    json!({ "nodes": [ node ] })
}

async fn deliveries(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from notification_deliveries {sql}"
    )))
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn each_event_reaches_each_channel_that_wants_it_once_signed_in_its_format() {
    let app = TestApp::spawn().await;
    let (json_rx, json_url) = Receiver::start(0).await;
    let (slack_rx, slack_url) = Receiver::start(0).await;
    let (none_rx, none_url) = Receiver::start(0).await;
    let text = channels_toml(&[
        (
            "ops-json",
            &json_url,
            "json",
            r#""request_raised", "resumed", "run_completed""#,
            "",
        ),
        (
            "ops-slack",
            &slack_url,
            "slack",
            r#""request_raised""#,
            r#"groups = ["payments"]"#,
        ),
        (
            "elsewhere",
            &none_url,
            "json",
            r#""request_raised", "resumed""#,
            r#"nodes = ["other"]"#,
        ),
    ]);
    let worker = notifying_worker(
        &app,
        &text,
        settings(&[&json_url, &slack_url, &none_url], 3),
    )
    .await;

    // Anyone may answer this one: the groups channel does not want it.
    let (run, request) = app
        .parked_with(plan("Ship <!channel> & <b>now</b>?", json!({})))
        .await;
    let accepted = app
        .post(
            "/api/hitl/resume",
            ADMIN,
            &approval(&run, &request, "alice"),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    app.wait_for_run(&run, "completed").await;
    // Assigned to payments: only its request_raised goes to the Slack channel.
    let (assigned, assigned_request) = app
        .parked_with(plan(
            "Refund <@U123|bob> 1 > 0 & more",
            json!({ "assignees": { "groups": ["payments"] },
                    "timeoutSeconds": 3600, "onTimeout": "reject" }),
        ))
        .await;

    json_rx.wait_for(4).await;
    slack_rx.wait_for(1).await;
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_deliveries where status <> 'delivered'",
        0,
        Duration::from_secs(30),
    )
    .await;
    // Everything due has been delivered; nothing more arrives.
    app.settle().await;
    worker.stop().await;
    assert_eq!(deliveries(&app, "").await, 5);
    assert!(none_rx.hits().is_empty(), "{:?}", none_rx.hits());

    // json: two runs' request_raised, one resumed, one run_completed, each id once.
    let hits = json_rx.hits();
    assert_eq!(hits.len(), 4, "{hits:?}");
    let mut events: Vec<&str> = hits.iter().map(|h| h.event.as_str()).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        [
            "request_raised",
            "request_raised",
            "resumed",
            "run_completed"
        ]
    );
    let ids: HashSet<&str> = hits.iter().map(|h| h.delivery.as_str()).collect();
    assert_eq!(ids.len(), 4);
    for hit in &hits {
        assert!(verifies(hit), "{hit:?}");
        let doc = hit.json();
        assert_eq!(doc["deliveryId"], hit.delivery.as_str());
        assert_eq!(doc["event"], hit.event.as_str());
        assert_eq!(doc["channel"], "ops-json");
        assert!(doc["eventId"].as_i64().unwrap() > 0, "{doc}");
        assert!(doc["runId"] == run.as_str() || doc["runId"] == assigned.as_str());
    }
    let raised = hits
        .iter()
        .map(Hit::json)
        .find(|d| d["event"] == "request_raised" && d["runId"] == run.as_str())
        .unwrap();
    assert_eq!(raised["request"]["prompt"], "Ship <!channel> & <b>now</b>?");
    assert_eq!(raised["request"]["requestId"], request.as_str());
    assert_eq!(
        raised["link"],
        format!("https://hitl.example.com/console/requests/{request}")
    );
    // A tampered body or timestamp does not verify.
    let mut tampered = hits[0].clone();
    tampered.timestamp.push('1');
    assert!(!verifies(&tampered));

    // Slack: the block structure of an incoming webhook, markup escaped.
    let hits = slack_rx.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert!(verifies(hit));
    assert_eq!(hit.event, "request_raised");
    let doc = hit.json();
    assert!(
        doc["text"].as_str().unwrap().contains("&lt;@U123|bob&gt;"),
        "{doc}"
    );
    let blocks = doc["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(
        blocks[1]["text"]["text"],
        "Refund &lt;@U123|bob&gt; 1 &gt; 0 &amp; more"
    );
    let fields = blocks[2]["fields"].as_array().unwrap();
    assert!(fields.iter().all(|f| f["type"] == "mrkdwn"));
    assert!(
        fields
            .iter()
            .any(|f| f["text"].as_str().unwrap().starts_with("*Deadline*")),
        "{fields:?}"
    );
    let actions = blocks.last().unwrap();
    assert_eq!(actions["type"], "actions");
    assert_eq!(actions["elements"][0]["type"], "button");
    assert_eq!(
        actions["elements"][0]["url"],
        format!("https://hitl.example.com/console/requests/{assigned_request}")
    );
    for block in blocks {
        assert!(
            matches!(
                block["type"].as_str(),
                Some("header" | "section" | "actions" | "context")
            ),
            "{block}"
        );
    }
    app.assert_audit_intact().await;
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_down_then_up_gets_its_deliveries_and_one_down_past_the_attempts_is_listed_and_resent()
 {
    let (app, tokens, _dir) = spawn_with_tokens(&[(
        "sup",
        "\"operate\", \"supervise\"",
        "operator = { id = \"sup\" }",
    )])
    .await;
    let supervisor = &tokens[0];
    // Down at first: nothing listens on its port until three attempts have failed.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down);
    let down_url = format!("http://{down_addr}/hook");
    // Answers 503 to its first three POSTs: past the three attempts allowed.
    let (failing_rx, failing_url) = Receiver::start(3).await;
    let text = channels_toml(&[
        ("flaky", &down_url, "json", r#""request_raised""#, ""),
        ("broken", &failing_url, "json", r#""request_raised""#, ""),
    ]);
    let allowed = [down_url.as_str(), failing_url.as_str()];
    let mut worker = notifying_worker(&app, &text, settings(&allowed, 3)).await;
    let run = app.create_run(plan("Approve?", json!({}))).await;
    app.wait_for_run(&run, "awaiting_hitl").await;

    // The failing receiver gets three attempts, then the delivery is failed.
    failing_rx.wait_for(3).await;
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_deliveries where channel = 'broken' and status = 'failed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    // The down one has failed its attempts too (connection refused): also failed.
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_deliveries where channel = 'flaky' and status = 'failed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    let hits = failing_rx.hits();
    assert_eq!(hits.len(), 3);
    assert_eq!(
        hits.iter()
            .map(|h| h.delivery.as_str())
            .collect::<HashSet<_>>()
            .len(),
        1,
        "every attempt carries the same delivery id"
    );

    // Listed for supervisors only.
    let forbidden = app.get("/api/notifications?status=failed", OPERATOR).await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    let listed = app
        .get("/api/notifications?status=failed", supervisor)
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed:?}");
    let broken = items.iter().find(|d| d["channel"] == "broken").unwrap();
    assert_eq!(broken["attempts"], 3);
    assert_eq!(broken["lastError"], "HTTP 503");
    assert_eq!(broken["deliveryId"], hits[0].delivery.as_str());
    let flaky = items.iter().find(|d| d["channel"] == "flaky").unwrap();
    assert_eq!(flaky["lastError"], "could not connect");
    for (path, status, field) in [
        ("/api/notifications?status=lost", 422, "status"),
        ("/api/notifications?limit=0", 422, "limit"),
        ("/api/notifications?after=nope", 422, "after"),
    ] {
        let bad = app.get(path, supervisor).await;
        assert_eq!((bad.status, bad.field()), (status, field), "{bad:?}");
    }

    // The receiver comes up; both are re-sent, keep their ids, and arrive.
    let (up_rx, _) = Receiver::serve(tokio::net::TcpListener::bind(down_addr).await.unwrap(), 0);
    worker.stop().await;
    worker = notifying_worker(&app, &text, settings(&allowed, 3)).await;
    for d in [broken, flaky] {
        let id = d["deliveryId"].as_str().unwrap();
        let resent = app
            .post(
                &format!("/api/notifications/{id}/resend"),
                supervisor,
                &json!({}),
            )
            .await;
        assert_eq!(resent.status, 200, "{resent:?}");
        assert_eq!(resent.body["status"], "pending");
        assert_eq!(resent.body["attempts"], 0);
    }
    let up = up_rx.wait_for(1).await;
    assert_eq!(up[0].delivery, flaky["deliveryId"].as_str().unwrap());
    let again = failing_rx.wait_for(4).await;
    assert_eq!(again[3].delivery, hits[0].delivery);
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_deliveries where status = 'delivered'",
        2,
        Duration::from_secs(30),
    )
    .await;
    // A delivered one is not re-sent; an unknown one is not found.
    let id = flaky["deliveryId"].as_str().unwrap();
    let conflict = app
        .post(
            &format!("/api/notifications/{id}/resend"),
            supervisor,
            &json!({}),
        )
        .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (409, "conflict"),
        "{conflict:?}"
    );
    let unknown = app
        .post(
            "/api/notifications/01890000-0000-7000-8000-000000000000/resend",
            supervisor,
            &json!({}),
        )
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    worker.stop().await;
    app.stop().await;
}

/// A worker process with the channels file, on `url`'s database.
fn worker_process(url: &str, channels: &std::path::Path, allowed: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_hitl-orchestrator"))
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("HITL_NOTIFY_CHANNELS_FILE", channels)
        // Signs as the in-process parts of the test do, so the chain verifies.
        .env(
            "HITL_AUDIT_SIGNING_KEY_FILE",
            channels.with_file_name("audit-key.pem"),
        )
        .env("HITL_NOTIFY_ALLOWED_URLS", allowed)
        .env("HITL_NOTIFY_TIMEOUT", "5s")
        .env("HITL_WORKER_HEARTBEAT", "200ms")
        .env("HITL_WORKER_ORPHAN_TIMEOUT", "2s")
        .env("HITL_WORKER_POLL_INTERVAL", "100ms")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_none_and_repeats_only_ids_already_seen() {
    let app = TestApp::spawn().await;
    let (rx, url) = Receiver::start(0).await;
    // Slow enough that the kill lands while POSTs are in flight.
    *rx.delay.lock().unwrap() = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("channels.toml");
    std::fs::write(
        &file,
        channels_toml(&[("sink", &url, "json", r#""request_raised", "resumed""#, "")]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("audit-key.pem"),
        crate::common::TEST_AUDIT_KEY,
    )
    .unwrap();
    let database_url = app.db.url.clone();
    let mut first = worker_process(&database_url, &file, &url);
    // The channel is published by the process at start.
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_channels where name = 'sink'",
        1,
        Duration::from_secs(30),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(app.create_run(plan("Approve?", json!({}))).await);
    }
    for run in &runs {
        app.wait_for_run(run, "awaiting_hitl").await;
    }
    // Mid-delivery: at least one POST arrived, its answer not yet given.
    rx.wait_for(1).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    first.wait().unwrap();
    *rx.delay.lock().unwrap() = Duration::ZERO;
    let mut second = worker_process(&database_url, &file, &url);
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from notification_deliveries where status = 'delivered'",
        4,
        Duration::from_secs(60),
    )
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let pairs: Vec<String> = sqlx::query_scalar(
        "select delivery_id::text from notification_deliveries order by delivery_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        pairs.len(),
        4,
        "one request_raised per run to the one channel"
    );
    let hits = rx.hits();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for hit in &hits {
        assert!(verifies(hit), "{hit:?}");
        *seen.entry(hit.delivery.as_str()).or_default() += 1;
    }
    let distinct: HashSet<&str> = seen.keys().copied().collect();
    let expected: HashSet<&str> = pairs.iter().map(String::as_str).collect();
    assert_eq!(
        distinct, expected,
        "every pair arrived, under its own id, and nothing else"
    );
    assert!(
        hits.len() > distinct.len(),
        "the kill interrupted at least one delivery, which came again: {seen:?}"
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

#[test]
fn serve_refuses_a_bad_channels_file_naming_its_line_and_not_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("channels.toml");
    std::fs::write(
        &file,
        channels_toml(&[(
            "outside",
            "https://evil.example/hook",
            "json",
            r#""request_raised""#,
            "",
        )]),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hitl-orchestrator"))
        .arg("serve")
        .env("HITL_NOTIFY_CHANNELS_FILE", &file)
        .env("HITL_NOTIFY_ALLOWED_URLS", "http://127.0.0.1:9/")
        .env("HITL_DATA_DIR", dir.path().join("data"))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HITL_NOTIFY_CHANNELS_FILE")
            && stderr.contains("line 1: `url` is not under an allowed notification URL"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "refused before any database"
    );
}

async fn count_events(app: &TestApp, run: &str, action: &str) -> i64 {
    sqlx::query_scalar("select count(*) from run_audit_events where run_id = $1 and action = $2")
        .bind(run)
        .bind(action)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_escalation_adds_a_group_whose_member_can_then_answer_and_reminders_stop_after_the_resume()
 {
    let (app, tokens, _dir) = spawn_with_tokens(&[(
        "bob",
        "\"operate\"",
        "operator = { id = \"bob\" }\ngroups = [\"leads\"]",
    )])
    .await;
    let bob = &tokens[0];
    let (remind_rx, remind_url) = Receiver::start(0).await;
    let (esc_rx, esc_url) = Receiver::start(0).await;
    let text = channels_toml(&[
        ("reminders", &remind_url, "json", r#""reminded""#, ""),
        // Wants no escalation of its own: the step names it.
        ("leads", &esc_url, "slack", r#""run_failed""#, ""),
    ]);
    let worker = notifying_worker(&app, &text, settings(&[&remind_url, &esc_url], 3)).await;
    let (run, request) = app
        .parked_with(plan(
            "Approve the refund?",
            json!({ "assignees": { "users": ["alice"] }, "remindEverySeconds": 1,
                    "escalation": [ { "afterSeconds": 3, "addAssignees": { "groups": ["leads"] },
                                      "notify": ["leads"] } ] }),
        ))
        .await;
    let answer = json!({ "runId": run, "requestId": request,
        "responses": [ { "requestId": request, "responseType": "approval", "approved": true } ] });
    // Before the escalation bob is not an assignee.
    let refused = app.post("/api/hitl/resume", bob, &answer).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "not_assignee"),
        "{refused:?}"
    );

    crate::common::queue_support::wait_for_count(
        &app.pool,
        &format!(
            "select count(*) from run_audit_events where run_id = '{run}' and action = 'escalated'"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
    // Reminders go out every second while it is pending: two of them, however the
    // scheduled jobs' pick-up delays fell against the escalation's.
    crate::common::queue_support::wait_for_count(
        &app.pool,
        &format!(
            "select least(count(*), 2) from run_audit_events \
             where run_id = '{run}' and action = 'reminded'"
        ),
        2,
        Duration::from_secs(30),
    )
    .await;
    let shown = app
        .get(&format!("/api/hitl/requests/{request}"), OPERATOR)
        .await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(
        shown.body["assignees"],
        json!({ "users": ["alice"], "groups": ["leads"] }),
        "{shown:?}"
    );
    assert_eq!(shown.body["followUp"]["escalated"], json!([0]), "{shown:?}");
    assert!(count_events(&app, &run, "reminded").await >= 2);
    assert!(
        shown.body["followUp"]["reminded"].as_u64().unwrap() >= 2,
        "{shown:?}"
    );

    // The escalation left the request answerable: bob's resume is valid now.
    let accepted = app.post("/api/hitl/resume", bob, &answer).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    app.wait_for_run(&run, "completed").await;
    let reminded = count_events(&app, &run, "reminded").await;
    // about time: two reminder intervals pass with the request settled.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.settle().await;
    assert_eq!(
        count_events(&app, &run, "reminded").await,
        reminded,
        "reminders stopped"
    );

    // The step told its channel; reminders went to theirs.
    let esc = esc_rx.wait_for(1).await;
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(esc[0].event, "escalated");
    assert!(verifies(&esc[0]));
    let reminders = remind_rx.wait_for(2).await;
    assert!(reminders.iter().all(|h| h.event == "reminded"));
    worker.stop().await;
    app.assert_audit_intact().await;
    app.stop().await;
}

#[tokio::test]
async fn follow_up_fields_are_checked_naming_the_field() {
    let app = TestApp::spawn().await;
    for (extra, field) in [
        (
            json!({ "remindEverySeconds": 0 }),
            "plan.nodes[0].remindEverySeconds",
        ),
        (json!({ "escalation": {} }), "plan.nodes[0].escalation"),
        (
            json!({ "escalation": [ { "afterSeconds": 5 } ] }),
            "plan.nodes[0].escalation[0]",
        ),
        (
            json!({ "escalation": [ { "afterSeconds": 5, "notify": ["x"], "then": 1 } ] }),
            "plan.nodes[0].escalation[0].then",
        ),
        (
            json!({ "escalation": [ { "notify": ["x"] } ] }),
            "plan.nodes[0].escalation[0].afterSeconds",
        ),
        (
            json!({ "escalation": [ { "afterSeconds": 5, "addAssignees": { "users": [] } } ] }),
            "plan.nodes[0].escalation[0].addAssignees",
        ),
    ] {
        let reply = app
            .post(
                "/api/runs",
                crate::common::api::SUBMITTER,
                &json!({ "brief": { "title": "t", "content": {} }, "plan": plan("ok?", extra) }),
            )
            .await;
        assert_eq!((reply.status, reply.field()), (422, field), "{reply:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_deadline_notice_reaches_the_channels_whose_period_it_is_and_none_once_answered() {
    let app = TestApp::spawn().await;
    let (soon_rx, soon_url) = Receiver::start(0).await;
    let (early_rx, early_url) = Receiver::start(0).await;
    let text = channels_toml(&[
        // Told 4 s after a 60 s deadline is raised.
        (
            "soon",
            &soon_url,
            "json",
            r#""request_expiring""#,
            "expiringNoticeSeconds = 56",
        ),
        // A notice period longer than the deadline: told at once (review requests only).
        (
            "early",
            &early_url,
            "slack",
            r#""request_expiring""#,
            "expiringNoticeSeconds = 600\nnodes = [\"review\"]",
        ),
    ]);
    let worker = notifying_worker(&app, &text, settings(&[&soon_url, &early_url], 3)).await;
    let deadline = json!({ "timeoutSeconds": 60, "onTimeout": "reject" });
    let (waiting, waiting_request) = app
        .parked_with(plan("Approve before noon?", deadline.clone()))
        .await;
    // Another node's request, answered before its notice is due.
    let mut quick_plan = plan("Quick one?", deadline);
    quick_plan["nodes"][0]["id"] = json!("quick");
    let (answered, answered_request) = app.parked_with(quick_plan).await;
    let accepted = app
        .post(
            "/api/hitl/resume",
            ADMIN,
            &approval(&answered, &answered_request, "alice"),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    app.wait_for_run(&answered, "completed").await;

    let early = early_rx.wait_for(1).await;
    assert_eq!(early[0].event, "request_expiring");
    assert!(verifies(&early[0]));
    let blocks = early[0].json()["blocks"].to_string();
    assert!(blocks.contains("A decision is due soon"), "{blocks}");
    assert!(blocks.contains("Deadline"), "{blocks}");
    let soon = soon_rx.wait_for(1).await;
    let doc = soon[0].json();
    assert_eq!(
        (soon[0].event.as_str(), doc["request"]["requestId"].as_str()),
        ("request_expiring", Some(waiting_request.as_str())),
        "{doc}"
    );
    assert_eq!(doc["details"]["noticeSeconds"], json!(56), "{doc}");

    // The answered request's notice came due and did nothing.
    crate::common::queue_support::wait_for_count(
        &app.pool,
        "select count(*) from apalis.jobs where job_type = 'hitl_expiring' and status = 'Done'",
        3,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(count_events(&app, &answered, "expiring").await, 0);
    assert_eq!(count_events(&app, &waiting, "expiring").await, 2);
    assert_eq!(soon_rx.hits().len(), 1, "{:?}", soon_rx.hits());
    assert_eq!(early_rx.hits().len(), 1, "{:?}", early_rx.hits());
    let shown = app.get(&format!("/api/runs/{waiting}"), OPERATOR).await;
    let actions: Vec<&str> = shown.body["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"expiring"), "{shown:?}");
    worker.stop().await;
    app.assert_audit_intact().await;
    app.stop().await;
}

/// A resume that leads to the run's next pause raises the next request in the resume's
/// own write (`persistence::TransitionWrite`): the channels filtering on that request's
/// node and on its assignees' groups see it, although the statement's snapshot of
/// `hitl_requests` does not show the row it inserts; its deadline's expiry job is
/// pushed beside it; and the chain of the three events (resume, node completed, request
/// raised) verifies.
#[tokio::test]
async fn a_request_raised_in_the_resumes_own_write_reaches_the_channels_of_its_node_and_groups() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "insert into notification_channels (name, format, events, nodes, groups) values \
         ('by-node', 'json', '{request_raised}', '{second}', '{}'), \
         ('by-group', 'json', '{request_raised}', '{}', '{payments}'), \
         ('other-group', 'json', '{request_raised}', '{}', '{legal}'), \
         ('other-node', 'json', '{request_raised,resumed}', '{elsewhere}', '{}'), \
         ('all', 'json', '{resumed,node_completed}', '{}', '{}')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let plan = json!({ "nodes": [
        { "id": "first", "type": "hitl", "prompt": "First?", "responseTypes": ["approval"] },
        { "id": "second", "type": "hitl", "prompt": "Second?", "responseTypes": ["approval"],
          "assignees": { "groups": ["payments"] }, "timeoutSeconds": 3600,
          "onTimeout": "reject" }
    ] });
    let (run, first) = app.parked_with(plan).await;
    let before: i64 = sqlx::query_scalar("select count(*) from notification_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let accepted = app
        .post("/api/hitl/resume", ADMIN, &approval(&run, &first, "alice"))
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    crate::common::queue_support::wait_for_count(
        &app.pool,
        &format!(
            "select count(*) from orchestrator_runs where run_id = '{run}' \
             and status = 'awaiting_hitl' and pending_request_id <> '{first}'"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
    let snapshot = app.wait_for_run(&run, "awaiting_hitl").await;
    let second = snapshot["pendingRequestId"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let row: (String, String, bool, String) = sqlx::query_as(
        "select q.node_id, q.status, q.expires_at > now() + interval '59 minutes', \
             q.assignees::text \
         from hitl_requests q where q.request_id = $1",
    )
    .bind(&second)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (row.0.as_str(), row.1.as_str(), row.2),
        ("second", "pending", true)
    );
    assert!(row.3.contains("payments"), "{row:?}");
    let expiry: i64 = sqlx::query_scalar(
        "select count(*) from apalis.jobs where job_type = 'hitl_expire' \
         and convert_from(job, 'UTF8')::jsonb ->> 'requestId' = $1 \
         and status = 'Pending' and run_at > now() + interval '59 minutes'",
    )
    .bind(&second)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(expiry, 1, "the deadline's expiry job");
    let told: Vec<(String, String)> = sqlx::query_as(
        "select channel, event from notification_deliveries \
         where run_id = $1 and (request_id = $2 or event <> 'request_raised') \
         order by channel, event",
    )
    .bind(&run)
    .bind(&second)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let told: Vec<(&str, &str)> = told.iter().map(|(c, e)| (c.as_str(), e.as_str())).collect();
    assert_eq!(
        told,
        [
            ("all", "node_completed"),
            ("all", "resumed"),
            ("by-group", "request_raised"),
            ("by-node", "request_raised"),
        ],
        "{before} deliveries before the resume"
    );
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from run_audit_events where run_id = $1 order by run_version",
    )
    .bind(&run)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        actions[actions.len() - 3..],
        ["resume", "node_completed", "hitl_requested"]
    );
    app.assert_audit_intact().await;
    app.stop().await;
}
