//! Agents that are down, misbehave or sit behind TLS, played by real servers on port 0:
//! an agent down when the operator answers (the run shows `agentRetry` and completes when
//! it is back, or fails once the window has passed), one attempt key across every
//! delivery of an attempt, replies over the size limit cut off, runner state kept byte
//! for byte across a restart, and HTTPS with a test CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use hitl_orchestrator::domain::RunId;
use hitl_orchestrator::engine::capability::CapabilityRegistry;
use hitl_orchestrator::engine::webhook::{AgentWebhook, WebhookSettings};
use hitl_orchestrator::engine::{Engine, RetryPolicy};
use hitl_orchestrator::persistence;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::ServiceProcess;
use crate::common::api::{AppOptions, OPERATOR, TestApp, approval};
use crate::common::queue_support::{RunningWorker, fast_settings, submit_resumes, wait_for_count};

/// One call as the agent received it.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub raw: String,
    pub body: Value,
    pub key: String,
}

/// What a scripted agent answers: status, exact body text, and how long it takes.
type Script = dyn Fn(&Value, usize) -> (u16, String, Duration) + Send + Sync;

pub(crate) struct RawAgent {
    calls: Mutex<Vec<Call>>,
    script: Box<Script>,
}

impl RawAgent {
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn answer(
    State(agent): State<Arc<RawAgent>>,
    headers: HeaderMap,
    raw: String,
) -> axum::response::Response {
    let body: Value = serde_json::from_str(&raw).unwrap();
    let seen = {
        let mut calls = agent.calls.lock().unwrap();
        let seen = calls.len();
        calls.push(Call {
            raw: raw.clone(),
            body: body.clone(),
            key: headers["idempotency-key"].to_str().unwrap().to_owned(),
        });
        seen
    };
    let (status, text, delay) = (agent.script)(&body, seen);
    // about time: a slow agent answers only after its delay.
    tokio::time::sleep(delay).await;
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        text,
    )
        .into_response()
}

fn router(agent: Arc<RawAgent>) -> axum::Router {
    axum::Router::new()
        .route("/agent", post(answer))
        .with_state(agent)
}

pub(crate) fn raw_agent(
    script: impl Fn(&Value, usize) -> (u16, String, Duration) + Send + Sync + 'static,
) -> Arc<RawAgent> {
    Arc::new(RawAgent {
        calls: Mutex::new(vec![]),
        script: Box::new(script),
    })
}

/// Serves `agent` on `listener`; returns the agent's URL.
pub(crate) fn serve(listener: tokio::net::TcpListener, agent: Arc<RawAgent>) -> String {
    let url = format!("http://{}/agent", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(agent)).await });
    url
}

/// A loopback address nothing listens on (yet): an agent that is down.
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub(crate) fn webhook_engine(
    allowed: &str,
    max_response: usize,
    ca_file: Option<std::path::PathBuf>,
) -> Engine {
    let mut registry = CapabilityRegistry::with_builtins();
    let settings = WebhookSettings {
        allowed_urls: vec![allowed.to_owned()],
        timeout: Duration::from_secs(5),
        max_response,
        ca_file,
        signing_secret: None,
    };
    registry.register(
        "agent.webhook",
        Arc::new(AgentWebhook::new(settings).unwrap()),
    );
    Engine::new(registry, true)
}

/// Retries spaced by tens of milliseconds, for `window`.
fn fast_retries(window: Duration) -> RetryPolicy {
    RetryPolicy {
        retry_for: window,
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    }
}

pub(crate) fn completed(output: Value) -> (u16, String, Duration) {
    reply(
        200,
        json!({ "status": "completed", "output": output }).to_string(),
    )
}

pub(crate) fn reply(status: u16, text: String) -> (u16, String, Duration) {
    (status, text, Duration::ZERO)
}

/// Review, then the agent's tool.
fn review_then_tool(url: &str) -> Value {
    json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Send the mail?", "responseTypes": ["approval"] },
        { "id": "send", "type": "task", "capability": "agent.webhook", "config": { "url": url } } ] })
}

async fn approve(app: &TestApp, run: &str) {
    let parked = app.wait_for_run(run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();
    let resumed = app
        .post("/api/hitl/resume", OPERATOR, &approval(run, &request, "op"))
        .await;
    assert_eq!(resumed.status, 202, "{resumed:?}");
}

/// An app whose agent (at the address returned) is down, retried for `window`, and a run
/// the operator has just approved up to that agent's node.
async fn answered_while_down(window: Duration) -> (TestApp, String, SocketAddr) {
    let address = free_address();
    let url = format!("http://{address}/agent");
    let engine = webhook_engine(&url, 1 << 20, None).with_retry(fast_retries(window));
    let app = TestApp::spawn_with(AppOptions {
        engine,
        ..AppOptions::default()
    })
    .await;
    let run = app.create_run(review_then_tool(&url)).await;
    approve(&app, &run).await;
    (app, run, address)
}

#[tokio::test]
async fn an_agent_down_when_the_operator_answers_is_waited_for_and_called_once_it_is_back() {
    let (app, run, address) = answered_while_down(Duration::from_secs(60)).await;

    // Down: connections refused. The run keeps running and says why.
    let waiting = app
        .poll(&format!("/api/runs/{run}"), |b| {
            b["agentRetry"]["attempts"].as_i64() >= Some(2)
        })
        .await;
    assert_eq!(waiting["status"], "running", "{waiting}");
    let retry = &waiting["agentRetry"];
    assert_eq!(retry["nodeId"], "send");
    assert!(
        retry["lastError"].as_str().unwrap().contains("refused"),
        "{retry}"
    );
    assert!(
        retry["nextAttemptAt"].is_string() && retry["since"].is_string(),
        "{retry}"
    );
    // about time: the agent stays down for about three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let agent = raw_agent(|_, _| completed(json!({ "sent": true })));
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    serve(listener, agent.clone());
    let done = app.wait_for_run(&run, "completed").await;
    assert!(done["agentRetry"].is_null(), "{done}");
    assert_eq!(done["executionContext"]["send"], json!({ "sent": true }));
    assert_eq!(agent.calls().len(), 1, "the tool ran once");
    let outages: Vec<&Value> = done["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent_unreachable")
        .collect();
    assert_eq!(outages.len(), 1, "one event for the outage: {outages:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_agent_down_past_the_window_fails_the_run_with_the_reason_and_nothing_retries_it() {
    let (app, run, _) = answered_while_down(Duration::from_millis(800)).await;
    let failed = app.wait_for_run(&run, "failed").await;
    let reason = failed["statusReason"].as_str().unwrap();
    assert!(
        reason.starts_with("node send: the agent could not be reached for 800ms")
            && reason.contains("refused"),
        "{reason}"
    );
    assert!(failed["agentRetry"].is_null(), "{failed}");
    app.settle().await;
    let after = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(after.body["status"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_call_and_a_sweep_repair_deliver_the_attempt_with_the_same_key() {
    let db = crate::common::fresh_db().await;
    // The first call outlives the worker making it; the second is refused (503) and its
    // job then lost; the third completes.
    let agent = raw_agent(|_, seen| match seen {
        0 => (200, completed(json!("late")).1, Duration::from_secs(4)),
        1 => reply(503, "{}".into()),
        _ => completed(json!("done")),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent.clone());
    let engine = webhook_engine(&url, 1 << 20, None).with_retry(RetryPolicy {
        retry_for: Duration::from_secs(3600),
        // Far off: the sweep, not the backoff, brings the third call.
        backoff: Duration::from_secs(3000),
        backoff_max: Duration::from_secs(3000),
    });
    let plan = json!({ "nodes": [ { "id": "tool", "type": "task", "capability": "agent.webhook",
                                     "config": { "url": url } } ] });
    let run =
        crate::common::queue_support::create_runs(&db.pool, &engine, 1, &plan).await[0].clone();
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HITL_AGENT_ALLOWED_URLS", url.as_str()),
        ("HITL_WORKER_HEARTBEAT", "200ms"),
        ("HITL_WORKER_ORPHAN_TIMEOUT", "1s"),
        ("HITL_AGENT_BACKOFF", "3000s"),
        ("HITL_AGENT_BACKOFF_MAX", "3000s"),
    ];
    let mut doomed = ServiceProcess::start_worker(&env, logs.path());
    wait_until(|| !agent.calls().is_empty()).await;
    assert!(doomed.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5)));
    // The heir takes the orphaned job over: the 503, then a wait of 3000 s.
    let mut heir = ServiceProcess::start_worker(&env, logs.path());
    wait_until(|| agent.calls().len() >= 2).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where agent_retry is not null",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(heir.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    // The waiting job is lost; the sweep finds the run stranded and starts it again.
    sqlx::query("delete from apalis.jobs where job_type = 'hitl_advance'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update orchestrator_runs set updated_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut settings = fast_settings();
    settings.sweep_interval = Duration::from_millis(100);
    settings.sweep_settle = Duration::ZERO;
    let worker = RunningWorker::spawn(&db.pool, engine, settings);
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;

    let keys: Vec<String> = agent.calls().into_iter().map(|c| c.key).collect();
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| *k == format!("{run}:tool:1")),
        "one attempt, one key: {keys:?}"
    );
    let snap = persistence::load_snapshot(&db.pool, &run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.execution_context["tool"], "done");
}

/// Creates a run of `plan` and works it with `engine` until one run is `status`.
async fn run_until(pool: &sqlx::PgPool, engine: Engine, plan: &Value, status: &str) -> RunId {
    let run = crate::common::queue_support::create_runs(pool, &engine, 1, plan).await[0].clone();
    let worker = RunningWorker::spawn(pool, engine, fast_settings());
    wait_for_count(
        pool,
        &format!("select count(*) from orchestrator_runs where status = '{status}'"),
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    run
}

pub(crate) async fn wait_until(done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never happened"
        );
        crate::common::poll_pause().await;
    }
}

#[tokio::test]
async fn a_reply_over_the_limit_fails_the_node_and_the_agent_is_cut_off_before_it_finished() {
    let db = crate::common::fresh_db().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let cut_off = Arc::new(AtomicBool::new(false));
    let (sent2, cut2) = (sent.clone(), cut_off.clone());
    // 64 MiB in chunks, far past the 64 KiB limit and any socket buffer.
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_request(&mut socket).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..1024 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if socket.write_all(&framed).await.is_err() {
                cut2.store(true, Ordering::SeqCst);
                return;
            }
            sent2.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let engine = webhook_engine(&url, 64 * 1024, None);
    let plan = json!({ "nodes": [ { "id": "big", "type": "task", "capability": "agent.webhook",
                                     "config": { "url": url } } ] });
    let run = run_until(&db.pool, engine, &plan, "failed").await;
    let reason = status_reason(&db.pool, &run).await;
    assert!(
        reason.contains("larger than HITL_AGENT_MAX_RESPONSE (65536 bytes)"),
        "{reason}"
    );
    wait_until(|| cut_off.load(Ordering::SeqCst)).await;
    assert!(
        sent.load(Ordering::SeqCst) < 64 * 1024 * 1024,
        "the connection closed before the agent finished sending"
    );
}

/// Reads one request's head and its `content-length` body.
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut byte).await.unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&byte[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = socket.read(&mut byte).await.unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&byte[..n]);
    }
}

async fn status_reason(pool: &sqlx::PgPool, run: &RunId) -> String {
    persistence::load_snapshot(pool, run)
        .await
        .unwrap()
        .unwrap()
        .run
        .status_reason
        .unwrap_or_default()
}

#[tokio::test]
async fn runner_state_with_escapes_duplicate_keys_and_unsorted_keys_comes_back_byte_for_byte_after_a_restart()
 {
    let db = crate::common::fresh_db().await;
    const STATE: &str = r#"{"zeta": 1, "alpha": "nul \u0000 here", "alpha": [2.50, 1e3], "big": 123456789012345678901234567890}"#;
    let agent = raw_agent(|body, _| {
        if body["responses"].is_null() {
            let text = format!(
                r#"{{"status": "interrupted", "runnerState": {STATE}, "request": {{"prompt": "Run the tool?", "responseTypes": ["approval"]}}}}"#
            );
            reply(200, text)
        } else {
            completed(json!("ran"))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent.clone());
    let engine = webhook_engine(&url, 1 << 20, None);
    let plan = json!({ "nodes": [ { "id": "tool", "type": "task", "capability": "agent.webhook",
                                     "config": { "url": url } } ] });
    let run =
        crate::common::queue_support::create_runs(&db.pool, &engine, 1, &plan).await[0].clone();
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HITL_AGENT_ALLOWED_URLS", url.as_str()),
    ];
    let mut first = ServiceProcess::start_worker(&env, logs.path());
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'awaiting_hitl'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(first.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    let mut second = ServiceProcess::start_worker(&env, logs.path());
    submit_resumes(&db.pool, std::slice::from_ref(&run)).await;
    wait_for_count(
        &db.pool,
        "select count(*) from orchestrator_runs where status = 'completed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(second.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    let calls = agent.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].raw.contains(&format!(r#""runnerState":{STATE}"#)),
        "sent back exactly: {}",
        calls[1].raw
    );
    assert_ne!(calls[0].key, calls[1].key, "the resume is a new attempt");
}

#[tokio::test]
async fn runner_state_null_clears_it_and_a_reply_without_one_keeps_it() {
    let db = crate::common::fresh_db().await;
    // Interrupt three times: with a state, without one, with null; then complete.
    let agent = raw_agent(|body, seen| {
        let ask = r#""request": {"prompt": "Go on?", "responseTypes": ["approval"]}"#;
        match (body["responses"].is_null(), seen) {
            (true, 0) => reply(
                200,
                format!(r#"{{"status": "interrupted", "runnerState": {{"k": 1}}, {ask}}}"#),
            ),
            (_, 1) => reply(200, format!(r#"{{"status": "interrupted", {ask}}}"#)),
            (_, 2) => reply(
                200,
                format!(r#"{{"status": "interrupted", "runnerState": null, {ask}}}"#),
            ),
            _ => completed(json!("ok")),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent.clone());
    let engine = webhook_engine(&url, 1 << 20, None);
    let plan = json!({ "nodes": [ { "id": "tool", "type": "task", "capability": "agent.webhook",
                                     "config": { "url": url } } ] });
    let run =
        crate::common::queue_support::create_runs(&db.pool, &engine, 1, &plan).await[0].clone();
    let worker = RunningWorker::spawn(&db.pool, engine, fast_settings());
    for parked in 1..=3 {
        wait_for_count(
            &db.pool,
            "select count(*) from orchestrator_runs where status = 'awaiting_hitl'",
            1,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(agent.calls().len(), parked);
        submit_resumes(&db.pool, std::slice::from_ref(&run)).await;
        wait_until(|| agent.calls().len() > parked).await;
    }
    worker.stop().await;
    let sent: Vec<Value> = agent
        .calls()
        .iter()
        .map(|c| c.body["runnerState"].clone())
        .collect();
    assert_eq!(
        sent,
        vec![
            Value::Null,
            json!({ "k": 1 }),
            json!({ "k": 1 }),
            Value::Null
        ],
        "kept when left out, cleared by null"
    );
    let keys: Vec<String> = agent.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        (1..=4)
            .map(|n| format!("{run}:tool:{n}"))
            .collect::<Vec<_>>(),
        "each resume enters the node again"
    );
}

/// A CA, and a certificate it signed for 127.0.0.1.
struct TestPki {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "hitl test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "test agent");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// Serves `agent` over TLS with `pki`'s certificate; returns its URL.
async fn serve_tls(agent: Arc<RawAgent>, pki: &TestPki) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/agent", listener.local_addr().unwrap());
    let app = router(agent);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_https_agent_signed_by_a_trusted_ca_works_and_an_untrusted_one_fails_the_node_at_once() {
    let db = crate::common::fresh_db().await;
    let pki = test_pki();
    let agent = raw_agent(|_, _| completed(json!("over tls")));
    let url = serve_tls(agent.clone(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let plan = json!({ "nodes": [ { "id": "secure", "type": "task", "capability": "agent.webhook",
                                     "config": { "url": url } } ] });

    let trusting = webhook_engine(&url, 1 << 20, Some(ca_file));
    let trusted = run_until(&db.pool, trusting, &plan, "completed").await;
    let snap = persistence::load_snapshot(&db.pool, &trusted)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.execution_context["secure"], "over tls");
    assert_eq!(agent.calls().len(), 1);

    // Without the CA: a configuration error, not an outage — failed at once, not retried.
    let doubting =
        webhook_engine(&url, 1 << 20, None).with_retry(fast_retries(Duration::from_secs(3600)));
    let untrusted = run_until(&db.pool, doubting, &plan, "failed").await;
    let reason = status_reason(&db.pool, &untrusted).await;
    assert!(
        reason.starts_with("TLS with the agent failed:")
            && reason.to_lowercase().contains("certificate"),
        "{reason}"
    );
    assert_eq!(
        agent.calls().len(),
        1,
        "the untrusted agent was never sent the call"
    );
    let outages: i64 = sqlx::query_scalar(
        "select count(*) from run_audit_events where action = 'agent_unreachable'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(outages, 0);
}
