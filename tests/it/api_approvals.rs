//! N-of-M approvals: a node needing `approvals: {required: N}` stays pending until N
//! distinct principals approved it — a bound credential counts as its operator, an
//! act-as credential once however many operators it names — while a rejection settles
//! it at once. Concurrent approvals count exactly N and resolve the request once. Real
//! API, real PostgreSQL, tokens from a file.

use serde_json::{Value, json};

use crate::api_events::{SseClient, names};
use crate::common::api::{OPERATOR, SUBMITTER, TestApp, audit_event};

const WAIT: (&str, &str) = ("Prefer", "wait=20");

fn plan(required: u32) -> Value {
    json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Release the payout?",
          "responseTypes": ["approval", "rejection"], "approvals": { "required": required } },
        { "id": "pay", "type": "task", "capability": "set", "input": { "paid": true } } ] })
}

fn approve(run: &str, request: &str, operator: Option<&str>) -> Value {
    let mut body = json!({ "runId": run, "requestId": request,
                           "responses": [ { "responseType": "approval", "approved": true } ] });
    if let Some(id) = operator {
        body["operator"] = json!({ "id": id });
    }
    body
}

async fn parked(app: &TestApp, required: u32) -> (String, String) {
    let run = app.create_run(plan(required)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    (run, parked["pendingRequestId"].as_str().unwrap().to_owned())
}

async fn app_with(entries: &[(&str, &str, &str)]) -> (TestApp, Vec<String>, tempfile::TempDir) {
    crate::common::api::spawn_with_tokens(entries).await
}

#[tokio::test]
async fn two_of_three_distinct_approvers_resolve_it_and_the_same_one_twice_is_refused() {
    let (app, t, _dir) = app_with(&[
        ("alice", "\"operate\"", "operator = { id = \"alice\" }"),
        // A second credential of the same operator counts as the same approver.
        (
            "alice-laptop",
            "\"operate\"",
            "operator = { id = \"alice\" }",
        ),
        ("bob", "\"operate\"", "operator = { id = \"bob\" }"),
        ("bot", "\"operate\"", "actAs = true"),
    ])
    .await;
    let (alice, alice_laptop, bob, bot) = (&t[0], &t[1], &t[2], &t[3]);
    let (run, request) = parked(&app, 2).await;
    let (_, mut sse) = SseClient::connect(&app.base, "/api/events", OPERATOR, None).await;
    let listed = app.get("/api/hitl/pending", OPERATOR).await;
    assert_eq!(
        listed.body["items"][0]["approvals"],
        json!({ "required": 2, "have": 0, "by": [] })
    );

    // The first approval: succeeded, the request still pending, the count shown.
    let first = app
        .post_as(
            "/api/hitl/resume",
            alice,
            &approve(&run, &request, None),
            &[WAIT],
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "succeeded");
    let approvals = &first.body["outcome"]["approvals"];
    assert_eq!(
        (approvals["have"].as_i64(), approvals["required"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(approvals["by"][0]["approver"], "operator:alice");
    assert_eq!(first.body["run"]["status"], "awaiting_hitl");
    assert_eq!(first.body["run"]["pendingRequestId"], request.as_str());
    let listed = app.get("/api/hitl/pending", OPERATOR).await;
    let shown = &listed.body["items"][0]["approvals"];
    assert_eq!(
        (shown["have"].as_i64(), shown["required"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(shown["by"][0]["operator"]["id"], "alice");
    assert_eq!(shown["by"][0]["principal"], "alice");

    // The same approver again — by the same credential or another of the same operator.
    let before = app.dump().await;
    for token in [alice, alice_laptop] {
        let twice = app
            .post_as(
                "/api/hitl/resume",
                token,
                &approve(&run, &request, None),
                &[WAIT],
            )
            .await;
        assert_eq!(
            (twice.status, twice.code()),
            (409, "already_approved"),
            "{twice:?}"
        );
        assert_eq!(twice.body["error"]["details"]["approver"], "operator:alice");
    }
    assert_eq!(
        app.dump().await,
        before,
        "a refused approval changes nothing"
    );

    // The second distinct approver resolves it and the run moves on.
    let second = app
        .post_as(
            "/api/hitl/resume",
            bob,
            &approve(&run, &request, None),
            &[WAIT],
        )
        .await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.body["outcome"]["approvals"]["have"], 2);
    let done = app.wait_for_run(&run, "completed").await;
    let recorded = audit_event(&done, "approval_recorded");
    assert_eq!(
        (
            recorded["principal"].as_str(),
            recorded["operator"]["id"].as_str(),
            recorded["details"]["have"].as_i64()
        ),
        (Some("alice"), Some("alice"), Some(1))
    );
    let resume = audit_event(&done, "resume");
    assert_eq!(
        (
            resume["principal"].as_str(),
            resume["operator"]["id"].as_str()
        ),
        (Some("bob"), Some("bob"))
    );
    let by: Vec<&str> = resume["details"]["approvals"]["by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["operator:alice", "operator:bob"]);
    let streamed = sse.until(&run, "run_completed").await;
    let streamed = names(&streamed);
    let at = |n: &str| streamed.iter().position(|e| *e == n).unwrap();
    assert!(at("approval_recorded") < at("resumed"), "{streamed:?}");

    // An act-as credential counts once, however many operators it names.
    let (run, request) = parked(&app, 2).await;
    let one = app
        .post_as(
            "/api/hitl/resume",
            bot,
            &approve(&run, &request, Some("pat")),
            &[WAIT],
        )
        .await;
    assert_eq!(one.status, 200, "{one:?}");
    let other = app
        .post_as(
            "/api/hitl/resume",
            bot,
            &approve(&run, &request, Some("quinn")),
            &[WAIT],
        )
        .await;
    assert_eq!(
        (other.status, other.code()),
        (409, "already_approved"),
        "{other:?}"
    );
    assert_eq!(other.body["error"]["details"]["approver"], "principal:bot");
    let shown = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(shown.body["status"], "awaiting_hitl");
    assert_eq!(shown.body["hitlRequests"][0]["approvals"]["have"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rejection_settles_a_request_that_needs_approvals_at_once() {
    let (app, t, _dir) = app_with(&[
        ("alice", "\"operate\"", "operator = { id = \"alice\" }"),
        ("bob", "\"operate\"", "operator = { id = \"bob\" }"),
    ])
    .await;
    let (run, request) = parked(&app, 2).await;
    let first = app
        .post_as(
            "/api/hitl/resume",
            &t[0],
            &approve(&run, &request, None),
            &[WAIT],
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let reject = json!({ "runId": run, "requestId": request,
                         "responses": [ { "responseType": "rejection", "freeformText": "no" } ] });
    let rejected = app
        .post_as("/api/hitl/resume", &t[1], &reject, &[WAIT])
        .await;
    assert_eq!(rejected.status, 200, "{rejected:?}");
    // The node's onRejection is the default, fail.
    let done = app.wait_for_run(&run, "failed").await;
    assert_eq!(done["hitlRequests"][0]["status"], "resolved");
    assert_eq!(
        done["hitlRequests"][0]["responses"][0]["responseType"],
        "rejection"
    );
    app.stop().await;
}

#[tokio::test]
async fn eight_approvers_at_once_count_exactly_two_and_resolve_the_request_once() {
    let names: Vec<String> = (1..=8).map(|i| format!("op{i}")).collect();
    let rest: Vec<String> = names
        .iter()
        .map(|n| format!("operator = {{ id = \"{n}\" }}"))
        .collect();
    let entries: Vec<(&str, &str, &str)> = names
        .iter()
        .zip(&rest)
        .map(|(n, r)| (n.as_str(), "\"operate\"", r.as_str()))
        .collect();
    let (app, tokens, _dir) = app_with(&entries).await;
    let (run, request) = parked(&app, 2).await;
    let body = approve(&run, &request, None);
    let replies = futures_util::future::join_all(
        tokens
            .iter()
            .map(|token| app.post_as("/api/hitl/resume", token, &body, &[WAIT])),
    )
    .await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 409, 409, 409, 409, 409, 409],
        "{replies:#?}"
    );
    for refused in replies.iter().filter(|r| r.status == 409) {
        assert!(
            matches!(refused.code(), "conflict" | "not_pending" | "run_terminal"),
            "{refused:?}"
        );
    }
    let counted: Vec<i64> = sqlx::query_scalar(
        "select count(*) from hitl_approvals where request_id = $1 \
         union all select count(*) from run_audit_events where request_id = $1 and action = 'resume' \
         union all select count(*) from run_audit_events where request_id = $1 and action = 'approval_recorded' \
         union all select count(distinct command_id) from hitl_responses where request_id = $1",
    )
    .bind(&request)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        counted,
        [2, 1, 1, 1],
        "approvals, resumes, recorded, answering commands"
    );
    app.wait_for_run(&run, "completed").await;
    app.assert_audit_intact().await;
    app.stop().await;
}

#[tokio::test]
async fn approvals_in_a_plan_are_checked_naming_the_field() {
    let app = TestApp::spawn().await;
    let node = |approvals: Value, types: Value| {
        json!({ "brief": { "title": "t", "content": {} },
                "plan": { "nodes": [ { "id": "review", "type": "hitl", "prompt": "ok?",
                                       "responseTypes": types, "approvals": approvals } ] } })
    };
    let both = json!(["approval", "rejection"]);
    for (body, field) in [
        (
            node(json!({ "required": 0 }), both.clone()),
            "plan.nodes[0].approvals.required",
        ),
        (
            node(json!({ "required": 21 }), both.clone()),
            "plan.nodes[0].approvals.required",
        ),
        (
            node(json!({ "required": "2" }), both.clone()),
            "plan.nodes[0].approvals.required",
        ),
        (
            node(json!({}), both.clone()),
            "plan.nodes[0].approvals.required",
        ),
        (
            node(json!({ "of": 2 }), both.clone()),
            "plan.nodes[0].approvals.of",
        ),
        (node(json!(2), both.clone()), "plan.nodes[0].approvals"),
        (
            node(json!({ "required": 2 }), json!(["approval", "freeform"])),
            "plan.nodes[0].approvals",
        ),
        (
            node(json!({ "required": 2 }), json!(["rejection"])),
            "plan.nodes[0].approvals",
        ),
    ] {
        let refused = app.post("/api/runs", SUBMITTER, &body).await;
        assert_eq!(
            (refused.status, refused.field()),
            (422, field),
            "{body}: {refused:?}"
        );
    }
    app.stop().await;
}
