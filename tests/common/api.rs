//! Driving the real router over real HTTP: the app served by `axum::serve` on
//! `127.0.0.1:0`, a fresh database, in-process workers, three scoped tokens, and helpers
//! to create parked runs, wait for states and dump every orchestrator table.

use std::time::{Duration, Instant};

use hitl_orchestrator::api::{self, AppState, Authenticator};
use hitl_orchestrator::config::tokens::parse_token_list;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::service::{EventSettings, Service};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hitl_orchestrator::jobs::Worker;

use super::queue_support::{RunningWorker, fast_settings};
use super::{TestDb, fresh_db};

/// A token with every scope.
pub const ADMIN: &str = "admin-token-0123456789abcdef";
/// A token with `operate` only.
pub const OPERATOR: &str = "operator-token-0123456789abc";
/// A token with `submit` only.
pub const SUBMITTER: &str = "submitter-token-0123456789ab";
/// A well-formed token nobody configured.
pub const STRANGER: &str = "stranger-token-0123456789abc";

/// The orchestrator's tables, for dumps.
pub const TABLES: [&str; 7] = [
    "briefs",
    "orchestrator_runs",
    "hitl_requests",
    "hitl_responses",
    "hitl_commands",
    "run_audit_events",
    "hitl_approvals",
];

/// Writes a tokens file (HITL_TOKENS_FILE) of `entries` — `(name, scopes, more lines)`,
/// scopes as TOML list items (`"operate", "supervise"`) — each with a new random token;
/// returns the file and the tokens, in order.
pub fn tokens_file(
    dir: &std::path::Path,
    entries: &[(&str, &str, &str)],
) -> (std::path::PathBuf, Vec<String>) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    for (name, scopes, rest) in entries {
        let (token, hash) = hitl_orchestrator::identity::new_token().unwrap();
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n{rest}\n"
        ));
        tokens.push(token);
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    (path, tokens)
}

/// A test app that also accepts the tokens of a tokens file of `entries` (see
/// [`tokens_file`]); returns the app, the entries' tokens in order, and the directory
/// holding the file (kept for as long as the app runs).
pub async fn spawn_with_tokens(
    entries: &[(&str, &str, &str)],
) -> (TestApp, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = tokens_file(dir.path(), entries);
    let app = TestApp::spawn_with(AppOptions {
        tokens_file: Some(file),
        ..AppOptions::default()
    })
    .await;
    (app, tokens, dir)
}

/// The authenticator every test app uses.
pub fn test_tokens() -> Authenticator {
    Authenticator::new(
        parse_token_list(&format!(
            "admin:{ADMIN}:operate,submit;ops:{OPERATOR}:operate;ci:{SUBMITTER}:submit"
        ))
        .unwrap(),
    )
}

/// What a test app starts with.
pub struct AppOptions {
    pub engine: Engine,
    /// Run in-process workers (off: commands stay queued).
    pub workers: bool,
    pub max_body: usize,
    /// The live event hub's settings.
    pub events: EventSettings,
    /// Stalled writes fail after this long.
    pub write_timeout: Duration,
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    /// A stalled body is refused after this long.
    pub body_timeout: Duration,
    /// A tokens file loaded beside the test tokens.
    pub tokens_file: Option<std::path::PathBuf>,
    /// JWT bearer tokens accepted beside the test tokens.
    pub jwt: Option<hitl_orchestrator::identity::jwt::JwtSettings>,
    /// The operator console's settings.
    pub console: hitl_orchestrator::console::ConsoleSettings,
    /// The role the API's pool logs in as (`None`: the test database's own user).
    pub service_role: Option<&'static str>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            engine: Engine::with_builtins(true),
            workers: true,
            max_body: api::DEFAULT_MAX_BODY,
            events: EventSettings::default(),
            write_timeout: Duration::from_secs(30),
            header_timeout: api::HttpLimits::default().header_timeout,
            body_timeout: api::HttpLimits::default().body_timeout,
            tokens_file: None,
            jwt: None,
            console: Default::default(),
            service_role: None,
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `error.details.field` of a 422.
    pub fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running app.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub pool: PgPool,
    /// The app's credentials (a clone shares them: reloading its tokens file reloads the app's).
    pub auth: Authenticator,
    engine: Engine,
    worker: Option<RunningWorker>,
    shutdown: CancellationToken,
}

/// Serves `state`'s router on a free loopback port; returns its base URL.
pub async fn serve(state: AppState) -> String {
    serve_with(state, api::HttpLimits::default()).await
}

/// [`serve`], under `limits`.
pub async fn serve_with(state: AppState, limits: api::HttpLimits) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, state, limits));
    base
}

impl TestApp {
    /// The app with the built-in capabilities and workers running.
    pub async fn spawn() -> Self {
        Self::spawn_with(AppOptions::default()).await
    }

    pub async fn spawn_with(options: AppOptions) -> Self {
        let db = fresh_db().await;
        let pool = db.pool.clone();
        let worker = options
            .workers
            .then(|| RunningWorker::spawn(&pool, options.engine.clone(), fast_settings()));
        let engine = options.engine.clone();
        let service_pool = match options.service_role {
            Some(role) => crate::common::pool_as(&db, role).await,
            None => pool.clone(),
        };
        let service =
            Service::new(service_pool, options.engine).with_event_settings(options.events);
        let shutdown = service.shutdown().clone();
        let mut auth = test_tokens();
        if let Some(path) = &options.tokens_file {
            auth.load_tokens_file(path).unwrap();
        }
        if let Some(jwt) = options.jwt.clone() {
            auth = auth.with_jwt(hitl_orchestrator::identity::jwt::JwtVerifier::new(jwt));
        }
        let mut state = AppState::new(service, auth.clone());
        state.console = options.console.clone();
        state.max_body = options.max_body;
        state.body_timeout = options.body_timeout;
        let limits = api::HttpLimits {
            header_timeout: options.header_timeout,
            body_timeout: options.body_timeout,
            write_timeout: options.write_timeout,
            ..api::HttpLimits::default()
        };
        let base = serve_with(state, limits).await;
        Self {
            base,
            client: crate::common::http_client(),
            db,
            pool,
            auth,
            engine,
            worker,
            shutdown,
        }
    }

    /// Runs every due job to its end (here, and waiting for those another worker
    /// holds) until the queue is quiet: what the workers will do has been done.
    pub async fn settle(&self) {
        Worker::new(self.pool.clone(), self.engine.clone(), fast_settings())
            .run_until_quiet(Duration::from_secs(30))
            .await
            .unwrap();
    }

    /// Stops the workers (the server keeps serving): commands submitted now stay queued.
    pub async fn stop_workers(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Some(w) = self.worker {
            w.stop().await;
        }
    }

    /// The engine the app's workers run.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` and reads the answer (a body that is not JSON becomes a string).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// POST as `token` with extra headers.
    pub async fn post_as(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request).await
    }

    /// POST with extra headers.
    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client
            .post(self.url(path))
            .bearer_auth(ADMIN)
            .json(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request).await
    }

    /// Creates a run of `plan` through the API; returns its run id.
    pub async fn create_run(&self, plan: Value) -> String {
        let reply = self
            .post(
                "/api/runs",
                SUBMITTER,
                &json!({ "brief": { "title": "Spring launch post", "content": { "text": "draft" } },
                         "executionContext": { "locale": "en" }, "plan": plan }),
            )
            .await;
        assert_eq!(reply.status, 202, "{reply:?}");
        reply.body["runId"].as_str().unwrap().to_owned()
    }

    /// Creates a run that pauses at `review` (approval, rejection, option `short`|`long`,
    /// freeform) and waits until it does; returns (run id, pending request id).
    pub async fn parked_run(&self) -> (String, String) {
        self.parked_with(review_plan()).await
    }

    /// Creates a run of `plan` and waits until it pauses; returns (run id, pending
    /// request id).
    pub async fn parked_with(&self, plan: Value) -> (String, String) {
        let run = self.create_run(plan).await;
        let snapshot = self.wait_for_run(&run, "awaiting_hitl").await;
        let request = snapshot["pendingRequestId"].as_str().unwrap().to_owned();
        (run, request)
    }

    /// Polls `GET /api/runs/{run}` until its status is `status`; returns the snapshot.
    pub async fn wait_for_run(&self, run: &str, status: &str) -> Value {
        self.poll(&format!("/api/runs/{run}"), |b| b["status"] == status)
            .await
    }

    /// Polls `GET /api/hitl/commands/{id}` until it is final; returns the view.
    pub async fn wait_for_command(&self, id: &str) -> Value {
        self.poll(&format!("/api/hitl/commands/{id}"), |b| {
            matches!(
                b["status"].as_str(),
                Some("succeeded" | "rejected" | "failed")
            )
        })
        .await
    }

    /// Polls `GET path` until `done` holds for its body; returns the body.
    pub async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let reply = self.get(path, OPERATOR).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            if done(&reply.body) {
                return reply.body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path} never got there: {}",
                reply.body
            );
            super::poll_pause().await;
        }
    }

    /// Asserts that every run's audit chain verifies: every transition appended its
    /// event in order, hashed and signed.
    pub async fn assert_audit_intact(&self) {
        let mut conn = self.pool.acquire().await.unwrap();
        let mut after: Option<hitl_orchestrator::domain::RunId> = None;
        loop {
            let (verdicts, next) =
                hitl_orchestrator::persistence::audit::verify_page(&mut conn, after.as_ref(), 100)
                    .await
                    .unwrap();
            for v in &verdicts {
                assert!(v.intact, "{v:?}");
                assert_eq!(v.signed, v.events, "{v:?}");
            }
            match next {
                Some(n) => after = Some(n),
                None => return,
            }
        }
    }

    /// Every row of every orchestrator table, to show a refused request changed nothing.
    /// `rehydrated_at` is left out: a worker's start-up rescan stamps it on its own time.
    pub async fn dump(&self) -> Vec<Vec<Value>> {
        let mut tables = Vec::new();
        for t in TABLES {
            let rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select to_jsonb(t) - 'rehydrated_at' from {t} t order by 1"
            )))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            tables.push(rows);
        }
        tables
    }
}

/// A plan that pauses at `review`, then completes.
pub fn review_plan() -> Value {
    json!({ "nodes": [
        { "id": "prepare", "type": "task", "capability": "set", "input": { "draft": "v1" } },
        { "id": "review", "type": "hitl", "prompt": "Approve the draft?",
          "responseTypes": ["approval", "rejection", "option", "freeform"],
          "options": [ { "id": "short", "label": "Shorten it" }, { "id": "long", "label": "Expand it" } ],
          "contract": { "facets": ["tone"], "capabilityContract": { "output": "approved draft" } } },
        { "id": "publish", "type": "task", "capability": "set", "input": { "published": true } } ] })
}

/// The first audit event of `action` in a run's snapshot.
pub fn audit_event(snapshot: &Value, action: &str) -> Value {
    snapshot["auditLog"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["action"] == action))
        .unwrap_or_else(|| panic!("no {action} event in {snapshot}"))
        .clone()
}

/// A resume body approving `request` as operator `who`.
pub fn approval(run: &str, request: &str, who: &str) -> Value {
    json!({ "runId": run, "requestId": request,
            "responses": [ { "requestId": request, "responseType": "approval", "approved": true,
                             "freeformText": "Looks good", "responderId": who,
                             "responderDisplayName": format!("Operator {who}") } ],
            "operator": { "id": who, "displayName": format!("Operator {who}"),
                          "email": format!("{who}@example.com") },
            "note": "Approved after review" })
}
