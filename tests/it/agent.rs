//! Agent runtimes behind `agent.webhook`, played by a real HTTP server on port 0: runner
//! state that survives a pause and a full restart, retries on 5xx and timeouts, no retry
//! on 4xx, signed calls, the allow-list, at most one node repeated after a crash; and
//! deadlines racing with answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::ServiceProcess;
use crate::common::queue_support::{RunningWorker, fast_settings, submit_resumes, wait_for_count};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hitl_orchestrator::config::Secret;
use hitl_orchestrator::domain::{RunId, RunStatus};
use hitl_orchestrator::engine::capability::CapabilityRegistry;
use hitl_orchestrator::engine::webhook::{AgentWebhook, WebhookSettings};
use hitl_orchestrator::engine::{Engine, EngineError, RetryPolicy};
use hitl_orchestrator::persistence::{self, BriefInput, NewRun, RunRef};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sqlx::PgPool;

/// One call the agent received.
#[derive(Clone, Debug)]
struct Call {
    body: Value,
    idempotency_key: String,
    signature: Option<String>,
    raw: Vec<u8>,
}

type Script = dyn Fn(&Value, usize) -> (u16, Value, Duration) + Send + Sync;

struct Agent {
    calls: Mutex<Vec<Call>>,
    script: Box<Script>,
}

/// Starts an agent answering by `script(body, calls so far for that node)`.
async fn agent(
    script: impl Fn(&Value, usize) -> (u16, Value, Duration) + Send + Sync + 'static,
) -> (String, Arc<Agent>) {
    let agent = Arc::new(Agent {
        calls: Mutex::new(vec![]),
        script: Box::new(script),
    });
    async fn handle(
        State(agent): State<Arc<Agent>>,
        headers: HeaderMap,
        raw: axum::body::Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        let body: Value = serde_json::from_slice(&raw).unwrap();
        let node = body["nodeId"].as_str().unwrap_or_default().to_owned();
        let seen = {
            let mut calls = agent.calls.lock().unwrap();
            let seen = calls
                .iter()
                .filter(|c| c.body["nodeId"] == node.as_str())
                .count();
            calls.push(Call {
                body: body.clone(),
                idempotency_key: headers["idempotency-key"].to_str().unwrap().to_owned(),
                signature: headers
                    .get("x-hitl-signature")
                    .map(|v| v.to_str().unwrap().to_owned()),
                raw: raw.to_vec(),
            });
            seen
        };
        let (status, reply, delay) = (agent.script)(&body, seen);
        // about time: the scripted agent answers only after its delay.
        tokio::time::sleep(delay).await;
        (StatusCode::from_u16(status).unwrap(), axum::Json(reply))
    }
    let app = axum::Router::new()
        .route("/agent", post(handle))
        .with_state(agent.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, agent)
}

fn engine(allowed: &str, timeout: Duration, secret: Option<&str>) -> Engine {
    let mut registry = CapabilityRegistry::with_builtins();
    let settings = WebhookSettings {
        allowed_urls: vec![allowed.to_owned()],
        timeout,
        max_response: 64 * 1024,
        ca_file: None,
        signing_secret: secret.map(Secret::new),
    };
    registry.register(
        "agent.webhook",
        Arc::new(AgentWebhook::new(settings).unwrap()),
    );
    Engine::new(registry, true).with_retry(short_window())
}

/// Retries spaced by milliseconds, given up after a second.
fn short_window() -> RetryPolicy {
    RetryPolicy {
        retry_for: Duration::from_secs(1),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    }
}

fn agent_plan(base: &str, nodes: &[&str]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|id| {
            json!({ "id": id, "type": "task", "capability": "agent.webhook",
                          "input": { "task": id }, "config": { "url": format!("{base}agent") } })
        })
        .collect();
    json!({ "nodes": nodes })
}

async fn create(engine: &Engine, pool: &PgPool, plan: Value) -> Result<RunId, EngineError> {
    let mut tx = pool.begin().await.unwrap();
    let new = NewRun {
        brief: BriefInput::New {
            title: "agent".into(),
            content: json!({}),
        },
        thread_id: None,
        plan,
        execution_context: json!({ "customer": "acme" }),
        runner_metadata: json!({}),
        principal: None,
    };
    let run = engine.create_run(&mut tx, new).await?;
    tx.commit().await.unwrap();
    Ok(run.run_id)
}

async fn run_status(pool: &PgPool, run: &RunId) -> (RunStatus, Option<String>) {
    let snap = persistence::load_snapshot(pool, run)
        .await
        .unwrap()
        .unwrap();
    (snap.run.status, snap.run.status_reason)
}

#[tokio::test]
async fn an_interrupting_agent_gets_the_answers_and_its_runner_state_back_after_a_full_restart() {
    let db = crate::common::fresh_db().await;
    let (base, agent) = agent(|body, _| {
        if body["responses"].is_null() {
            (200, json!({ "status": "interrupted", "runnerState": { "turn": 1, "memo": ["draft", "ask"] },
                          "request": { "prompt": "May I send the email?", "responseTypes": ["approval", "rejection"] } }), Duration::ZERO)
        } else {
            (200, json!({ "status": "completed", "output": { "sent": true }, "runnerState": { "turn": 2 },
                          "notes": "sent after approval" }), Duration::ZERO)
        }
    })
    .await;
    let run = create(
        &engine(&base, Duration::from_secs(5), None),
        &db.pool,
        agent_plan(&base, &["mail"]),
    )
    .await
    .unwrap();

    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HITL_AGENT_ALLOWED_URLS", base.as_str()),
    ];
    let mut first = ServiceProcess::start_worker(&env, logs.path());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'awaiting_hitl'",
        1,
        Duration::from_secs(20),
    )
    .await;
    let snap = persistence::load_snapshot(&db.pool, &run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        snap.hitl_requests[0].operator_prompt,
        "May I send the email?"
    );
    assert!(first.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));

    let mut second = ServiceProcess::start_worker(&env, logs.path());
    submit_resumes(&db.pool, std::slice::from_ref(&run)).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert!(second.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));

    let calls = agent.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body["executionContext"]["customer"], "acme");
    assert!(calls[0].body["runnerState"].is_null());
    assert_eq!(
        calls[1].body["runnerState"],
        json!({ "turn": 1, "memo": ["draft", "ask"] }),
        "exactly the state it returned"
    );
    assert_eq!(calls[1].body["responses"][0]["approved"], true);
    assert_ne!(
        calls[0].idempotency_key, calls[1].idempotency_key,
        "a new attempt, a new key"
    );
    let snap = persistence::load_snapshot(&db.pool, &run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.execution_context["mail"], json!({ "sent": true }));
    let stored = persistence::runner_state(&db.pool, &run, "mail")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap(),
        json!({ "turn": 2 })
    );
    assert_eq!(
        snap.run.runner_metadata["agentNotes"]["mail"],
        "sent after approval"
    );
}

#[tokio::test]
async fn a_5xx_is_retried_a_4xx_fails_the_run_and_a_hanging_agent_is_retried_then_fails_it() {
    let db = crate::common::fresh_db().await;
    let (base, agent) = agent(|body, seen| match body["input"]["task"].as_str().unwrap() {
        "flaky" if seen < 2 => (500, json!({ "message": "busy" }), Duration::ZERO),
        "flaky" => (
            200,
            json!({ "status": "completed", "output": "ok" }),
            Duration::ZERO,
        ),
        "picky" => (
            400,
            json!({ "message": "the draft is missing a subject" }),
            Duration::ZERO,
        ),
        _ => (
            200,
            json!({ "status": "completed", "output": "late" }),
            Duration::from_secs(3),
        ),
    })
    .await;
    let engine = engine(&base, Duration::from_millis(300), None);
    let flaky = create(&engine, &db.pool, agent_plan(&base, &["flaky"]))
        .await
        .unwrap();
    let picky = create(&engine, &db.pool, agent_plan(&base, &["picky"]))
        .await
        .unwrap();
    let sleepy = create(&engine, &db.pool, agent_plan(&base, &["sleepy"]))
        .await
        .unwrap();
    let worker = RunningWorker::spawn(&db.pool, engine, fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status in ('completed', 'failed')",
        3,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;

    assert_eq!(run_status(&db.pool, &flaky).await.0, RunStatus::Completed);
    assert_eq!(
        run_status(&db.pool, &picky).await,
        (
            RunStatus::Failed,
            Some("the draft is missing a subject".into())
        )
    );
    let (status, reason) = run_status(&db.pool, &sleepy).await;
    assert_eq!(status, RunStatus::Failed);
    let reason = reason.unwrap();
    assert!(
        reason.contains("could not be reached for 1s") && reason.contains("last error: timed out"),
        "{reason}"
    );
    let calls = agent.calls.lock().unwrap().clone();
    let count = |task: &str| {
        calls
            .iter()
            .filter(|c| c.body["input"]["task"] == task)
            .count()
    };
    assert_eq!((count("flaky"), count("picky")), (3, 1));
    assert!(
        (2..=10).contains(&count("sleepy")),
        "retried within its window, not forever: {}",
        count("sleepy")
    );
    let keys: Vec<_> = calls
        .iter()
        .filter(|c| c.body["input"]["task"] == "flaky")
        .map(|c| c.idempotency_key.clone())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "retries of one attempt share its key"
    );
}

#[tokio::test]
async fn a_reply_that_cannot_be_stored_fails_the_node_once_naming_the_field_and_never_loops() {
    let db = crate::common::fresh_db().await;
    let (base, agent) = agent(|_, _| {
        let reply = json!({ "status": "completed", "output": { "text": "tool said \u{0}" } });
        (200, reply, Duration::ZERO)
    })
    .await;
    let engine = engine(&base, Duration::from_secs(5), None);
    let run = create(&engine, &db.pool, agent_plan(&base, &["tool"]))
        .await
        .unwrap();
    let worker = RunningWorker::spawn(&db.pool, engine.clone(), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'failed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    // Nothing left to retry it: the queue is quiet and the agent was called once.
    hitl_orchestrator::jobs::Worker::new(db.pool.clone(), engine, fast_settings())
        .run_until_quiet(Duration::from_secs(30))
        .await
        .unwrap();
    let (status, reason) = run_status(&db.pool, &run).await;
    assert_eq!(status, RunStatus::Failed);
    let reason = reason.unwrap();
    assert!(
        reason.contains("output.text") && reason.contains("U+0000"),
        "{reason}"
    );
    assert_eq!(
        agent.calls.lock().unwrap().len(),
        1,
        "called once, not retried"
    );
    // And the sweep leaves it failed: nothing is stranded.
    let mut conn = db.pool.acquire().await.unwrap();
    let (stranded, _) = persistence::rehydrate::find_stranded(&mut conn, Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(stranded.is_empty(), "{stranded:?}");
}

#[tokio::test]
async fn calls_are_signed_and_urls_outside_the_allow_list_are_refused() {
    use hmac::{Hmac, KeyInit, Mac};
    let db = crate::common::fresh_db().await;
    let (base, agent) = agent(|_, _| {
        (
            200,
            json!({ "status": "completed", "output": 1 }),
            Duration::ZERO,
        )
    })
    .await;
    let engine = engine(&base, Duration::from_secs(5), Some("s3cret-signing-key"));
    create(&engine, &db.pool, agent_plan(&base, &["signed"]))
        .await
        .unwrap();
    let worker = RunningWorker::spawn(&db.pool, engine.clone(), fast_settings());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    let call = agent.calls.lock().unwrap()[0].clone();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-signing-key").unwrap();
    mac.update(&call.raw);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(call.signature, Some(format!("sha256={expected}")));

    let elsewhere = json!({ "nodes": [ { "id": "x", "type": "task", "capability": "agent.webhook",
                                         "config": { "url": "http://elsewhere.example/agent" } } ] });
    let Err(EngineError::InvalidPlan(e)) = create(&engine, &db.pool, elsewhere).await else {
        panic!("refused")
    };
    assert_eq!(
        (e.field.as_str(), e.node.as_deref()),
        ("plan.nodes[0].config.url", Some("x"))
    );
    let missing =
        json!({ "nodes": [ { "id": "y", "type": "task", "capability": "agent.webhook" } ] });
    let Err(EngineError::InvalidPlan(e)) = create(&engine, &db.pool, missing).await else {
        panic!("refused")
    };
    assert_eq!(e.field, "plan.nodes[0].config.url");
}

#[tokio::test]
async fn a_worker_killed_between_nodes_repeats_at_most_the_node_it_was_running() {
    let db = crate::common::fresh_db().await;
    let (base, agent) = agent(|body, seen| {
        // The first call to `slow` outlives the worker that makes it.
        let delay = if body["nodeId"] == "slow" && seen == 0 {
            Duration::from_secs(4)
        } else {
            Duration::ZERO
        };
        (
            200,
            json!({ "status": "completed", "output": body["nodeId"] }),
            delay,
        )
    })
    .await;
    let run = create(
        &engine(&base, Duration::from_secs(10), None),
        &db.pool,
        agent_plan(&base, &["first", "slow", "last"]),
    )
    .await
    .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HITL_AGENT_ALLOWED_URLS", base.as_str()),
        ("HITL_WORKER_HEARTBEAT", "200ms"),
        ("HITL_WORKER_ORPHAN_TIMEOUT", "2s"),
    ];
    let mut doomed = ServiceProcess::start_worker(&env, logs.path());
    let started = std::time::Instant::now();
    while !agent
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.body["nodeId"] == "slow")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow node was never called"
        );
        crate::common::poll_pause().await;
    }
    assert!(doomed.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5)));
    let mut heir = ServiceProcess::start_worker(&env, logs.path());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(heir.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));

    let calls = agent.calls.lock().unwrap().clone();
    let count = |node: &str| calls.iter().filter(|c| c.body["nodeId"] == node).count();
    assert_eq!(
        (count("first"), count("slow"), count("last")),
        (1, 2, 1),
        "only the interrupted node ran twice"
    );
    let snap = persistence::load_snapshot(&db.pool, &run)
        .await
        .unwrap()
        .unwrap();
    let done: Vec<_> = snap
        .audit_log
        .iter()
        .filter_map(|e| e.details["nodeId"].as_str())
        .collect();
    assert_eq!(
        done,
        vec!["first", "slow", "last"],
        "each node's outcome written once"
    );
}

#[tokio::test]
async fn an_unanswered_deadline_applies_on_timeout_and_an_answer_racing_its_expiry_applies_exactly_once()
 {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let plan = json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "?", "responseTypes": ["approval"],
                                     "timeoutSeconds": 1, "onTimeout": "reject", "onRejection": "cancel" } ] });
    let worker = RunningWorker::spawn(&db.pool, engine.clone(), fast_settings());
    let run = create(&engine, &db.pool, plan.clone()).await.unwrap();
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'cancelled'",
        1,
        Duration::from_secs(15),
    )
    .await;
    worker.stop().await;
    let snap = persistence::load_snapshot(&db.pool, &run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        snap.audit_log
            .iter()
            .any(|e| e.action == hitl_orchestrator::domain::AuditAction::Expire)
    );
    assert_eq!(snap.run.execution_context["review"]["status"], "expired");

    for _ in 0..30 {
        let mut tx = db.pool.begin().await.unwrap();
        let mut timed = plan.clone();
        timed["nodes"][0]["timeoutSeconds"] = json!(3600);
        let run = engine
            .create_run(
                &mut tx,
                NewRun {
                    brief: BriefInput::New {
                        title: "race".into(),
                        content: json!({}),
                    },
                    thread_id: None,
                    plan: timed,
                    execution_context: json!({}),
                    runner_metadata: json!({}),
                    principal: None,
                },
            )
            .await
            .unwrap()
            .run_id;
        tx.commit().await.unwrap();
        engine.advance(&db.pool, &run).await.unwrap();
        let header = persistence::find_run(&db.pool, &RunRef::Id(run.clone()))
            .await
            .unwrap()
            .unwrap();
        let request = header.pending_request_id.clone().unwrap();
        let command = crate::common::fixtures::submit(
            &db.pool,
            crate::common::fixtures::resume(&run, &request, "op"),
        )
        .await;
        let (pa, pb) = (db.pool.clone(), db.pool.clone());
        let resume =
            tokio::spawn(async move { crate::common::fixtures::apply(&pa, &command).await });
        let expire = tokio::spawn(async move {
            let mut tx = pb.begin().await.unwrap();
            let later = chrono::Utc::now() + chrono::Duration::hours(2);
            let outcome =
                persistence::expire_request(&mut tx, &request, later, persistence::AdvanceBy::Job)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            outcome
        });
        let resumed = matches!(
            resume.await.unwrap(),
            persistence::ApplyOutcome::Applied { .. }
        );
        let expired = matches!(
            expire.await.unwrap(),
            persistence::ExpireOutcome::Expired { .. }
        );
        assert!(
            resumed ^ expired,
            "exactly one of them applies (resumed {resumed}, expired {expired})"
        );
        let header = persistence::find_run(&db.pool, &RunRef::Id(run))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header.version, 4, "one transition after the pause");
    }
}
