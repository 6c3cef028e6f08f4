//! The API's boundary holds for any input: values PostgreSQL cannot store (U+0000), keys
//! given twice and integers beyond 64 bits are 422 naming the field, before anything is
//! written; every query error is in the error envelope; and a client that stalls in its
//! request head or body is cut off while others are served.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::api::{ADMIN, AppOptions, OPERATOR, SUBMITTER, TestApp, approval, review_plan};

const NUL: &str = "before\u{0}after";

fn new_run(brief_title: &str, context: Value, plan: Value) -> Value {
    json!({ "brief": { "title": brief_title, "content": { "text": "draft" } },
            "executionContext": context, "plan": plan })
}

#[tokio::test]
async fn a_nul_in_any_stored_string_is_422_naming_it_and_no_table_changes() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let before = app.dump().await;

    let mut plan_with_nul = review_plan();
    plan_with_nul["nodes"][1]["prompt"] = json!(NUL);
    let runs = [
        (
            new_run(NUL, json!({}), review_plan()),
            "brief.title",
            "invalid_field",
        ),
        (
            json!({ "brief": { "title": "t", "content": { "text": NUL } }, "plan": review_plan() }),
            "brief.content.text",
            "invalid_field",
        ),
        (
            new_run("t", json!({ "notes": NUL }), review_plan()),
            "executionContext.notes",
            "invalid_field",
        ),
        (
            new_run("t", json!({}), plan_with_nul),
            "plan.nodes[1].prompt",
            "invalid_plan",
        ),
    ];
    for (body, field, code) in runs {
        let reply = app.post("/api/runs", SUBMITTER, &body).await;
        assert_eq!(reply.status, 422, "{field}: {reply:?}");
        assert_eq!((reply.code(), reply.field()), (code, field), "{reply:?}");
        if code == "invalid_plan" {
            assert_eq!(reply.body["error"]["details"]["node"], "review");
        }
    }

    let resume_with = |pointer: &str| {
        let mut body = approval(&run, &request, "op");
        *body.pointer_mut(pointer).unwrap() = json!(NUL);
        body
    };
    for (pointer, field) in [
        ("/responses/0/freeformText", "responses[0].freeformText"),
        ("/responses/0/responderId", "responses[0].responderId"),
        ("/operator/id", "operator.id"),
        ("/operator/displayName", "operator.displayName"),
        ("/note", "note"),
    ] {
        let reply = app
            .post("/api/hitl/resume", OPERATOR, &resume_with(pointer))
            .await;
        assert_eq!(reply.status, 422, "{field}: {reply:?}");
        assert_eq!((reply.code(), reply.field()), ("invalid_field", field));
    }
    let remove = json!({ "runId": run, "reason": NUL, "operator": { "id": "op" } });
    let reply = app.post("/api/hitl/remove", OPERATOR, &remove).await;
    assert_eq!((reply.status, reply.field()), (422, "reason"), "{reply:?}");

    let reply = app.get("/api/hitl/pending?nodeId=%00", OPERATOR).await;
    assert_eq!((reply.status, reply.field()), (422, "nodeId"), "{reply:?}");

    app.settle().await;
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn keys_given_twice_and_integers_beyond_64_bits_are_422_naming_their_path() {
    let app = TestApp::spawn().await;
    let before = app.dump().await;
    let raw = |body: &str| {
        app.client
            .post(app.url("/api/runs"))
            .bearer_auth(SUBMITTER)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
    };
    let plan =
        r#"{"nodes": [{"id": "a", "type": "task", "capability": "set", "capability": "fail"}]}"#;
    let cases = [
        (
            format!(r#"{{"brief": {{"title": "t"}}, "plan": {plan}}}"#),
            "plan.nodes[0].capability",
            "invalid_plan",
        ),
        (
            format!(
                r#"{{"brief": {{"title": "t"}}, "executionContext": {{"k": 1, "k": 2}}, "plan": {}}}"#,
                review_plan()
            ),
            "executionContext.k",
            "invalid_field",
        ),
        (
            format!(
                r#"{{"brief": {{"title": "t"}}, "executionContext": {{"n": 123456789012345678901234}}, "plan": {}}}"#,
                review_plan()
            ),
            "executionContext.n",
            "invalid_field",
        ),
    ];
    for (body, field, code) in cases {
        let reply = app.send(raw(&body)).await;
        assert_eq!(reply.status, 422, "{field}: {reply:?}");
        assert_eq!((reply.code(), reply.field()), (code, field), "{reply:?}");
    }
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_of_256_characters_is_accepted_and_257_refused() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let body = approval(&run, &request, "op");
    let long = "k".repeat(257);
    let reply = app
        .post_with("/api/hitl/resume", &body, &[("Idempotency-Key", &long)])
        .await;
    assert_eq!((reply.status, reply.field()), (422, "Idempotency-Key"));
    let key = "k".repeat(256);
    let reply = app
        .post_with("/api/hitl/resume", &body, &[("Idempotency-Key", &key)])
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "queued");
    app.stop().await;
}

#[tokio::test]
async fn unknown_or_repeated_query_parameters_are_422_in_the_envelope_on_every_route() {
    let app = TestApp::spawn().await;
    let run = "run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    for (path, field) in [
        ("/api/events?foo=1", "foo"),
        (
            &format!("/api/events?runId={run}&runId={run}") as &str,
            "runId",
        ),
        ("/api/hitl/pending?limit=5&limit=6", "limit"),
        ("/api/hitl/pending?bogus=1", "bogus"),
        (&format!("/api/runs/{run}?x=1") as &str, "x"),
        ("/api/runs?threadId=t&extra=1", "extra"),
        ("/healthz?verbose=1", "verbose"),
    ] {
        let reply = app.get(path, ADMIN).await;
        assert_eq!(reply.status, 422, "{path}: {reply:?}");
        assert_eq!(
            (reply.code(), reply.field()),
            ("invalid_field", field),
            "{path}"
        );
        assert!(
            reply
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{path}"
        );
    }
    // Authentication still comes first.
    let reply = app
        .get("/api/events?foo=1", "no-such-token-0123456789")
        .await;
    assert_eq!(reply.status, 401);
    app.stop().await;
}

/// Reads from `stream` until the server closes it (or `limit` passes); returns what came.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection for {limit:?}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn clients_stalling_in_their_head_or_body_are_cut_off_while_others_are_served() {
    let app = TestApp::spawn_with(AppOptions {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..AppOptions::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /api/hitl/resume HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"runId\": "
    );
    body.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();

    // Meanwhile another connection is served as usual.
    let ok = app.get("/healthz", OPERATOR).await;
    assert_eq!(ok.status, 200);

    let (silent_reply, head_reply, body_reply) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(10)),
        read_until_closed(&mut head, Duration::from_secs(10)),
        read_until_closed(&mut body, Duration::from_secs(10)),
    );
    assert_eq!(silent_reply, "", "a connection that never spoke is closed");
    let took = started.elapsed();
    assert!(
        !head_reply.contains("200 OK"),
        "the unfinished head was never answered: {head_reply}"
    );
    assert!(
        body_reply.starts_with("HTTP/1.1 408"),
        "the stalled body is refused: {body_reply}"
    );
    assert!(body_reply.contains("request_timeout"), "{body_reply}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // A new connection: the first one's idle keep-alive is itself past the head timeout.
    let fresh = crate::common::http_client();
    let ok = app
        .send(fresh.get(app.url("/healthz")).bearer_auth(OPERATOR))
        .await;
    assert_eq!(ok.status, 200, "the server goes on serving");
    app.stop().await;
}
