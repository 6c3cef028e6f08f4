//! `POST /api/runs`, `GET /api/runs/{runId}` and `GET /api/runs?threadId=…` over real
//! HTTP.

use crate::common::api::{OPERATOR, SUBMITTER, TestApp, review_plan};
use serde_json::{Value, json};

fn new_run(plan: Value) -> Value {
    json!({ "brief": { "title": "Spring launch post", "content": { "text": "…" } },
            "threadId": "client-thread-42",
            "executionContext": { "locale": "en" },
            "plan": plan })
}

#[tokio::test]
async fn creating_a_run_answers_202_with_its_ids_and_a_location_and_the_run_pauses() {
    let app = TestApp::spawn().await;
    let reply = app
        .post("/api/runs", SUBMITTER, &new_run(review_plan()))
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let run = reply.body["runId"].as_str().unwrap();
    assert!(run.starts_with("run_"));
    assert_eq!(reply.body["threadId"], "client-thread-42");
    assert_eq!(reply.body["status"], "queued");
    assert!(
        reply.body["briefId"]
            .as_str()
            .unwrap()
            .starts_with("brief_")
    );
    assert_eq!(
        reply.header("location"),
        Some(format!("/api/runs/{run}").as_str())
    );

    let snapshot = app.wait_for_run(run, "awaiting_hitl").await;
    for field in [
        "runId",
        "threadId",
        "briefId",
        "status",
        "pendingRequestId",
        "version",
        "plan",
        "executionContext",
        "runnerMetadata",
        "hitlRequests",
        "auditLog",
        "createdAt",
        "updatedAt",
    ] {
        assert!(snapshot.get(field).is_some(), "{field} in {snapshot}");
    }
    assert_eq!(snapshot["executionContext"]["locale"], "en");
    let request = &snapshot["hitlRequests"][0];
    assert_eq!(request["requestId"], snapshot["pendingRequestId"]);
    assert_eq!(request["nodeId"], "review");
    assert_eq!(request["status"], "pending");
    assert_eq!(request["contractSummary"]["facets"], json!(["tone"]));
    for field in ["expiresAt", "resolvedAt", "denialReason"] {
        assert_eq!(request[field], Value::Null, "{field}");
    }
    assert_eq!(snapshot["auditLog"][0]["action"], "run_created");
    app.stop().await;
}

#[tokio::test]
async fn a_run_can_reuse_an_existing_brief_by_id() {
    let app = TestApp::spawn().await;
    let first = app
        .post("/api/runs", SUBMITTER, &new_run(review_plan()))
        .await;
    let brief = first.body["briefId"].clone();
    let reply = app
        .post(
            "/api/runs",
            SUBMITTER,
            &json!({ "briefId": brief, "plan": review_plan() }),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["briefId"], brief);
    assert!(
        reply.body["threadId"]
            .as_str()
            .unwrap()
            .starts_with("thread_")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_plan_error_is_422_naming_the_node_and_the_field() {
    let app = TestApp::spawn().await;
    let before = app.dump().await;
    let mut plan = review_plan();
    plan["nodes"][1].as_object_mut().unwrap().remove("prompt");
    let reply = app.post("/api/runs", SUBMITTER, &new_run(plan)).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.code(), "invalid_plan");
    assert_eq!(reply.field(), "plan.nodes[1].prompt");
    assert_eq!(reply.body["error"]["details"]["node"], "review");

    let mut plan = review_plan();
    plan["nodes"][0]["capability"] = json!("teleport");
    let reply = app.post("/api/runs", SUBMITTER, &new_run(plan)).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.field(), "plan.nodes[0].capability");
    assert_eq!(reply.body["error"]["details"]["node"], "prepare");
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn bad_new_runs_get_422_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let before = app.dump().await;
    let plan = review_plan();
    for (body, field) in [
        (json!({ "plan": plan }), "brief"),
        (
            json!({ "brief": { "title": "t" }, "briefId": "brief_0193a4c0e2b77d3c8f1a2b3c4d5e6f70",
                    "plan": plan }),
            "briefId",
        ),
        (
            json!({ "brief": { "title": " " }, "plan": plan }),
            "brief.title",
        ),
        (
            json!({ "brief": { "content": {} }, "plan": plan }),
            "brief.title",
        ),
        (json!({ "briefId": "b-1", "plan": plan }), "briefId"),
        (
            json!({ "brief": { "title": "t" }, "threadId": "", "plan": plan }),
            "threadId",
        ),
        (
            json!({ "brief": { "title": "t" }, "executionContext": [1], "plan": plan }),
            "executionContext",
        ),
        (json!({ "brief": { "title": "t" } }), "plan"),
        (json!({ "brief": { "title": "t" }, "plan": [] }), "plan"),
        (
            json!({ "brief": { "title": "t" }, "plan": plan, "owner": "me" }),
            "owner",
        ),
    ] {
        let reply = app.post("/api/runs", SUBMITTER, &body).await;
        assert_eq!(reply.status, 422, "{body}: {reply:?}");
        assert_eq!(reply.field(), field, "{body}");
    }
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_thread_id_in_use_is_409_and_an_unknown_brief_is_404() {
    let app = TestApp::spawn().await;
    let first = app
        .post("/api/runs", SUBMITTER, &new_run(review_plan()))
        .await;
    assert_eq!(first.status, 202);
    app.wait_for_run(first.body["runId"].as_str().unwrap(), "awaiting_hitl")
        .await;
    let before = app.dump().await;
    let again = app
        .post("/api/runs", SUBMITTER, &new_run(review_plan()))
        .await;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.code(), "thread_taken");
    let unknown = app
        .post(
            "/api/runs",
            SUBMITTER,
            &json!({ "briefId": "brief_0193a4c0e2b77d3c8f1a2b3c4d5e6f70", "plan": review_plan() }),
        )
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.code(), "brief_not_found");
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_run_is_found_by_id_or_thread_and_an_unknown_one_is_404() {
    let app = TestApp::spawn().await;
    let (run, _) = app.parked_run().await;
    let shown = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["runId"], run.as_str());

    let thread = shown.body["threadId"].as_str().unwrap();
    let listed = app
        .get(&format!("/api/runs?threadId={thread}"), OPERATOR)
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0], shown.body);
    assert_eq!(listed.body["nextCursor"], Value::Null);
    let empty = app
        .get("/api/runs?threadId=nobody-uses-this", OPERATOR)
        .await;
    assert_eq!(empty.body, json!({ "items": [], "nextCursor": null }));
    let missing = app.get("/api/runs", OPERATOR).await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.field(), "threadId");

    for id in ["run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70", "not-a-run"] {
        let reply = app.get(&format!("/api/runs/{id}"), OPERATOR).await;
        assert_eq!(reply.status, 404, "{id}");
        assert_eq!(reply.code(), "run_not_found");
    }
    app.stop().await;
}
