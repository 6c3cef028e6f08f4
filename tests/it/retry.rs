//! Retrying a failed run from the node that failed: the one exit from a terminal state.
//! A real HTTP server on port 0 plays an agent that goes down and comes back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use hitl_orchestrator::engine::capability::CapabilityRegistry;
use hitl_orchestrator::engine::webhook::{AgentWebhook, WebhookSettings};
use hitl_orchestrator::engine::{Engine, RetryPolicy};
use serde_json::{Value, json};

use crate::common::api::{AppOptions, OPERATOR, TestApp, approval};

/// An agent that asks for approval on its first call, then answers `completed`, or 503
/// while it is down; each answer after `delay_ms`.
#[derive(Default)]
struct Agent {
    down: AtomicBool,
    delay_ms: AtomicU64,
    calls: Mutex<Vec<(String, Value)>>,
}

async fn answer(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    let first = {
        let mut calls = agent.calls.lock().unwrap();
        calls.push((key, body.clone()));
        calls.len() == 1
    };
    let delay = Duration::from_millis(agent.delay_ms.load(Ordering::SeqCst));
    // about time: a slow agent keeps the run `running` while it answers.
    tokio::time::sleep(delay).await;
    if first {
        let reply = json!({ "status": "interrupted", "runnerState": { "turn": 1 },
                            "request": { "prompt": "Send the mail?", "responseTypes": ["approval", "rejection"] } });
        return (axum::http::StatusCode::OK, axum::Json(reply));
    }
    if agent.down.load(Ordering::SeqCst) {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({})),
        );
    }
    let reply = json!({ "status": "completed", "output": { "sent": true },
                        "runnerState": { "turn": 2 } });
    (axum::http::StatusCode::OK, axum::Json(reply))
}

async fn start_agent() -> (String, Arc<Agent>) {
    let agent = Arc::new(Agent::default());
    let app = axum::Router::new()
        .route("/agent", post(answer))
        .with_state(agent.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, agent)
}

fn agent_engine(url: &str) -> Engine {
    let mut registry = CapabilityRegistry::with_builtins();
    let settings = WebhookSettings {
        allowed_urls: vec![url.to_owned()],
        timeout: Duration::from_secs(5),
        max_response: 1 << 20,
        ca_file: None,
        signing_secret: None,
    };
    registry.register(
        "agent.webhook",
        Arc::new(AgentWebhook::new(settings).unwrap()),
    );
    // A short window: the slow 503s below must fail the run within the test.
    Engine::new(registry, true).with_retry(RetryPolicy {
        retry_for: Duration::from_millis(600),
        backoff: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    })
}

fn retry_body(who: &str) -> Value {
    json!({ "operator": { "id": who, "displayName": format!("Operator {who}") },
            "note": format!("{who}: the mail server is back") })
}

#[tokio::test]
async fn a_run_failed_by_a_down_agent_is_retried_once_from_its_node_and_completes() {
    let (url, agent) = start_agent().await;
    let mut app = TestApp::spawn_with(AppOptions {
        engine: agent_engine(&url),
        ..AppOptions::default()
    })
    .await;
    let plan = json!({ "nodes": [ { "id": "mail", "type": "task",
        "capability": "agent.webhook", "config": { "url": url } } ] });
    let run = app.create_run(plan).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();

    // The operator approves while the agent is down: each call takes a while, then 503.
    agent.down.store(true, Ordering::SeqCst);
    agent.delay_ms.store(700, Ordering::SeqCst);
    let resumed = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op"),
            &[("Prefer", "wait=10")],
        )
        .await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    app.wait_for_run(&run, "running").await;
    let early = app
        .post(
            &format!("/api/runs/{run}/retry"),
            OPERATOR,
            &retry_body("eve"),
        )
        .await;
    assert_eq!(
        (early.status, early.code()),
        (409, "run_not_failed"),
        "{early:?}"
    );
    let failed = app.wait_for_run(&run, "failed").await;
    assert!(failed["statusReason"].is_string(), "{failed}");

    // The agent is back. Two operators retry before any worker looks; one key is sent twice.
    agent.down.store(false, Ordering::SeqCst);
    agent.delay_ms.store(0, Ordering::SeqCst);
    app.stop_workers().await;
    let calls_before = agent.calls.lock().unwrap().len();
    let path = format!("/api/runs/{run}/retry");
    let first = app
        .post_with(&path, &retry_body("ann"), &[("Idempotency-Key", "retry-1")])
        .await;
    let again = app
        .post_with(&path, &retry_body("ann"), &[("Idempotency-Key", "retry-1")])
        .await;
    assert_eq!(
        (first.status, again.status),
        (202, 202),
        "{first:?} {again:?}"
    );
    assert_eq!(first.body["commandId"], again.body["commandId"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = app.post(&path, OPERATOR, &retry_body("bob")).await;
    assert_eq!(other.status, 202, "{other:?}");
    let retries = crate::common::queue_support::scalar(
        &app.pool,
        "select count(*) from hitl_commands where kind = 'retry'",
    )
    .await;
    assert_eq!(retries, 2, "one command per key");

    app.settle().await;
    let done = app.wait_for_run(&run, "completed").await;
    let views = [
        app.wait_for_command(first.body["commandId"].as_str().unwrap())
            .await,
        app.wait_for_command(other.body["commandId"].as_str().unwrap())
            .await,
    ];
    let won: Vec<&Value> = views
        .iter()
        .filter(|v| v["status"] == "succeeded")
        .collect();
    let lost: Vec<&Value> = views.iter().filter(|v| v["status"] == "rejected").collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{views:?}");
    assert_eq!(lost[0]["outcome"]["reason"], "conflict", "{}", lost[0]);
    assert_eq!(
        lost[0]["outcome"]["winner"]["commandId"],
        won[0]["commandId"]
    );

    // The agent was called once more: a new key, the state it left before failing.
    let calls = agent.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), calls_before + 1, "{calls:?}");
    let (key, body) = calls.last().unwrap();
    assert!(
        calls[..calls_before].iter().all(|(k, _)| k != key),
        "a new attempt key: {key}"
    );
    assert_eq!(body["runnerState"], json!({ "turn": 1 }), "{body}");
    assert_eq!(done["executionContext"]["mail"]["sent"], true, "{done}");

    let retried: Vec<&Value> = done["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "retry")
        .collect();
    assert_eq!(retried.len(), 1, "{}", done["auditLog"]);
    assert_eq!(retried[0]["operator"]["id"], won[0]["operator"]["id"]);
    assert_eq!(retried[0]["note"], won[0]["note"]);
    assert_eq!(retried[0]["commandId"], won[0]["commandId"]);

    // Completed is final.
    let late = app.post(&path, OPERATOR, &retry_body("cy")).await;
    assert_eq!((late.status, late.code()), (409, "run_not_failed"));
    app.stop().await;
}

#[tokio::test]
async fn only_a_failed_run_can_be_retried_and_an_unknown_one_is_404() {
    let app = TestApp::spawn().await;
    let (parked, _) = app.parked_run().await;
    let (cancelled, _) = app.parked_run().await;
    let removed = app
        .post_with(
            "/api/hitl/remove",
            &json!({ "runId": cancelled, "operator": { "id": "op" } }),
            &[("Prefer", "wait=10")],
        )
        .await;
    assert_eq!(removed.status, 200, "{removed:?}");
    let before = app.dump().await;
    for run in [&parked, &cancelled] {
        let reply = app
            .post(
                &format!("/api/runs/{run}/retry"),
                OPERATOR,
                &retry_body("op"),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (409, "run_not_failed"),
            "{reply:?}"
        );
        assert!(reply.body["error"]["details"]["runStatus"].is_string());
    }
    for run in ["run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70", "not-a-run"] {
        let reply = app
            .post(
                &format!("/api/runs/{run}/retry"),
                OPERATOR,
                &retry_body("op"),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (404, "run_not_found"),
            "{reply:?}"
        );
    }
    let blank = app
        .post(
            &format!("/api/runs/{parked}/retry"),
            OPERATOR,
            &json!({ "operator": { "id": " " } }),
        )
        .await;
    assert_eq!((blank.status, blank.field()), (422, "operator.id"));
    app.settle().await;
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn retry_works_with_hitl_switched_off() {
    let app = TestApp::spawn_with(AppOptions {
        engine: Engine::with_builtins(false),
        ..AppOptions::default()
    })
    .await;
    let plan = json!({ "nodes": [ { "id": "broken", "type": "task", "capability": "fail",
                                    "input": { "message": "misconfigured" } } ] });
    let run = app.create_run(plan).await;
    app.wait_for_run(&run, "failed").await;
    let reply = app
        .post_with(
            &format!("/api/runs/{run}/retry"),
            &retry_body("op"),
            &[("Prefer", "wait=10")],
        )
        .await;
    assert_eq!(reply.status, 200, "not 503 hitl_disabled: {reply:?}");
    assert_eq!(reply.body["status"], "succeeded");
    // The node that failed ran again (and, still misconfigured, failed again).
    let again = app.wait_for_run(&run, "failed").await;
    let failures = again["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run_failed")
        .count();
    assert_eq!(failures, 2, "{}", again["auditLog"]);
    app.stop().await;
}
