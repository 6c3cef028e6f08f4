//! Test support shared by the integration tests: a real PostgreSQL for every test.
//!
//! With `DATABASE_URL` set, tests use that server. Otherwise each test process starts
//! one throwaway cluster with the service's own embedded-PostgreSQL code; a watchdog
//! process stops it and deletes its files when the test process exits, however it exits.
//! Every test gets its own database, cloned from a migrated template so it is fast.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hitl_orchestrator::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use hitl_orchestrator::db::{self, PoolSettings};
use sqlx::{Connection, PgConnection, PgPool};

pub mod api;
pub mod pooler;

/// How long a poll waits between two looks at what it waits for.
pub const POLL: Duration = Duration::from_millis(20);

/// The pause between two looks of a poll. Every caller loops until its condition holds
/// or its deadline passes, so this is never a wait for an outcome.
pub async fn poll_pause() {
    tokio::time::sleep(POLL).await; // the poll's pause
}

/// [`poll_pause`] for code that is not async.
pub fn poll_pause_blocking() {
    std::thread::sleep(POLL); // the poll's pause
}

/// The server tests run against: an admin URL (may create databases) and how to build
/// the URL of another database on it.
struct Server {
    admin_url: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
/// Kept open for the life of the process: its closing tells the watchdog to clean up.
static WATCHDOG: Mutex<Option<ChildStdin>> = Mutex::new(None);

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server { admin_url: url },
        _ => {
            let dir = tempfile::Builder::new()
                .prefix("hitl-test-pg-")
                .tempdir()
                .unwrap()
                .keep();
            let pg = start_ephemeral_cluster(&dir.join("data"));
            arm_watchdog(&pg, &dir);
            let server = Server {
                admin_url: pg.url_for("postgres"),
            };
            // Left running on purpose: the watchdog stops it when this process exits.
            std::mem::forget(pg);
            server
        }
    })
}

/// Starts a throwaway cluster (fsync off) in `data_dir`.
pub fn start_ephemeral_cluster(data_dir: &Path) -> EmbeddedPostgres {
    let mut opts = EmbeddedOptions::new(data_dir);
    opts.ephemeral = true;
    // The statement-budget tests count each transition's statements.
    opts.settings = vec![
        "shared_preload_libraries=pg_stat_statements".into(),
        "pg_stat_statements.track=top".into(),
    ];
    EmbeddedPostgres::start(&opts).expect("start the embedded PostgreSQL for tests")
}

/// A shell that blocks reading its stdin; when this process exits the pipe closes and
/// the shell stops the cluster at once and deletes its directory.
#[allow(
    clippy::zombie_processes,
    reason = "the watchdog must outlive this process; it is never waited for"
)]
fn arm_watchdog(pg: &EmbeddedPostgres, dir: &Path) {
    let pid = pg.postmaster_pid().expect("postmaster pid");
    let script = r#"read _ignored; kill -QUIT "$1" 2>/dev/null;
        for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done;
        rm -rf "$2""#;
    let mut child = Command::new("sh")
        .args([
            "-c",
            script,
            "watchdog",
            &pid.to_string(),
            &dir.to_string_lossy(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the test cluster watchdog");
    *WATCHDOG.lock().unwrap() = child.stdin.take();
}

/// A pool on `db` that logs in as `role` (created as a superuser with the test
/// server's password): statements are counted per role in `pg_stat_statements`.
pub async fn pool_as(db: &TestDb, role: &str) -> PgPool {
    let url = url_as(db, role).await;
    db::lazy_pool(
        &url,
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .unwrap()
}

/// The URL of `db` logging in as `role`, created as a superuser with the test server's
/// password unless it exists (two tests creating it at once: the loser meets the unique
/// index of `pg_authid` rather than `duplicate_object`).
pub async fn url_as(db: &TestDb, role: &str) -> String {
    assert!(role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    let (user_part, _) = db.url.split_once('@').expect("user in the test URL");
    let password = user_part.rsplit_once(':').map_or("", |(_, p)| p).to_owned();
    let create = format!(
        "do $$ begin create role {role} login superuser password '{password}'; \
         exception when duplicate_object or unique_violation then null; end $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&db.pool)
        .await
        .unwrap();
    let (scheme_user, rest) = db.url.split_once('@').unwrap();
    let (scheme, _) = scheme_user.split_once("://").unwrap();
    format!("{scheme}://{role}:{password}@{rest}")
}

/// `url` with its database replaced by `database`.
pub use hitl_orchestrator::db::url_with_database;

fn migrations_fingerprint() -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let queue = apalis_postgres::PostgresStorage::migrations();
    for m in db::MIGRATOR.iter().chain(queue.iter()) {
        for b in m.version.to_le_bytes().iter().chain(m.checksum.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let admin = &server().admin_url;
            let name = format!("hitl_tpl_{}", migrations_fingerprint());
            let mut conn = PgConnection::connect(admin)
                .await
                .expect("connect as admin");
            // Several test processes may share one DATABASE_URL: one builds the template.
            sqlx::query("select pg_advisory_lock(7391004)")
                .execute(&mut conn)
                .await
                .unwrap();
            let ready: Option<bool> =
                sqlx::query_scalar("select datistemplate from pg_database where datname = $1")
                    .bind(&name)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
            if ready != Some(true) {
                if ready.is_some() {
                    exec(&mut conn, &format!("drop database \"{name}\"")).await;
                }
                exec(&mut conn, &format!("create database \"{name}\"")).await;
                let pool = PgPool::connect(&url_with_database(admin, &name))
                    .await
                    .unwrap();
                db::migrate(&pool)
                    .await
                    .expect("migrate the template database");
                hitl_orchestrator::persistence::audit::install_signer(Some(test_signer()));
                hitl_orchestrator::persistence::audit::register_signer(&pool)
                    .await
                    .expect("list the test signing key");
                pool.close().await;
                exec(
                    &mut conn,
                    &format!("alter database \"{name}\" is_template true"),
                )
                .await;
            }
            sqlx::query("select pg_advisory_unlock(7391004)")
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            name
        })
        .await
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A fresh, migrated database of its own for one test.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// Its URL (with credentials), e.g. for a child process's DATABASE_URL.
    pub url: String,
    /// Its name.
    pub name: String,
}

/// The audit signing key every test process signs with (made for the tests with
/// `openssl genpkey -algorithm ed25519`; its public key is listed in every test database).
pub const TEST_AUDIT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFP0Zl3RhlaIdSQ0C3qFbeBBqhIfD2pDV0dEjOiSCKzG
-----END PRIVATE KEY-----
";

/// The test signing key, installed in this process once: every audit event an
/// in-process app or worker writes is signed, as in a deployment with a key.
pub fn test_signer() -> std::sync::Arc<hitl_orchestrator::persistence::audit::Signer> {
    static SIGNER: OnceLock<std::sync::Arc<hitl_orchestrator::persistence::audit::Signer>> =
        OnceLock::new();
    SIGNER
        .get_or_init(|| {
            let signer = std::sync::Arc::new(
                hitl_orchestrator::persistence::audit::Signer::from_pem(TEST_AUDIT_KEY.as_bytes())
                    .unwrap(),
            );
            hitl_orchestrator::persistence::audit::install_signer(Some(signer.clone()));
            signer
        })
        .clone()
}

/// Creates a fresh database cloned from the migrated template.
pub async fn fresh_db() -> TestDb {
    test_signer();
    let template = template().await;
    let admin = &server().admin_url;
    let name = format!("hitl_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(admin).await.unwrap();
    let sql = format!("create database \"{name}\" template \"{template}\"");
    let mut tries = 0;
    loop {
        match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
        {
            Ok(_) => break,
            // "source database is being accessed by other users": a concurrent clone.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && tries < 250 =>
            {
                tries += 1;
                poll_pause().await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    conn.close().await.unwrap();
    let url = url_with_database(admin, &name);
    let pool = db::lazy_pool(
        &url,
        PoolSettings {
            max_connections: 20,
            // The service's 1.5 s is for answering 503 fast; a test's own reads must
            // ride out a loaded machine (worker processes, parallel tests) instead.
            acquire_timeout: Duration::from_secs(15),
        },
    )
    .unwrap();
    TestDb { pool, url, name }
}

/// How a service process reaches its database: the connection settings, as environment
/// variables — straight to PostgreSQL ([`direct_route`]) or through a pooler
/// ([`pooler::PgBouncer::route`]).
pub type Route = Vec<(&'static str, String)>;

/// Straight to the database of `url`.
pub fn direct_route(url: &str) -> Route {
    vec![("DATABASE_URL", url.to_owned())]
}

/// `route` followed by `more`, borrowed as [`ServiceProcess::start`] takes them.
pub fn env_with<'a>(route: &'a Route, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    route
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(more.iter().copied())
        .collect()
}

/// The built service binary.
pub fn service_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hitl-orchestrator"))
}

/// A service process started by a test; killed when dropped.
pub struct ServiceProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>` once it listens.
    pub base_url: String,
    pub stderr_log: PathBuf,
}

impl ServiceProcess {
    /// Starts the binary with `args` and `env` (an empty value removes the variable),
    /// waits for its "listening on" line, and returns its base URL.
    pub fn start(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        Self::start_until(args, env, log_dir, "hitl-orchestrator listening on ")
    }

    /// Starts a `worker` process and waits until it runs.
    pub fn start_worker(env: &[(&str, &str)], log_dir: &Path) -> Self {
        Self::start_until(&["worker"], env, log_dir, "hitl-orchestrator worker ")
    }

    /// Starts the binary and waits for a stdout line starting with `ready`; what follows
    /// it is kept as `base_url`.
    pub fn start_until(
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
        ready: &'static str,
    ) -> Self {
        let stderr_log = log_dir.join(format!("service-{}.log", uuid::Uuid::now_v7().simple()));
        let mut cmd = Command::new(service_binary());
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("start the service binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(ready) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let base_url = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the service did not start listening; its log:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            base_url,
            stderr_log,
        }
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal, timeout: Duration) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            poll_pause_blocking();
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of live `postgres` processes whose command line mentions `pgdata`.
pub fn postgres_processes_for(pgdata: &Path) -> Vec<u32> {
    let needle = pgdata.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("postgres") && cmdline.contains(&needle) {
            found.push(pid);
        }
    }
    found
}

/// A minimal blocking HTTP GET on loopback, returning (status, body).
pub fn http_get(base_url: &str, path: &str) -> (u16, String) {
    http_get_with(base_url, path, "")
}

/// [`http_get`] with a bearer token (none when empty).
pub fn http_get_with(base_url: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Fixtures for persistence-level tests.
pub mod fixtures {
    use hitl_orchestrator::domain::{CommandKind, RequestId, ResponseType, RunId, TimeoutAction};
    use hitl_orchestrator::persistence::{
        self, BriefInput, NewCommand, NewRequest, NewRun, Operator, StepState,
    };
    use serde_json::{Value, json};
    use sqlx::PgPool;

    /// A plan document (the engine validates plans; persistence stores them).
    pub fn plan() -> Value {
        json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "Approve?",
                             "responseTypes": ["approval", "rejection", "option", "freeform"] } ] })
    }

    /// A new, queued run with a new brief.
    pub fn new_run(thread: Option<&str>) -> NewRun {
        NewRun {
            brief: BriefInput::New {
                title: "Spring launch".into(),
                content: json!({ "text": "draft" }),
            },
            thread_id: thread.map(|t| hitl_orchestrator::domain::ThreadId::parse(t).unwrap()),
            plan: plan(),
            execution_context: json!({ "locale": "en" }),
            runner_metadata: json!({}),
            principal: None,
        }
    }

    /// A request at node `node` accepting every response type, offering options a and b.
    pub fn new_request(
        node: &str,
        deadline: Option<(chrono::DateTime<chrono::Utc>, TimeoutAction)>,
    ) -> NewRequest {
        let response_types = vec![
            ResponseType::Approval,
            ResponseType::Rejection,
            ResponseType::Option,
            ResponseType::Freeform,
        ];
        NewRequest {
            request_id: RequestId::new(),
            node_id: node.into(),
            operator_prompt: format!("Decide on {node}"),
            response_types: response_types.clone(),
            options: json!([ { "id": "a", "label": "Option A" }, { "id": "b", "label": "Option B" } ]),
            items: vec![hitl_orchestrator::persistence::RequestItem {
                item_id: node.into(),
                kind: hitl_orchestrator::persistence::ItemKind::Question,
                title: format!("Decide on {node}"),
                tool: None,
                response_types,
                options: ["a", "b"]
                    .map(|id| hitl_orchestrator::persistence::ItemOption {
                        id: id.into(),
                        label: format!("Option {}", id.to_uppercase()),
                    })
                    .to_vec(),
            }],
            contract_summary: json!({ "facets": ["tone"], "capabilityContract": { "output": "text" } }),
            deadline,
            assignees: None,
            approvals_required: None,
            follow_up: None,
        }
    }

    pub fn state(n: u32) -> StepState {
        StepState {
            execution_context: json!({ "locale": "en", "step": n }),
            runner_metadata: json!({ "cursor": n }),
            plan: None,
            runner_state: None,
        }
    }

    /// A run paused at a pending request: (run, request, version).
    pub async fn parked_run(pool: &PgPool) -> (RunId, RequestId, i64) {
        let mut tx = pool.begin().await.unwrap();
        let run = persistence::create_run(&mut tx, new_run(None))
            .await
            .unwrap();
        let v = persistence::start_run(&mut tx, &run.run_id, run.version)
            .await
            .unwrap();
        let (request, v) = persistence::raise_request(
            &mut tx,
            &run.run_id,
            v,
            &new_request("review", None),
            &state(1),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        (run.run_id, request, v)
    }

    pub fn operator(id: &str) -> Operator {
        Operator {
            id: id.into(),
            display_name: Some(format!("Operator {id}")),
            email: Some(format!("{id}@example.com")),
        }
    }

    /// A resume command approving `request`.
    pub fn resume(run: &RunId, request: &RequestId, who: &str) -> NewCommand {
        NewCommand {
            kind: CommandKind::Resume,
            run_id: Some(run.clone()),
            request_id: Some(request.clone()),
            idempotency_key: None,
            payload: json!({ "responses": [ { "requestId": request, "responseType": "approval",
                             "approved": true, "freeformText": "Looks good", "responderId": who,
                             "responderDisplayName": format!("Operator {who}") } ] }),
            operator: operator(who),
            note: Some("Approved after review".into()),
            trace_context: None,
            principal: None,
            approver: None,
        }
    }

    /// A remove command for `run` (naming `request` when given).
    pub fn remove(run: &RunId, request: Option<&RequestId>, who: &str) -> NewCommand {
        NewCommand {
            kind: CommandKind::Remove,
            run_id: Some(run.clone()),
            request_id: request.cloned(),
            idempotency_key: None,
            payload: json!({ "reason": "Duplicate request" }),
            operator: operator(who),
            note: Some("Removing".into()),
            trace_context: None,
            principal: None,
            approver: None,
        }
    }

    /// Records and commits a command, returning its id.
    pub async fn submit(pool: &PgPool, cmd: NewCommand) -> hitl_orchestrator::domain::CommandId {
        let mut tx = pool.begin().await.unwrap();
        let recorded = persistence::record_command(&mut tx, cmd).await.unwrap();
        tx.commit().await.unwrap();
        recorded.command.command_id
    }

    /// Applies a command in its own transaction.
    pub async fn apply(
        pool: &PgPool,
        id: &hitl_orchestrator::domain::CommandId,
    ) -> persistence::ApplyOutcome {
        let mut tx = pool.begin().await.unwrap();
        let outcome = persistence::apply_command(&mut tx, id, persistence::AdvanceBy::Job)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        outcome
    }

    /// Counts rows of the orchestrator tables, to show a refused call wrote nothing.
    pub async fn table_counts(pool: &PgPool) -> Vec<i64> {
        let mut counts = Vec::new();
        for t in [
            "briefs",
            "orchestrator_runs",
            "hitl_requests",
            "hitl_responses",
            "hitl_commands",
            "run_audit_events",
        ] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t}")))
                    .fetch_one(pool)
                    .await
                    .unwrap();
            counts.push(n);
        }
        counts
    }
}

/// Running the queue in tests: in-process workers with short timings, bulk run creation,
/// and waiting for the database to reach a state.
pub mod queue_support {
    use std::time::{Duration, Instant};

    use hitl_orchestrator::domain::RunId;
    use hitl_orchestrator::engine::Engine;
    use hitl_orchestrator::jobs::{Worker, WorkerSettings};
    use hitl_orchestrator::persistence::{BriefInput, NewRun};
    use serde_json::{Value, json};
    use sqlx::PgPool;
    use tokio_util::sync::CancellationToken;

    /// Timings short enough for tests.
    pub fn fast_settings() -> WorkerSettings {
        WorkerSettings {
            concurrency: 8,
            batch_size: 8,
            poll_interval: Duration::from_millis(100),
            listen: true,
            heartbeat: Duration::from_millis(200),
            orphan_timeout: Duration::from_secs(2),
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            cleanup_interval: Duration::from_secs(3600),
            retain_done: Duration::from_secs(3600),
            retain_dead: Duration::from_secs(7 * 86400),
            sweep_interval: Duration::from_secs(3600),
            sweep_settle: Duration::from_secs(5),
        }
    }

    /// An in-process worker; stop it with [`RunningWorker::stop`].
    pub struct RunningWorker {
        token: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    }

    impl RunningWorker {
        pub fn spawn(pool: &PgPool, engine: Engine, settings: WorkerSettings) -> Self {
            Self::start(Worker::new(pool.clone(), engine, settings))
        }

        /// Runs `worker` (built with extra handlers, say) until stopped.
        pub fn start(worker: Worker) -> Self {
            let token = CancellationToken::new();
            let handle = tokio::spawn(worker.run(token.clone()));
            Self { token, handle }
        }

        pub async fn stop(self) {
            self.token.cancel();
            self.handle.await.unwrap();
        }
    }

    /// A plan with one HITL node: runs pause there, and complete once answered.
    pub fn review_plan() -> Value {
        json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "Approve?",
                             "responseTypes": ["approval", "rejection"] } ] })
    }

    /// Creates `n` runs of `plan` (queued, each with its first advancement job).
    pub async fn create_runs(pool: &PgPool, engine: &Engine, n: usize, plan: &Value) -> Vec<RunId> {
        let mut ids = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
            let mut tx = pool.begin().await.unwrap();
            for _ in chunk {
                let run = engine
                    .create_run(
                        &mut tx,
                        NewRun {
                            brief: BriefInput::New {
                                title: "Bulk".into(),
                                content: json!({}),
                            },
                            thread_id: None,
                            plan: plan.clone(),
                            execution_context: json!({}),
                            runner_metadata: json!({}),
                            principal: None,
                        },
                    )
                    .await
                    .unwrap();
                ids.push(run.run_id);
            }
            tx.commit().await.unwrap();
        }
        ids
    }

    /// The one bigint `sql` returns.
    pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// Polls `sql` (one bigint) until it equals `expected`, failing after `timeout`.
    pub async fn wait_for_count(pool: &PgPool, sql: &str, expected: i64, timeout: Duration) {
        let started = Instant::now();
        loop {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .unwrap();
            if n == expected {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{sql}: still {n}, not {expected}, after {timeout:?}"
            );
            super::poll_pause().await;
        }
    }

    /// Inserts `n` runs parked at the `review` node of [`review_plan`] exactly as the
    /// engine leaves them (see `persistence::seed`).
    pub async fn seed_parked_runs(pool: &PgPool, n: i64) {
        let plan = Engine::with_builtins(true)
            .validate_plan(&review_plan())
            .unwrap()
            .to_json();
        let mut tx = pool.begin().await.unwrap();
        hitl_orchestrator::persistence::seed::parked_runs(&mut tx, n, &plan)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        hitl_orchestrator::persistence::audit::chain_unhashed(pool)
            .await
            .unwrap();
    }

    /// Records a resume approving the pending request of every run given, 200 per
    /// transaction (each with its job).
    pub async fn submit_resumes(
        pool: &PgPool,
        runs: &[RunId],
    ) -> Vec<hitl_orchestrator::domain::CommandId> {
        let mut ids = Vec::new();
        for chunk in runs.chunks(200) {
            let mut tx = pool.begin().await.unwrap();
            for run in chunk {
                let request: hitl_orchestrator::domain::RequestId = sqlx::query_scalar(
                    "select pending_request_id from orchestrator_runs where run_id = $1",
                )
                .bind(run)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                let cmd = super::fixtures::resume(run, &request, "op");
                let recorded = hitl_orchestrator::persistence::record_command(&mut tx, cmd)
                    .await
                    .unwrap();
                ids.push(recorded.command.command_id);
            }
            tx.commit().await.unwrap();
        }
        ids
    }

    /// Ids of every unfinished run.
    pub async fn unfinished_runs(pool: &PgPool) -> Vec<RunId> {
        sqlx::query_scalar("select run_id from orchestrator_runs where status in ('queued', 'running', 'awaiting_hitl') order by run_id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    /// Creates `n` runs and lets an in-process worker pause them all at their request.
    pub async fn parked_runs(pool: &PgPool, n: usize) -> Vec<RunId> {
        let engine = Engine::with_builtins(true);
        let ids = create_runs(pool, &engine, n, &review_plan()).await;
        let worker = RunningWorker::spawn(pool, engine, fast_settings());
        wait_for_count(
            pool,
            "select count(*) from orchestrator_runs where status = 'awaiting_hitl'",
            n as i64,
            Duration::from_secs(120),
        )
        .await;
        worker.stop().await;
        ids
    }
}

/// An HTTP client. reqwest has no TLS provider of its own in this build, so one is
/// installed first (see `hitl_orchestrator::tls`).
pub fn http_client() -> reqwest::Client {
    hitl_orchestrator::tls::install_provider();
    reqwest::Client::new()
}
