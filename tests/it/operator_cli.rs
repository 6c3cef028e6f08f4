//! The operator CLI (`pending`, `show`, `resume`, `remove`, `retry`, `claim`, `unclaim`,
//! `watch`, `completions`): the built binary run against a real service on port 0 with a real
//! PostgreSQL — each command's success path and each exit code, `--output json` parsed,
//! a resume retried through a proxy that cuts its first attempt, and `watch` following
//! the event stream across a restart of the API under it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hitl_orchestrator::domain::CommandId;
use hitl_orchestrator::persistence;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::api::{ADMIN, OPERATOR, STRANGER, SUBMITTER, TestApp};
use crate::common::fixtures;
use crate::common::queue_support::scalar;
use crate::common::{ServiceProcess, fresh_db, poll_pause, service_binary};

/// How long one CLI run may take before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of the CLI printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

/// The binary as an operator runs it: against `url`, with `token`, as `op-cli`.
fn command(url: &str, token: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(service_binary());
    cmd.args(args)
        .env("HITL_URL", url)
        .env("HITL_OPERATOR", "op-cli")
        .env_remove("HITL_TOKEN")
        .env_remove("HITL_TOKEN_FILE")
        .env_remove("HITL_OPERATOR_NAME")
        .env_remove("COLUMNS")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if !token.is_empty() {
        cmd.env("HITL_TOKEN", token);
    }
    cmd
}

async fn cli_as(url: &str, token: &str, args: &[&str]) -> Out {
    let output = tokio::time::timeout(CLI_TIMEOUT, command(url, token, args).output())
        .await
        .unwrap_or_else(|_| panic!("the CLI hung: {args:?}"))
        .unwrap();
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The CLI against `app` with the all-scopes token.
async fn cli(app: &TestApp, args: &[&str]) -> Out {
    cli_as(&app.base, ADMIN, args).await
}

fn assert_exit(out: &Out, code: i32) {
    assert_eq!(out.code, code, "{out:#?}");
}

/// The key the CLI printed on stderr.
fn idempotency_key(out: &Out) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("Idempotency-Key: "))
        .unwrap_or_else(|| panic!("no Idempotency-Key printed: {out:#?}"))
        .to_owned()
}

#[tokio::test]
async fn pending_lists_the_waiting_requests_as_a_table_and_as_json_page_by_page_or_all() {
    let app = TestApp::spawn().await;
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(app.parked_run().await.1);
    }
    let table = cli(&app, &["pending"]).await;
    assert_exit(&table, 0);
    let header = table.stdout.lines().next().unwrap();
    for column in ["REQUEST", "RUN", "NODE", "PROMPT", "AGE", "EXPIRES"] {
        assert!(header.contains(column), "{table:#?}");
    }
    for r in &requests {
        assert!(table.stdout.contains(r.as_str()), "{r}: {table:#?}");
    }
    assert!(table.stdout.contains("Approve the draft?"), "{table:#?}");

    let page = cli(&app, &["pending", "--limit", "2", "--output", "json"]).await;
    assert_exit(&page, 0);
    let page = page.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["nextCursor"].as_str().unwrap().to_owned();
    let rest = cli(
        &app,
        &["pending", "--limit", "2", "--cursor", &next, "-o", "json"],
    )
    .await;
    assert_eq!(
        rest.json()["items"][0]["pendingRequestId"],
        requests[2].as_str()
    );

    let all = cli(
        &app,
        &["pending", "--limit", "2", "--all", "--output", "json"],
    )
    .await;
    assert_exit(&all, 0);
    let all = all.json();
    let listed: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pendingRequestId"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        requests.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(all["nextCursor"], Value::Null);

    let none = cli(&app, &["pending", "--node", "elsewhere", "-o", "json"]).await;
    assert_eq!(none.json()["items"], json!([]));
    let narrow = cli(&app, &["pending", "--width", "100"]).await;
    assert_exit(&narrow, 0);
    assert!(
        narrow
            .stdout
            .lines()
            .skip(1)
            .all(|l| l.contains("…") || l.len() <= 100)
    );
    app.stop().await;
}

#[tokio::test]
async fn show_prints_a_run_with_its_requests_and_audit_by_run_or_request_id_and_a_command() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let by_run = cli(&app, &["show", &run]).await;
    assert_exit(&by_run, 0);
    for text in [
        run.as_str(),
        "awaiting_hitl",
        request.as_str(),
        "requests (1)",
        "audit (",
    ] {
        assert!(by_run.stdout.contains(text), "{text}: {by_run:#?}");
    }
    assert!(
        by_run
            .stdout
            .contains("item review (question): Approve the draft?")
    );
    let by_request = cli(&app, &["show", &request]).await;
    assert_exit(&by_request, 0);
    assert!(
        by_request.stdout.contains(&format!("* {request}")),
        "{by_request:#?}"
    );

    let json = cli(&app, &["show", &request, "--output", "json"])
        .await
        .json();
    let api = app.get(&format!("/api/runs/{run}"), OPERATOR).await.body;
    assert_eq!(json, api);

    let resumed = cli(
        &app,
        &[
            "resume",
            &request,
            "--approve",
            "--wait",
            "10s",
            "-o",
            "json",
        ],
    )
    .await;
    let command = resumed.json()["commandId"].as_str().unwrap().to_owned();
    let shown = cli(&app, &["show", &command]).await;
    assert_exit(&shown, 0);
    assert!(shown.stdout.contains("resume succeeded"), "{shown:#?}");
    let shown = cli(&app, &["show", &command, "-o", "json"]).await.json();
    assert_eq!(shown["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn resume_sends_one_keyed_answer_and_waits_for_the_run_to_move_on() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let out = cli(
        &app,
        &[
            "resume",
            &request,
            "--approve",
            "--text",
            "Ship it",
            "--note",
            "Reviewed",
            "--operator-name",
            "Op CLI",
            "--wait",
            "10s",
            "--output",
            "json",
        ],
    )
    .await;
    assert_exit(&out, 0);
    let key = idempotency_key(&out);
    assert!(key.starts_with("cli-"), "{key}");
    assert!(!out.stderr.contains(ADMIN), "the token is never printed");
    let command = out.json();
    assert_eq!(command["status"], "succeeded");
    assert_eq!(command["idempotencyKey"], key.as_str());
    assert_eq!(command["run"]["status"], "completed");
    let snapshot = app.get(&format!("/api/runs/{run}"), OPERATOR).await.body;
    let resume = crate::common::api::audit_event(&snapshot, "resume");
    assert_eq!(resume["operator"]["id"], "op-cli");
    assert_eq!(resume["operator"]["displayName"], "Op CLI");
    assert_eq!(resume["note"], "Reviewed");
    let answer = &snapshot["hitlRequests"][0]["responses"][0];
    assert_eq!(answer["responseType"], "approval");
    assert_eq!(answer["freeformText"], "Ship it");
    assert_eq!(answer["responderId"], "op-cli");

    // Without --wait it returns once the command is recorded; an option is chosen.
    let (_, second) = app.parked_run().await;
    let out = cli(&app, &["resume", &second, "--option", "short"]).await;
    assert_exit(&out, 0);
    assert!(out.stdout.starts_with("accepted: resume cmd_"), "{out:#?}");
    app.settle().await;
    let request = app
        .get(&format!("/api/hitl/requests/{second}"), OPERATOR)
        .await
        .body;
    assert_eq!(request["status"], "resolved");
    assert_eq!(request["responses"][0]["optionId"], "short");
    app.stop().await;
}

#[tokio::test]
async fn remove_and_retry_submit_their_commands_and_wait_for_them() {
    let app = TestApp::spawn().await;
    let (run, _) = app.parked_run().await;
    let out = cli(
        &app,
        &[
            "remove",
            &run,
            "--reason",
            "Duplicate",
            "--wait",
            "10s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_exit(&out, 0);
    assert_eq!(out.json()["run"]["status"], "cancelled");
    let snapshot = app.get(&format!("/api/runs/{run}"), OPERATOR).await.body;
    assert_eq!(snapshot["hitlRequests"][0]["denialReason"], "Duplicate");

    // Given a request id, remove finds its run.
    let (run, request) = app.parked_run().await;
    let out = cli(
        &app,
        &[
            "remove",
            &request,
            "--reason",
            "Wrong brief",
            "--wait",
            "10s",
        ],
    )
    .await;
    assert_exit(&out, 0);
    app.wait_for_run(&run, "cancelled").await;

    let plan = json!({ "nodes": [ { "id": "broken", "type": "task", "capability": "fail",
                                    "input": { "message": "misconfigured" } } ] });
    let failed = app.create_run(plan).await;
    app.wait_for_run(&failed, "failed").await;
    let out = cli(
        &app,
        &[
            "retry", &failed, "--note", "Fixed", "--wait", "10s", "-o", "json",
        ],
    )
    .await;
    assert_exit(&out, 0);
    assert_eq!(out.json()["kind"], "retry");
    assert_eq!(out.json()["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn each_refusal_has_its_exit_code() {
    let mut app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let unknown_run = "run_00000000000000000000000000000000";
    let unknown_request = "hitl_req_00000000000000000000000000000000";

    // 2: usage.
    assert_exit(&cli(&app, &["pending", "--limit", "0"]).await, 2);
    let undecided = cli(&app, &["resume", &request]).await;
    assert_exit(&undecided, 2);
    assert!(undecided.stderr.contains("--approve"), "{undecided:#?}");
    assert_exit(
        &cli(&app, &["resume", &request, "--item", "review"]).await,
        2,
    );
    // 4: not found.
    assert_exit(&cli(&app, &["show", unknown_run]).await, 4);
    let missing = cli(
        &app,
        &["resume", unknown_request, "--approve", "-o", "json"],
    )
    .await;
    assert_exit(&missing, 4);
    assert_eq!(missing.json()["error"]["code"], "request_not_found");
    // 5: unauthenticated or forbidden.
    assert_exit(&cli_as(&app.base, STRANGER, &["pending"]).await, 5);
    let anonymous = cli_as(&app.base, "", &["pending"]).await;
    assert_exit(&anonymous, 5);
    assert!(anonymous.stderr.contains("--token-file"), "{anonymous:#?}");
    assert_exit(&cli_as(&app.base, SUBMITTER, &["show", &run]).await, 5);
    // 8: invalid input, found by the client or refused by the service.
    assert_exit(&cli(&app, &["show", "not-an-id"]).await, 8);
    let bad_option = cli(
        &app,
        &["resume", &request, "--option", "huge", "-o", "json"],
    )
    .await;
    assert_exit(&bad_option, 8);
    assert_eq!(
        bad_option.json()["error"]["details"]["field"],
        "responses[0].optionId"
    );
    assert_exit(&cli(&app, &["retry", "run_nope"]).await, 8);
    // 3: the request is no longer pending.
    assert_exit(
        &cli(&app, &["resume", &request, "--approve", "--wait", "10s"]).await,
        0,
    );
    let late = cli(
        &app,
        &[
            "resume", &request, "--reject", "--wait", "10s", "-o", "json",
        ],
    )
    .await;
    assert_exit(&late, 3);
    assert_eq!(late.json()["error"]["details"]["requestStatus"], "resolved");
    let winner = late.json()["error"]["details"]["winner"]["commandId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(late.stderr.contains(&winner), "names the winner: {late:#?}");
    assert_exit(&cli(&app, &["retry", &run]).await, 3);
    // 6: nothing listens there (after the retries).
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let down = cli_as(&url, ADMIN, &["pending"]).await;
    assert_exit(&down, 6);
    assert!(down.stderr.contains("after 4 attempts"), "{down:#?}");

    // 9: no worker applies the command within --wait; 7: it failed for good.
    app.stop_workers().await;
    let (_, parked, _) = fixtures::parked_run(&app.pool).await;
    let parked = parked.to_string();
    let started = Instant::now();
    let slow = cli(
        &app,
        &["resume", &parked, "--approve", "--wait", "1s", "-o", "json"],
    )
    .await;
    assert_exit(&slow, 9);
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert_eq!(slow.json()["status"], "queued");
    let queued: CommandId = slow.json()["commandId"].as_str().unwrap().parse().unwrap();
    // Stand in for a worker whose job ran out of attempts, then ask again with the key.
    let mut tx = app.pool.begin().await.unwrap();
    persistence::fail_command(&mut tx, &queued, "the job ran out of attempts")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let key = idempotency_key(&slow);
    let failed = cli(
        &app,
        &[
            "resume",
            &parked,
            "--approve",
            "--idempotency-key",
            &key,
            "--wait",
            "10s",
        ],
    )
    .await;
    assert_exit(&failed, 7);
    assert!(failed.stderr.contains("replayed"), "{failed:#?}");
    assert!(
        failed.stderr.contains("ran out of attempts") || failed.stderr.contains("command_failed"),
        "{failed:#?}"
    );
    let commands: i64 =
        sqlx::query_scalar("select count(*) from hitl_commands where request_id = $1")
            .bind(&parked)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(commands, 1, "the repeated key made no second command");
    app.stop().await;
}

#[tokio::test]
async fn completions_and_help_state_the_commands_and_the_exit_codes() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli_as("http://127.0.0.1:1", "", &["completions", shell]).await;
        assert_exit(&out, 0);
        for word in ["pending", "resume", "approve", "watch"] {
            assert!(out.stdout.contains(word), "{shell}: {word}");
        }
    }
    for command in ["pending", "show", "resume", "remove", "retry", "watch"] {
        let out = cli_as("http://127.0.0.1:1", "", &[command, "--help"]).await;
        assert_exit(&out, 0);
        for text in [
            "Example",
            "Exit codes",
            "9  --wait ran out",
            "HITL_URL",
            "HITL_TOKEN",
        ] {
            assert!(out.stdout.contains(text), "{command} --help: {text}");
        }
    }
    let top = cli_as("http://127.0.0.1:1", "", &["--help"]).await;
    assert!(
        top.stdout.contains("Exit codes of the operator commands"),
        "{top:#?}"
    );
}

/// A TCP proxy to `upstream` that lets everything through except, once, the answer to a
/// `POST /api/hitl/resume`: it forwards the request, and when the answer starts to come
/// back it closes both connections, as a network failing at the worst moment would.
async fn cutting_proxy(upstream: SocketAddr) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let done = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let armed = AtomicBool::new(false);
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = client_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if !cut.load(Ordering::SeqCst)
                            && buf[..n].windows(21).any(|w| w == b"POST /api/hitl/resume")
                        {
                            armed.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = server_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if armed.load(Ordering::SeqCst) && !cut.swap(true, Ordering::SeqCst) {
                            return; // the answer is dropped with the connection
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    (url, done)
}

#[tokio::test]
async fn a_resume_whose_answer_was_lost_is_retried_with_its_key_and_applied_once() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let upstream: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let (proxy, cut) = cutting_proxy(upstream).await;
    let out = cli_as(
        &proxy,
        ADMIN,
        &[
            "resume",
            &request,
            "--approve",
            "--wait",
            "10s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_exit(&out, 0);
    assert!(
        cut.load(Ordering::SeqCst),
        "the proxy cut the first attempt"
    );
    assert!(
        out.stderr.contains("with the same Idempotency-Key"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("replayed"), "{out:#?}");
    let key = idempotency_key(&out);
    assert_eq!(out.json()["status"], "succeeded");
    assert_eq!(
        scalar(&app.pool, "select count(*) from hitl_commands").await,
        1,
        "one command"
    );
    let stored: String = sqlx::query_scalar("select idempotency_key from hitl_commands")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, key);
    let snapshot = app.wait_for_run(&run, "completed").await;
    let resumes = snapshot["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "resume")
        .count();
    assert_eq!(resumes, 1, "applied once");
    app.stop().await;
}

/// The event ids the database holds after `after`, in id order.
async fn audit_ids_after(pool: &sqlx::PgPool, after: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "select event_id from run_audit_events where event_id > $1 order by event_id",
    )
    .bind(after)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn audit_ids(pool: &sqlx::PgPool) -> Vec<i64> {
    audit_ids_after(pool, 0).await
}

/// Waits until `printed` holds as many events as the database has after `after`;
/// returns their ids, sorted.
async fn printed_ids(
    printed: &tokio::sync::Mutex<Vec<Value>>,
    pool: &sqlx::PgPool,
    after: i64,
) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let expected = audit_ids_after(pool, after).await;
        let mut ids: Vec<i64> = printed
            .lock()
            .await
            .iter()
            .map(|e| e["eventId"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        if ids.len() >= expected.len() || Instant::now() > deadline {
            return ids;
        }
        poll_pause().await;
    }
}

#[tokio::test]
async fn watch_prints_every_event_once_across_a_restart_of_the_api() {
    let db = fresh_db().await;
    let logs = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("API_KEY", ADMIN)];
    let mut api = ServiceProcess::start(&["api"], &env, logs.path());
    let address = api.base_url.trim_start_matches("http://").to_owned();

    // The stream starts from now; started after a known event, the watch cannot miss
    // what happens while it connects.
    fixtures::parked_run(&db.pool).await;
    let start = *audit_ids(&db.pool).await.last().unwrap();
    let start_arg = start.to_string();
    let mut watch = command(
        &api.base_url,
        ADMIN,
        &["watch", "--output", "json", "--last-event-id", &start_arg],
    );
    watch
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let printed = Arc::new(tokio::sync::Mutex::new(Vec::<Value>::new()));
    let lines = BufReader::new(child.stdout.take().unwrap());
    let reader = {
        let printed = printed.clone();
        tokio::spawn(async move {
            let mut lines = lines.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {line}"));
                printed.lock().await.push(event);
            }
        })
    };

    fixtures::parked_run(&db.pool).await;
    let before = printed_ids(&printed, &db.pool, start).await;
    assert_eq!(
        before,
        audit_ids_after(&db.pool, start).await,
        "live events"
    );

    // The API goes away; events happen meanwhile; it comes back on the same address.
    assert!(api.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10)));
    fixtures::parked_run(&db.pool).await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("API_KEY", ADMIN),
        ("LISTEN_ADDR", address.as_str()),
    ];
    let _api = ServiceProcess::start(&["api"], &env, logs.path());
    fixtures::parked_run(&db.pool).await;

    let after = printed_ids(&printed, &db.pool, start).await;
    assert_eq!(
        after,
        audit_ids_after(&db.pool, start).await,
        "every event printed once: those before, during and after the restart"
    );
    let events = printed.lock().await.clone();
    assert!(
        events.iter().any(|e| e["event"] == "request_raised"),
        "{events:?}"
    );

    child.start_kill().unwrap();
    let _ = child.wait().await;
    reader.await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

#[tokio::test]
async fn watch_refuses_a_bad_run_id_and_a_bad_token_at_once() {
    let app = TestApp::spawn().await;
    assert_exit(&cli(&app, &["watch", "--run", "nope"]).await, 8);
    assert_exit(&cli_as(&app.base, STRANGER, &["watch"]).await, 5);
    app.stop().await;
}

#[tokio::test]
async fn on_a_terminal_resume_shows_the_request_asks_for_each_item_and_confirms() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    // `script` (util-linux) gives the CLI a terminal; what is written to its stdin is typed.
    let line = format!(
        "{} resume {request} --note 'asked on a terminal' --wait 10s",
        service_binary().display()
    );
    let mut script = tokio::process::Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .env("HITL_URL", &app.base)
        .env("HITL_TOKEN", ADMIN)
        .env("HITL_OPERATOR", "op-tty")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = script.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"o short\ny\n").await.unwrap();
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("the CLI hung at its prompt")
        .unwrap();
    drop(stdin);
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    for text in ["Approve the draft?", "item review:", "send this answer?"] {
        assert!(screen.contains(text), "{text}: {screen}");
    }
    let snapshot = app.wait_for_run(&run, "completed").await;
    let answer = &snapshot["hitlRequests"][0]["responses"][0];
    assert_eq!(answer["optionId"], "short");
    assert_eq!(
        crate::common::api::audit_event(&snapshot, "resume")["note"],
        "asked on a terminal"
    );
    app.stop().await;
}

#[tokio::test]
async fn claim_and_unclaim_hold_a_request_and_force_needs_supervise() {
    let (app, tokens, _dir) = crate::common::api::spawn_with_tokens(&[(
        "boss",
        "\"operate\", \"supervise\"",
        "actAs = true",
    )])
    .await;
    let boss = &tokens[0];
    let (_, request) = app.parked_run().await;
    // The boss (with supervise) and OPERATOR are two principals, both acting as op-cli.
    let claimed = cli_as(
        &app.base,
        boss,
        &["claim", &request, "--lease", "10m", "-o", "json"],
    )
    .await;
    assert_exit(&claimed, 0);
    let claimed = claimed.json();
    assert_eq!(claimed["claimedBy"]["operator"]["id"], "op-cli");
    assert_eq!(claimed["requestId"], request.as_str());
    let table = cli_as(&app.base, boss, &["pending"]).await;
    assert!(
        table.stdout.lines().next().unwrap().contains("CLAIMED BY"),
        "{table:#?}"
    );
    let shown = cli_as(&app.base, boss, &["show", &request]).await;
    assert!(
        shown.stdout.contains("claimed by operator op-cli"),
        "{shown:#?}"
    );

    let taken = cli_as(&app.base, OPERATOR, &["claim", &request]).await;
    assert_exit(&taken, 3);
    assert!(
        taken.stderr.contains("claimed by operator op-cli"),
        "{taken:#?}"
    );
    let answered = cli_as(&app.base, OPERATOR, &["resume", &request, "--approve"]).await;
    assert_exit(&answered, 3);
    let forced = cli_as(
        &app.base,
        OPERATOR,
        &["resume", &request, "--approve", "--force"],
    )
    .await;
    assert_exit(&forced, 5);
    assert_exit(
        &cli_as(&app.base, boss, &["claim", &request, "--lease", "0s"]).await,
        2,
    );

    let released = cli_as(&app.base, boss, &["unclaim", &request]).await;
    assert_exit(&released, 0);
    assert!(released.stdout.contains("is not claimed"), "{released:#?}");
    assert_exit(&cli_as(&app.base, OPERATOR, &["claim", &request]).await, 0);
    let over = cli_as(&app.base, boss, &["claim", &request, "--force"]).await;
    assert_exit(&over, 0);
    assert!(
        over.stdout.contains("claimed by operator op-cli"),
        "{over:#?}"
    );
    let broken: i64 = sqlx::query_scalar(
        "select count(*) from run_audit_events where request_id = $1 and action = 'claim_broken'",
    )
    .bind(&request)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(broken, 1);
    app.stop().await;
}

#[tokio::test]
async fn audit_verify_names_a_broken_chain_and_export_prints_every_event_and_follows() {
    let (app, tokens, _dir) = crate::common::api::spawn_with_tokens(&[(
        "auditor",
        "\"audit\"",
        "operator = { id = \"auditor\" }",
    )])
    .await;
    let auditor = &tokens[0];
    let (run, _) = app.parked_run().await;
    let (other, _) = app.parked_run().await;

    let ok = cli_as(&app.base, auditor, &["audit", "verify", "--run", &run]).await;
    assert_exit(&ok, 0);
    assert!(ok.stdout.contains("intact"), "{ok:#?}");
    let all = cli_as(
        &app.base,
        auditor,
        &["audit", "verify", "--all", "-o", "json"],
    )
    .await;
    assert_exit(&all, 0);
    let verdicts: Vec<Value> = all
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts.iter().all(|v| v["intact"] == true), "{verdicts:?}");
    assert_exit(&cli_as(&app.base, auditor, &["audit", "verify"]).await, 2);
    assert_exit(
        &cli_as(&app.base, OPERATOR, &["audit", "verify", "--all"]).await,
        5,
    );

    sqlx::query(
        "update run_audit_events set note = 'edited' where run_id = $1 and run_version = 2",
    )
    .bind(&other)
    .execute(&app.pool)
    .await
    .unwrap();
    let tampered = cli_as(&app.base, auditor, &["audit", "verify", "--all"]).await;
    assert_exit(&tampered, 10);
    assert!(
        tampered
            .stdout
            .contains(&format!("{other}  BROKEN  altered at version 2")),
        "{tampered:#?}"
    );
    assert!(tampered.stderr.contains("1 of 2 runs"), "{tampered:#?}");

    let events: i64 = scalar(&app.pool, "select count(*) from run_audit_events").await;
    let exported = cli_as(&app.base, auditor, &["audit", "export"]).await;
    assert_exit(&exported, 0);
    let lines: Vec<Value> = exported
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, events);
    let first = lines[0]["eventId"].as_i64().unwrap().to_string();
    let rest = cli_as(&app.base, auditor, &["audit", "export", "--after", &first]).await;
    assert_eq!(rest.stdout.lines().count() as i64, events - 1);

    // --follow prints what commits later too.
    let mut follow = command(&app.base, auditor, &["audit", "export", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = 0;
    let started = Instant::now();
    let new_run = app.create_run(crate::common::api::review_plan()).await;
    app.wait_for_run(&new_run, "awaiting_hitl").await;
    let total: i64 = scalar(&app.pool, "select count(*) from run_audit_events").await;
    while seen < total {
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("the export follows")
            .unwrap()
            .expect("a line");
        let e: Value = serde_json::from_str(&line).unwrap();
        assert!(e["hash"].is_string(), "{e}");
        seen += 1;
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    follow.kill().await.unwrap();
    app.stop().await;
}
