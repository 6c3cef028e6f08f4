//! Bad input gets the documented 4xx — never a 5xx — and changes nothing: every
//! orchestrator table is dumped before and after. Also: 413 while the client is still
//! sending, and 503 while the database is unreachable.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::api::{ADMIN, OPERATOR, TestApp, approval, serve, test_tokens};
use hitl_orchestrator::api::AppState;
use hitl_orchestrator::db::{self, PoolSettings};
use hitl_orchestrator::engine::Engine;
use serde_json::{Value, json};

/// A body (raw text) and what it must get: status and, for a 422, the field named.
struct Case {
    what: &'static str,
    body: String,
    content_type: &'static str,
    status: u16,
    field: &'static str,
}

fn case(what: &'static str, body: Value, status: u16, field: &'static str) -> Case {
    Case {
        what,
        body: body.to_string(),
        content_type: "application/json",
        status,
        field,
    }
}

fn bad_resumes(run: &str, request: &str) -> Vec<Case> {
    let good = approval(run, request, "op");
    // `good` with the value at `path` (object keys or array positions) replaced.
    let with = |path: &[&str], value: Value| {
        let mut body = good.clone();
        let mut at = &mut body;
        for key in path {
            at = match key.parse::<usize>() {
                Ok(n) => &mut at[n],
                Err(_) => &mut at[*key],
            };
        }
        *at = value;
        body
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let mut second = good["responses"][0].clone();
    second["requestId"] = json!("hitl_req_0193a4c0e2b77d3c8f1a2b3c4d5e6f70");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        Case {
            what: "malformed JSON",
            body: r#"{"runId": "#.into(),
            content_type: "application/json",
            status: 400,
            field: "",
        },
        Case {
            what: "not JSON at all",
            body: "runId=1".into(),
            content_type: "application/x-www-form-urlencoded",
            status: 415,
            field: "",
        },
        Case {
            what: "deeply nested JSON",
            body: deep,
            content_type: "application/json",
            status: 400,
            field: "",
        },
        Case {
            what: "JSON that is not an object",
            body: "[1, 2]".into(),
            content_type: "application/json",
            status: 422,
            field: "body",
        },
        case(
            "responses of the wrong type",
            with(&["responses"], json!("yes")),
            422,
            "responses",
        ),
        case(
            "approved of the wrong type",
            with(&["responses", "0", "approved"], json!("true")),
            422,
            "responses[0].approved",
        ),
        case(
            "an unknown response type",
            with(&["responses", "0", "responseType"], json!("maybe")),
            422,
            "responses[0].responseType",
        ),
        case(
            "an option id not offered",
            with(
                &["responses", "0"],
                json!({ "responseType": "option", "optionId": "medium" }),
            ),
            422,
            "responses[0].optionId",
        ),
        case(
            "an answer to another request",
            with(&["responses"], json!([good["responses"][0], second])),
            422,
            "responses[1].requestId",
        ),
        case(
            "no responses",
            with(&["responses"], json!([])),
            422,
            "responses",
        ),
        case(
            "an unknown field",
            with(&["priority"], json!("high")),
            422,
            "priority",
        ),
        case(
            "an operator id of the wrong type",
            with(&["operator", "id"], json!(5)),
            422,
            "operator.id",
        ),
        case("no operator", without("operator"), 422, "operator"),
        case("no request id", without("requestId"), 422, "requestId"),
        case("neither run nor thread", without("runId"), 422, "runId"),
        case(
            "a run id that cannot be one",
            with(&["runId"], json!("run_123")),
            422,
            "runId",
        ),
        case(
            "a note too long",
            with(&["note"], json!("n".repeat(5000))),
            422,
            "note",
        ),
        case(
            "a body over the limit",
            with(&["note"], json!("n".repeat(300 * 1024))),
            413,
            "",
        ),
    ]
}

#[tokio::test]
async fn bad_resumes_get_the_documented_4xx_and_change_no_table() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let before = app.dump().await;
    for c in bad_resumes(&run, &request) {
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/hitl/resume"))
                    .bearer_auth(OPERATOR)
                    .header("Content-Type", c.content_type)
                    .body(c.body.clone()),
            )
            .await;
        assert_eq!(reply.status, c.status, "{}: {reply:?}", c.what);
        assert!(reply.body["error"]["code"].is_string(), "{}", c.what);
        if c.status == 422 {
            assert_eq!(reply.field(), c.field, "{}: {reply:?}", c.what);
        }
    }
    app.settle().await;
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_resume_of_a_request_that_is_not_pending_gets_409_and_changes_no_table() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let reply = app
        .post_with(
            "/api/hitl/remove",
            &json!({ "runId": run, "operator": { "id": "op" } }),
            &[("Prefer", "wait=5")],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let before = app.dump().await;
    let late_remove = json!({ "runId": run, "requestId": request, "operator": { "id": "late" } });
    for (path, body) in [
        ("/api/hitl/resume", approval(&run, &request, "late")),
        ("/api/hitl/remove", late_remove),
    ] {
        let reply = app.post(path, OPERATOR, &body).await;
        assert_eq!(reply.status, 409, "{path}: {reply:?}");
        assert_eq!(reply.code(), "conflict");
        assert_eq!(reply.body["error"]["details"]["winner"]["action"], "remove");
    }
    app.settle().await;
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_in_a_new_run_is_a_400_not_a_crash() {
    let app = TestApp::spawn().await;
    let before = app.dump().await;
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    for nested in [arrays, objects] {
        let body = format!(
            r#"{{"brief": {{"title": "t"}}, "executionContext": {nested}, "plan": {{"nodes": []}}}}"#
        );
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/runs"))
                    .bearer_auth(ADMIN)
                    .header("Content-Type", "application/json")
                    .body(body),
            )
            .await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.code(), "malformed_json");
    }
    assert_eq!(app.get("/healthz", ADMIN).await.status, 200);
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

/// Sends `head`, then keeps sending `body_chunk` (up to `total` bytes) from another
/// thread while this one waits for the answer; returns its status line.
fn answer_while_sending(addr: &str, head: &str, body_chunk: &[u8], total: usize) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let chunk = body_chunk.to_vec();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        // The server answers early and closes: writing then fails, and that is the end.
        while sent < total && writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap_or(0);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let sent = sender.join().unwrap();
    assert!(
        sent < total,
        "the whole body was taken in before the answer"
    );
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_while_the_client_is_still_sending() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let before = app.dump().await;
    let declared = format!(
        "POST /api/hitl/resume HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    let chunked = format!(
        "POST /api/runs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
    let (declared_status, chunked_status) = tokio::task::spawn_blocking(move || {
        (
            answer_while_sending(&addr, &declared, &[b' '; 8192], 10 * 1024 * 1024),
            answer_while_sending(&addr, &chunked, chunk.as_bytes(), 10 * 1024 * 1024),
        )
    })
    .await
    .unwrap();
    assert!(declared_status.contains(" 413 "), "{declared_status}");
    assert!(chunked_status.contains(" 413 "), "{chunked_status}");
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn every_route_answers_503_while_the_database_is_unreachable() {
    // Nothing listens on this port: every connection attempt fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pool = db::lazy_pool(
        &format!("postgres://nobody:secret@127.0.0.1:{port}/nothing"),
        PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    let state = AppState::new(
        hitl_orchestrator::service::Service::new(pool, Engine::with_builtins(true)),
        test_tokens(),
    );
    let base = serve(state).await;
    let client = crate::common::http_client();
    let run = "run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let request = "hitl_req_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let requests = [
        client.get(format!("{base}/api/hitl/pending")),
        client
            .post(format!("{base}/api/hitl/resume"))
            .json(&approval(run, request, "op")),
        client
            .post(format!("{base}/api/hitl/remove"))
            .header("Idempotency-Key", "k-1")
            .json(&json!({ "runId": run, "operator": { "id": "op" } })),
        client.get(format!(
            "{base}/api/hitl/commands/cmd_0193a4c0e2b77d3c8f1a2b3c4d5e6f70"
        )),
        client.post(format!("{base}/api/runs")).json(&json!({
            "brief": { "title": "t" },
            "plan": { "nodes": [ { "id": "a", "type": "task", "capability": "set" } ] } })),
        client.get(format!("{base}/api/runs/{run}")),
        client.get(format!("{base}/api/runs?threadId=t-1")),
    ];
    for request in requests {
        let response = request.bearer_auth(ADMIN).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "database_unavailable");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
}
