//! The asynchronous command contract: racing operators, idempotent retries, and every
//! answer `Prefer: wait` can give (200, 409, 500 `command_failed`, 202 on time-out).

use std::time::{Duration, Instant};

use crate::common::api::{OPERATOR, TestApp, approval};
use hitl_orchestrator::domain::CommandId;
use hitl_orchestrator::persistence;
use serde_json::json;

const KEY: (&str, &str) = ("Idempotency-Key", "resume-7f3a-0001");
const WAIT: (&str, &str) = ("Prefer", "wait=5");

async fn count_commands(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from hitl_commands")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_operators_resuming_one_request_at_once_get_one_success_and_one_409_naming_the_winner()
{
    let app = TestApp::spawn().await;
    for _ in 0..4 {
        let (run, request) = app.parked_run().await;
        let (alice, bob) = (
            approval(&run, &request, "alice"),
            approval(&run, &request, "bob"),
        );
        let (a, b) = tokio::join!(
            app.post_with("/api/hitl/resume", &alice, &[WAIT]),
            app.post_with("/api/hitl/resume", &bob, &[WAIT]),
        );
        let (winner, loser) = match (a.status, b.status) {
            (200, 409) => (a, b),
            (409, 200) => (b, a),
            other => panic!("expected one 200 and one 409, got {other:?}: {a:?} {b:?}"),
        };
        assert_eq!(loser.code(), "conflict", "{loser:?}");
        let who = &loser.body["error"]["details"]["winner"];
        assert_eq!(who["operator"]["id"], winner.body["operator"]["id"]);
        assert_eq!(who["commandId"], winner.body["commandId"]);
        assert_eq!(who["action"], "resume");
        let snapshot = &winner.body["run"];
        assert_eq!(
            snapshot["hitlRequests"][0]["responses"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "only the winner's answer is stored"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_twice_returns_the_same_command() {
    let mut app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    app.stop_workers().await;
    let body = approval(&run, &request, "op");
    let (first, second) = tokio::join!(
        app.post_with("/api/hitl/resume", &body, &[KEY]),
        app.post_with("/api/hitl/resume", &body, &[KEY]),
    );
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.body["commandId"], second.body["commandId"]);
    let third = app.post_with("/api/hitl/resume", &body, &[KEY]).await;
    assert_eq!(third.status, 202);
    assert_eq!(third.body["commandId"], first.body["commandId"]);
    assert_eq!(third.body["status"], "queued");
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    assert_eq!(third.header("location"), first.header("location"));
    assert_eq!(count_commands(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_after_the_command_was_applied_still_returns_the_same_command_not_a_409() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let body = approval(&run, &request, "op");
    let first = app.post_with("/api/hitl/resume", &body, &[KEY, WAIT]).await;
    assert_eq!(first.status, 200, "{first:?}");

    let retry = app.post_with("/api/hitl/resume", &body, &[KEY]).await;
    assert_eq!(retry.status, 202, "{retry:?}");
    assert_eq!(retry.body["commandId"], first.body["commandId"]);
    assert_eq!(retry.body["status"], "succeeded");
    let waited = app.post_with("/api/hitl/resume", &body, &[KEY, WAIT]).await;
    assert_eq!(waited.status, 200, "{waited:?}");
    assert_eq!(waited.body["commandId"], first.body["commandId"]);

    let without_key = app.post_with("/api/hitl/resume", &body, &[]).await;
    assert_eq!(
        without_key.status, 409,
        "without the key it is a new submission"
    );
    assert_eq!(count_commands(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_with_a_different_body_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let first = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op"),
            &[KEY, WAIT],
        )
        .await;
    assert_eq!(first.status, 200);
    app.wait_for_run(&run, "completed").await;
    let before = app.dump().await;
    let mut other = approval(&run, &request, "op");
    other["note"] = json!("A different note");
    let reply = app.post_with("/api/hitl/resume", &other, &[KEY]).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.code(), "idempotency_key_reused");
    assert_eq!(reply.field(), "Idempotency-Key");
    assert_eq!(app.dump().await, before);

    let blank = app
        .post_with(
            "/api/hitl/resume",
            &other,
            &[("Idempotency-Key", "has spaces")],
        )
        .await;
    assert_eq!(blank.status, 422);
    assert_eq!(blank.field(), "Idempotency-Key");
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_answers_202_when_no_worker_applies_the_command_in_time() {
    let mut app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    app.stop_workers().await;
    let started = Instant::now();
    let reply = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op"),
            &[("Prefer", "respond-async, wait=1")],
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.header("preference-applied"), Some("wait=1"));
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_answers_500_command_failed_when_the_command_fails_for_good() {
    let mut app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    app.stop_workers().await;
    let submit = app
        .client
        .post(app.url("/api/hitl/resume"))
        .bearer_auth(OPERATOR)
        .header(WAIT.0, WAIT.1)
        .json(&approval(&run, &request, "op"))
        .send();
    let submitted = tokio::spawn(submit);
    // Stand in for a worker whose job ran out of attempts.
    let id: CommandId = loop {
        let id = sqlx::query_scalar("select command_id from hitl_commands")
            .fetch_optional(&app.pool)
            .await
            .unwrap();
        if let Some(id) = id {
            break id;
        }
        crate::common::poll_pause().await;
    };
    let mut tx = app.pool.begin().await.unwrap();
    persistence::fail_command(&mut tx, &id, "the job ran out of attempts")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let response = submitted.await.unwrap().unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "command_failed", "{body}");
    assert_eq!(body["error"]["details"]["commandId"], id.as_str());
    let command = app.get(&format!("/api/hitl/commands/{id}"), OPERATOR).await;
    assert_eq!(command.body["status"], "failed");
    assert_eq!(command.body["error"], "the job ran out of attempts");
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_or_too_long_prefer_wait_is_422_and_records_nothing() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let before = app.dump().await;
    for prefer in ["wait=31", "wait=soon", "wait=-1", "wait"] {
        let reply = app
            .post_with(
                "/api/hitl/resume",
                &approval(&run, &request, "op"),
                &[("Prefer", prefer)],
            )
            .await;
        assert_eq!(reply.status, 422, "{prefer}: {reply:?}");
        assert_eq!(reply.field(), "Prefer");
    }
    assert_eq!(app.dump().await, before);
    app.stop().await;
}
