//! `GET /api/hitl/requests/{requestId}`: one request with its run's ids and status, over
//! real HTTP.

use crate::common::api::{ADMIN, OPERATOR, SUBMITTER, TestApp, approval};

#[tokio::test]
async fn a_request_reads_with_its_run_items_status_and_deadline_and_after_its_answer() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let reply = app
        .get(&format!("/api/hitl/requests/{request}"), OPERATOR)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let r = &reply.body;
    assert_eq!(r["requestId"], request.as_str());
    assert_eq!(r["runId"], run.as_str());
    assert!(r["threadId"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
    assert!(r["briefId"].as_str().unwrap().starts_with("brief_"));
    assert_eq!(r["runStatus"], "awaiting_hitl");
    assert_eq!(r["status"], "pending");
    assert_eq!(r["nodeId"], "review");
    assert_eq!(r["operatorPrompt"], "Approve the draft?");
    assert_eq!(r["items"][0]["itemId"], "review");
    assert_eq!(r["items"][0]["options"][0]["id"], "short");
    for field in ["expiresAt", "assignees", "resolvedAt", "responses"] {
        assert!(r.get(field).is_some(), "{field} in {r}");
    }
    // It is the request as the run shows it.
    let snapshot = app.get(&format!("/api/runs/{run}"), OPERATOR).await.body;
    let from_run = snapshot["hitlRequests"][0].clone();
    let mut alone = r.clone();
    for key in ["runId", "threadId", "briefId", "runStatus"] {
        alone.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(alone, from_run);

    let resumed = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op-1"),
            &[("prefer", "wait=10")],
        )
        .await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    let after = app
        .get(&format!("/api/hitl/requests/{request}"), OPERATOR)
        .await;
    assert_eq!(after.body["status"], "resolved");
    assert_eq!(after.body["runStatus"], "completed");
    assert_eq!(after.body["responses"][0]["responseType"], "approval");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_request_is_404_and_a_malformed_id_is_422_naming_request_id() {
    let app = TestApp::spawn().await;
    let unknown = app
        .get(
            "/api/hitl/requests/hitl_req_00000000000000000000000000000000",
            OPERATOR,
        )
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.code(), "request_not_found");
    for bad in [
        "not-a-request",
        "run_00000000000000000000000000000000",
        "hitl_req_XYZ",
    ] {
        let reply = app.get(&format!("/api/hitl/requests/{bad}"), ADMIN).await;
        assert_eq!(reply.status, 422, "{bad}: {reply:?}");
        assert_eq!(reply.code(), "invalid_field");
        assert_eq!(reply.field(), "requestId", "{bad}");
    }
    // The operate scope is needed, and a token before anything.
    let submitter = app
        .get(
            "/api/hitl/requests/hitl_req_00000000000000000000000000000000",
            SUBMITTER,
        )
        .await;
    assert_eq!(submitter.status, 403, "{submitter:?}");
    app.stop().await;
}
