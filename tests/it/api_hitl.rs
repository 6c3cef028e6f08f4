//! The operators' routes over real HTTP with workers running: the pending inbox, resume
//! and remove end to end, the command resource, and the 404/409/503 answers.

use std::sync::Arc;

use crate::common::api::{ADMIN, AppOptions, OPERATOR, TestApp, approval, review_plan};
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::engine::capability::{
    BoxFuture, Capability, CapabilityCall, CapabilityOutcome, CapabilityRegistry,
    RunnerStateUpdate, TransientError,
};
use serde_json::{Map, json};
use tokio::sync::Semaphore;

#[tokio::test]
async fn pending_lists_every_runbook_field_oldest_first() {
    let app = TestApp::spawn().await;
    let (first_run, first_request) = app.parked_run().await;
    let (second_run, _) = app.parked_run().await;

    let reply = app.get("/api/hitl/pending", OPERATOR).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(reply.body["nextCursor"], json!(null));
    let item = &items[0];
    assert_eq!(item["runId"], first_run.as_str());
    assert_eq!(items[1]["runId"], second_run.as_str());
    assert_eq!(item["pendingRequestId"], first_request.as_str());
    assert_eq!(item["pendingNodeId"], "review");
    assert_eq!(item["operatorPrompt"], "Approve the draft?");
    assert_eq!(item["contractSummary"]["facets"], json!(["tone"]));
    assert_eq!(
        item["contractSummary"]["capabilityContract"],
        json!({ "output": "approved draft" })
    );
    assert_eq!(
        item["responseTypes"],
        json!(["approval", "rejection", "option", "freeform"])
    );
    assert_eq!(item["options"][0]["id"], "short");
    assert_eq!(item["executionContext"]["locale"], "en");
    assert_eq!(item["executionContext"]["draft"], "v1");
    for field in ["threadId", "briefId", "createdAt"] {
        assert!(item[field].is_string(), "{field} in {item}");
    }
    assert!(item.get("expiresAt").is_some_and(|v| v.is_null()), "{item}");
    app.stop().await;
}

#[tokio::test]
async fn pending_pages_with_an_opaque_cursor_and_filters_by_thread_brief_and_node() {
    let app = TestApp::spawn().await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(app.parked_run().await.0);
    }
    let page = app.get("/api/hitl/pending?limit=2", OPERATOR).await;
    assert_eq!(page.status, 200, "{page:?}");
    let ids: Vec<_> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, runs[..2]);
    let cursor = page.body["nextCursor"].as_str().unwrap();
    let rest = app
        .get(
            &format!("/api/hitl/pending?limit=2&cursor={cursor}"),
            OPERATOR,
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["items"][0]["runId"], runs[2].as_str());
    assert_eq!(rest.body["nextCursor"], json!(null));

    let item = &page.body["items"][1];
    let by_thread = app
        .get(
            &format!(
                "/api/hitl/pending?threadId={}",
                item["threadId"].as_str().unwrap()
            ),
            OPERATOR,
        )
        .await;
    assert_eq!(by_thread.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_thread.body["items"][0]["runId"], runs[1].as_str());
    let by_brief = app
        .get(
            &format!(
                "/api/hitl/pending?briefId={}",
                item["briefId"].as_str().unwrap()
            ),
            OPERATOR,
        )
        .await;
    assert_eq!(by_brief.body["items"][0]["runId"], runs[1].as_str());
    let by_node = app.get("/api/hitl/pending?nodeId=review", OPERATOR).await;
    assert_eq!(by_node.body["items"].as_array().unwrap().len(), 3);
    let other_node = app.get("/api/hitl/pending?nodeId=publish", OPERATOR).await;
    assert_eq!(other_node.body["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn pending_refuses_a_bad_limit_cursor_or_filter_naming_the_parameter() {
    let app = TestApp::spawn_with(AppOptions {
        workers: false,
        ..AppOptions::default()
    })
    .await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=3a", "cursor"),
        ("briefId=run_0", "briefId"),
        ("colour=blue", "colour"),
        ("limit=5&limit=6", "limit"),
    ] {
        let reply = app
            .get(&format!("/api/hitl/pending?{query}"), OPERATOR)
            .await;
        assert_eq!(reply.status, 422, "{query}: {reply:?}");
        assert_eq!(reply.field(), field, "{query}");
    }
    let max = app.get("/api/hitl/pending?limit=500", OPERATOR).await;
    assert_eq!(max.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_resume_is_accepted_and_its_command_succeeds_with_responses_and_audit_stored() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;

    let reply = app
        .post(
            "/api/hitl/resume",
            OPERATOR,
            &approval(&run, &request, "op-1"),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.body["kind"], "resume");
    assert_eq!(reply.body["runId"], run.as_str());
    assert_eq!(reply.body["requestId"], request.as_str());
    let id = reply.body["commandId"].as_str().unwrap();
    assert_eq!(
        reply.header("location"),
        Some(format!("/api/hitl/commands/{id}").as_str())
    );

    let command = app.wait_for_command(id).await;
    assert_eq!(command["status"], "succeeded", "{command}");
    assert_eq!(command["outcome"]["run"]["pendingRequestId"], json!(null));
    assert_eq!(command["operator"]["id"], "op-1");
    for field in ["createdAt", "updatedAt", "startedAt", "finishedAt"] {
        assert!(command[field].is_string(), "{field} in {command}");
    }
    let snapshot = &command["run"];
    assert_eq!(snapshot["pendingRequestId"], json!(null));
    let answered = &snapshot["hitlRequests"][0];
    assert_eq!(answered["status"], "resolved");
    let response = &answered["responses"][0];
    assert_eq!(response["responseType"], "approval");
    assert_eq!(response["approved"], true);
    assert_eq!(response["freeformText"], "Looks good");
    assert_eq!(response["responderId"], "op-1");
    assert_eq!(response["responderDisplayName"], "Operator op-1");
    let audit = snapshot["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "resume")
        .unwrap();
    assert_eq!(audit["operator"]["email"], "op-1@example.com");
    assert_eq!(audit["note"], "Approved after review");
    assert_eq!(audit["commandId"], id);

    let done = app.wait_for_run(&run, "completed").await;
    assert_eq!(done["executionContext"]["published"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_resume_with_prefer_wait_answers_200_with_the_updated_run_in_one_call() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let reply = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op-1"),
            &[("Prefer", "wait=5")],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("preference-applied"), Some("wait=5"));
    assert_eq!(reply.body["status"], "succeeded");
    assert_eq!(reply.body["run"]["runId"], run.as_str());
    assert_eq!(reply.body["run"]["pendingRequestId"], json!(null));
    assert_ne!(reply.body["run"]["status"], "awaiting_hitl");
    assert_eq!(
        reply.body["run"]["hitlRequests"][0]["responses"][0]["approved"],
        true
    );
    app.stop().await;
}

#[tokio::test]
async fn a_run_can_be_named_by_its_thread_id() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let thread = app.get(&format!("/api/runs/{run}"), OPERATOR).await.body["threadId"].clone();
    let mut body = approval(&run, &request, "op-1");
    body.as_object_mut().unwrap().remove("runId");
    body["threadId"] = thread;
    let reply = app
        .post_with("/api/hitl/resume", &body, &[("Prefer", "wait=5")])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["runId"], run.as_str());
    app.stop().await;
}

#[tokio::test]
async fn removing_a_parked_run_cancels_it_and_denies_the_request_with_the_reason() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let body = json!({ "runId": run, "requestId": request, "reason": "Operator cancelled",
                       "operator": { "id": "op-2", "displayName": "Op Two" },
                       "note": "Duplicate request" });
    let reply = app.post("/api/hitl/remove", OPERATOR, &body).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["kind"], "remove");
    let command = app
        .wait_for_command(reply.body["commandId"].as_str().unwrap())
        .await;
    assert_eq!(command["status"], "succeeded", "{command}");
    let snapshot = &command["run"];
    assert_eq!(snapshot["status"], "cancelled");
    assert_eq!(snapshot["hitlRequests"][0]["status"], "denied");
    assert_eq!(
        snapshot["hitlRequests"][0]["denialReason"],
        "Operator cancelled"
    );
    let audit = snapshot["auditLog"].as_array().unwrap().last().unwrap();
    assert_eq!(audit["action"], "remove");
    assert_eq!(audit["operator"]["id"], "op-2");
    assert_eq!(audit["operator"]["displayName"], "Op Two");
    assert_eq!(audit["note"], "Duplicate request");
    app.stop().await;
}

/// `block`: waits until the test hands out a permit, so its run stays `running`.
struct Block(Arc<Semaphore>);

impl Capability for Block {
    fn call<'a>(
        &'a self,
        _call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            let _permit = self.0.acquire().await.unwrap();
            Ok(CapabilityOutcome::Completed {
                merge: Map::new(),
                runner_state: RunnerStateUpdate::Keep,
                notes: None,
            })
        })
    }
}

#[tokio::test]
async fn removing_a_running_run_cancels_it_while_its_task_is_still_working() {
    let gate = Arc::new(Semaphore::new(0));
    let mut registry = CapabilityRegistry::with_builtins();
    registry.register("block", Arc::new(Block(gate.clone())));
    let app = TestApp::spawn_with(AppOptions {
        engine: Engine::new(registry, true),
        ..AppOptions::default()
    })
    .await;
    let mut plan = review_plan();
    plan["nodes"][0] = json!({ "id": "prepare", "type": "task", "capability": "block" });
    let run = app.create_run(plan).await;
    app.wait_for_run(&run, "running").await;

    let body = json!({ "runId": run, "reason": "No longer needed",
                       "operator": { "id": "op-3", "email": "op3@example.com" } });
    let reply = app
        .post_with("/api/hitl/remove", &body, &[("Prefer", "wait=5")])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["run"]["status"], "cancelled");
    assert_eq!(reply.body["requestId"], json!(null));
    let audit = reply.body["run"]["auditLog"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(audit["action"], "remove");
    assert_eq!(audit["operator"]["email"], "op3@example.com");

    // The task finishes after the remove: its checkpoint is fenced out.
    gate.add_permits(10);
    app.settle().await;
    let after = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(after.body["status"], "cancelled");
    assert_eq!(after.body["hitlRequests"], json!([]));
    assert_eq!(after.body["statusReason"], "No longer needed");
    app.stop().await;
}

#[tokio::test]
async fn resume_and_remove_answer_404_for_an_unknown_run_or_request() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let nobody = "run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let no_request = "hitl_req_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    for (path, body, code) in [
        (
            "/api/hitl/resume",
            approval(nobody, &request, "op"),
            "run_not_found",
        ),
        (
            "/api/hitl/resume",
            approval(&run, no_request, "op"),
            "request_not_found",
        ),
        (
            "/api/hitl/remove",
            json!({ "threadId": "no-such-thread", "operator": { "id": "op" } }),
            "run_not_found",
        ),
        (
            "/api/hitl/remove",
            json!({ "runId": run, "requestId": no_request, "operator": { "id": "op" } }),
            "request_not_found",
        ),
    ] {
        let reply = app.post(path, ADMIN, &body).await;
        assert_eq!(reply.status, 404, "{path} {body}: {reply:?}");
        assert_eq!(reply.code(), code);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_resume_of_a_settled_request_answers_409_naming_the_pending_one_and_who_settled_it() {
    let app = TestApp::spawn().await;
    let plan = json!({ "nodes": [
        { "id": "first", "type": "hitl", "prompt": "One?", "responseTypes": ["approval"] },
        { "id": "second", "type": "hitl", "prompt": "Two?", "responseTypes": ["approval"] } ] });
    let run = app.create_run(plan).await;
    let old = app.wait_for_run(&run, "awaiting_hitl").await["pendingRequestId"].clone();
    let old = old.as_str().unwrap();
    let first = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, old, "op-a"),
            &[("Prefer", "wait=5")],
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let snapshot = app
        .poll(&format!("/api/runs/{run}"), |b| {
            b["status"] == "awaiting_hitl" && b["pendingRequestId"] != old
        })
        .await;
    let current = snapshot["pendingRequestId"].as_str().unwrap();

    let reply = app
        .post("/api/hitl/resume", OPERATOR, &approval(&run, old, "op-b"))
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.code(), "conflict");
    let details = &reply.body["error"]["details"];
    assert_eq!(details["pendingRequestId"], current);
    assert_eq!(details["winner"]["operator"]["id"], "op-a");
    assert_eq!(details["winner"]["commandId"], first.body["commandId"]);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(current) && message.contains("op-a"),
        "{message}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_remove_of_a_run_that_already_ended_answers_409() {
    let app = TestApp::spawn().await;
    let run = app
        .create_run(json!({ "nodes": [ { "id": "only", "type": "task", "capability": "set" } ] }))
        .await;
    app.wait_for_run(&run, "completed").await;
    let reply = app
        .post(
            "/api/hitl/remove",
            OPERATOR,
            &json!({ "runId": run, "operator": { "id": "op" } }),
        )
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.code(), "run_terminal");
    assert_eq!(reply.body["error"]["details"]["runStatus"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn a_command_id_that_names_nothing_answers_404() {
    let app = TestApp::spawn().await;
    for id in [
        "cmd_0193a4c0e2b77d3c8f1a2b3c4d5e6f70",
        "not-a-command",
        "run_0",
    ] {
        let reply = app.get(&format!("/api/hitl/commands/{id}"), OPERATOR).await;
        assert_eq!(reply.status, 404, "{id}: {reply:?}");
        assert_eq!(reply.code(), "command_not_found");
    }
    app.stop().await;
}

#[tokio::test]
async fn resume_and_remove_answer_503_when_hitl_is_disabled() {
    let app = TestApp::spawn_with(AppOptions {
        engine: Engine::with_builtins(false),
        workers: false,
        ..AppOptions::default()
    })
    .await;
    let run = "run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let request = "hitl_req_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let before = app.dump().await;
    for (path, body) in [
        ("/api/hitl/resume", approval(run, request, "op")),
        (
            "/api/hitl/remove",
            json!({ "runId": run, "operator": { "id": "op" } }),
        ),
    ] {
        let reply = app.post(path, OPERATOR, &body).await;
        assert_eq!(reply.status, 503, "{path}: {reply:?}");
        assert_eq!(reply.code(), "hitl_disabled");
    }
    assert_eq!(app.dump().await, before);
    app.stop().await;
}
