//! Several decisions per pause, through the real API with a real agent on port 0: an
//! agent's two tool approvals listed with their tools and arguments and answered one by
//! one (approve, reject with a message, edit the arguments), a resume that misses or
//! invents an item refused with nothing changed, a deadline on an agent's request, and a
//! request stored before items existed still listed, resumed and completed.

use serde_json::{Value, json};

use crate::agent_faults::{completed, raw_agent, reply, serve, wait_until, webhook_engine};
use crate::common::api::{AppOptions, OPERATOR, TestApp, review_plan};

/// An agent that asks about two tool calls, then completes echoing the answers it got.
fn two_tool_agent(
    timeout: Option<(u64, &'static str)>,
) -> std::sync::Arc<crate::agent_faults::RawAgent> {
    raw_agent(move |body, _| {
        if body["responses"].is_null() {
            let mut request = json!({ "prompt": "The agent wants to run two tools", "items": [
                { "itemId": "call_mail", "kind": "tool_approval", "title": "Send the launch mail",
                  "tool": { "name": "send_email", "arguments": { "to": "press@example.com", "draft": 3 } } },
                { "itemId": "call_rm", "tool": { "name": "delete_file", "arguments": { "path": "/drafts/old.md" } },
                  "responseTypes": ["approval", "rejection", "edit"] } ] });
            if let Some((secs, action)) = timeout {
                request["timeoutSeconds"] = json!(secs);
                request["onTimeout"] = json!(action);
            }
            reply(200, json!({ "status": "interrupted", "request": request, "runnerState": { "turn": 1 } }).to_string())
        } else {
            completed(json!({ "answers": body["responses"] }))
        }
    })
}

async fn app_with_agent(agent: std::sync::Arc<crate::agent_faults::RawAgent>) -> (TestApp, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent);
    let app = TestApp::spawn_with(AppOptions {
        engine: webhook_engine(&url, 1 << 20, None),
        ..AppOptions::default()
    })
    .await;
    (app, url)
}

fn agent_plan(url: &str) -> Value {
    json!({ "nodes": [ { "id": "tools", "type": "task", "capability": "agent.webhook",
                         "config": { "url": url } } ] })
}

/// Why a run fails whose agent interrupts with `request` (its `statusReason`).
async fn refusal_of(request: Value) -> String {
    let agent = raw_agent(move |_, _| {
        reply(
            200,
            json!({ "status": "interrupted", "request": request }).to_string(),
        )
    });
    let (app, url) = app_with_agent(agent).await;
    let run = app.create_run(agent_plan(&url)).await;
    let failed = app.wait_for_run(&run, "failed").await;
    app.stop().await;
    failed["statusReason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Resumes `run`'s `request` with `answers`, which must be accepted.
async fn answer(app: &TestApp, run: &str, request: &str, answers: Value) {
    let accepted = app
        .post("/api/hitl/resume", OPERATOR, &resume(run, request, answers))
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
}

fn resume(run: &str, request: &str, responses: Value) -> Value {
    json!({ "runId": run, "requestId": request, "responses": responses,
            "operator": { "id": "op", "displayName": "Operator" } })
}

#[tokio::test]
async fn two_tool_approvals_are_listed_with_their_tools_and_answered_each_on_its_own() {
    let agent = two_tool_agent(None);
    let (app, url) = app_with_agent(agent.clone()).await;
    let run = app.create_run(agent_plan(&url)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();

    let pending = app.get("/api/hitl/pending", OPERATOR).await;
    assert_eq!(pending.status, 200);
    let listed = &pending.body["items"][0];
    assert_eq!(
        listed["responseTypes"],
        json!([]),
        "several items: none at request level"
    );
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert_eq!(items[0]["itemId"], "call_mail");
    assert_eq!(items[0]["kind"], "tool_approval");
    assert_eq!(
        items[0]["tool"],
        json!({ "name": "send_email", "arguments": { "to": "press@example.com", "draft": 3 } })
    );
    assert_eq!(items[0]["responseTypes"], json!(["approval", "rejection"]));
    assert_eq!(
        items[1]["title"], "Run delete_file",
        "a title from the tool when none is given"
    );
    assert_eq!(items[1]["kind"], "tool_approval");
    let raised: Vec<&Value> = parked["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "hitl_requested")
        .collect();
    assert_eq!(
        raised[0]["details"]["items"],
        json!([ { "itemId": "call_mail", "kind": "tool_approval", "title": "Send the launch mail", "tool": "send_email" },
                { "itemId": "call_rm", "kind": "tool_approval", "title": "Run delete_file", "tool": "delete_file" } ]),
        "the live event names the items"
    );

    // Refused, and nothing changes: an item left unanswered, an unknown one, an item
    // named where several exist but none given, an edit an item does not offer.
    let before = app.dump().await;
    let approve_mail =
        json!({ "itemId": "call_mail", "responseType": "approval", "approved": true });
    for (responses, field, says) in [
        (json!([approve_mail]), "responses", "call_rm"),
        (
            json!([approve_mail, { "itemId": "call_9", "responseType": "rejection" }]),
            "responses[1].itemId",
            "call_9",
        ),
        (
            json!([{ "responseType": "approval", "approved": true }]),
            "responses[0].itemId",
            "2 items",
        ),
        (
            json!([{ "itemId": "call_mail", "responseType": "edit", "editedArguments": { "to": "x" } },
                { "itemId": "call_rm", "responseType": "rejection" }]),
            "responses[0].responseType",
            "call_mail",
        ),
        (
            json!([approve_mail, { "itemId": "call_rm", "responseType": "edit" }]),
            "responses[1].editedArguments",
            "required",
        ),
        (
            json!([approve_mail, { "itemId": "call_rm", "responseType": "edit", "editedArguments": [1] }]),
            "responses[1].editedArguments",
            "object",
        ),
        (
            json!([approve_mail, { "itemId": "call_rm", "responseType": "rejection", "editedArguments": {} }]),
            "responses[1].editedArguments",
            "edit",
        ),
    ] {
        let refused = app
            .post(
                "/api/hitl/resume",
                OPERATOR,
                &resume(&run, &request, responses.clone()),
            )
            .await;
        assert_eq!(
            (refused.status, refused.code(), refused.field()),
            (422, "invalid_field", field),
            "{responses}: {refused:?}"
        );
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(app.dump().await, before, "refused answers change nothing");

    let answers = json!([
        approve_mail,
        { "itemId": "call_rm", "responseType": "rejection", "freeformText": "keep the old draft" } ]);
    answer(&app, &run, &request, answers).await;
    let done = app.wait_for_run(&run, "completed").await;
    let calls = agent.calls();
    assert_eq!(calls.len(), 2);
    let got = calls[1].body["responses"].as_array().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0]["itemId"].as_str(), got[0]["approved"].as_bool()),
        (Some("call_mail"), Some(true))
    );
    assert_eq!(
        (
            got[1]["itemId"].as_str(),
            got[1]["responseType"].as_str(),
            got[1]["freeformText"].as_str()
        ),
        (
            Some("call_rm"),
            Some("rejection"),
            Some("keep the old draft")
        ),
        "the rejection's message reaches the agent"
    );
    assert_eq!(calls[1].body["runnerState"], json!({ "turn": 1 }));
    assert_eq!(
        done["executionContext"]["tools"]["answers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn an_edit_reaches_the_agent_with_its_arguments() {
    let agent = two_tool_agent(None);
    let (app, url) = app_with_agent(agent.clone()).await;
    let run = app.create_run(agent_plan(&url)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();
    let answers = json!([
        { "itemId": "call_mail", "responseType": "approval", "approved": true },
        { "itemId": "call_rm", "responseType": "edit", "editedArguments": { "path": "/drafts/older.md" } } ]);
    answer(&app, &run, &request, answers).await;
    let done = app.wait_for_run(&run, "completed").await;
    let got = &agent.calls()[1].body["responses"][1];
    assert_eq!(got["responseType"], "edit");
    assert_eq!(got["approved"], true, "an edit approves");
    assert_eq!(
        got["editedArguments"],
        json!({ "path": "/drafts/older.md" })
    );
    let stored = &done["hitlRequests"][0]["responses"][1];
    assert_eq!(
        stored["editedArguments"],
        json!({ "path": "/drafts/older.md" })
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agents_request_with_a_deadline_expires_by_its_on_timeout_for_every_item() {
    let agent = two_tool_agent(Some((1, "approve")));
    let (app, url) = app_with_agent(agent.clone()).await;
    let run = app.create_run(agent_plan(&url)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    assert!(
        parked["hitlRequests"][0]["expiresAt"].is_string(),
        "{parked}"
    );
    assert_eq!(parked["hitlRequests"][0]["onTimeout"], "approve");
    let done = app.wait_for_run(&run, "completed").await;
    assert_eq!(done["hitlRequests"][0]["status"], "expired");
    assert!(
        done["auditLog"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "expire" && e["details"]["onTimeout"] == "approve"),
        "the expiry is audited"
    );
    wait_until(|| agent.calls().len() == 2).await;
    let got = agent.calls()[1].body["responses"].clone();
    let items: Vec<(&str, bool)> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["itemId"].as_str().unwrap(),
                r["approved"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        items,
        vec![("call_mail", true), ("call_rm", true)],
        "onTimeout applies to every item"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_item_from_an_agent_fails_the_node_naming_the_field() {
    let reason = refusal_of(json!({ "prompt": "?", "items": [
        { "itemId": "a", "title": "A" }, { "itemId": "a", "title": "again" } ] }))
    .await;
    assert_eq!(
        reason,
        "agent reply: request.items[1].itemId: must be unique in the request"
    );
}

#[tokio::test]
async fn a_request_stored_before_items_existed_is_listed_resumed_and_completed() {
    let app = TestApp::spawn().await;
    let run = app.create_run(review_plan()).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();
    // As the schema before migration 8 had it: no items.
    sqlx::query("update hitl_requests set items = null")
        .execute(&app.pool)
        .await
        .unwrap();
    let pending = app.get("/api/hitl/pending", OPERATOR).await;
    let item = &pending.body["items"][0]["items"][0];
    assert_eq!(
        item["itemId"], "review",
        "its one item, named after the node"
    );
    assert_eq!(item["kind"], "question");
    assert_eq!(
        item["responseTypes"],
        json!(["approval", "rejection", "option", "freeform"])
    );
    assert_eq!(item["options"][0]["id"], "short");
    let answer = crate::common::api::approval(&run, &request, "op");
    let accepted = app.post("/api/hitl/resume", OPERATOR, &answer).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = app.wait_for_run(&run, "completed").await;
    assert_eq!(done["hitlRequests"][0]["responses"][0]["itemId"], "review");
    assert_eq!(done["executionContext"]["review"]["decision"], "approved");
    app.stop().await;
}

#[tokio::test]
async fn the_example_agent_raises_two_tool_approvals_for_the_example_run_and_completes() {
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // `cargo test` builds examples only when it builds every target: make sure this one
    // is current (a no-op when it is).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--locked", "--example", "echo_agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "the example builds");
    let example = crate::common::service_binary()
        .parent()
        .unwrap()
        .join("examples/echo_agent");
    let mut agent = std::process::Command::new(&example)
        .env("AGENT_ADDR", address.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    wait_until(|| std::net::TcpStream::connect(address).is_ok()).await;
    let url = format!("http://{address}/agent");
    let app = TestApp::spawn_with(AppOptions {
        engine: webhook_engine(&url, 1 << 20, None),
        ..AppOptions::default()
    })
    .await;
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/agent-run.json"),
    )
    .unwrap()
    .replace("http://127.0.0.1:9000/agent", &url);
    let body: Value = serde_json::from_str(&body).unwrap();
    let created = app
        .post("/api/runs", crate::common::api::SUBMITTER, &body)
        .await;
    assert_eq!(created.status, 202, "{created:?}");
    let run = created.body["runId"].as_str().unwrap().to_owned();
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = &parked["hitlRequests"][0];
    let tools: Vec<&str> = request["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["tool"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["send_email", "close_ticket"]);
    let answers = json!([
        { "itemId": "call_0", "responseType": "edit", "editedArguments": { "to": "sales@acme.example" } },
        { "itemId": "call_1", "responseType": "rejection", "freeformText": "leave it open" } ]);
    let request_id = request["requestId"].as_str().unwrap();
    answer(&app, &run, request_id, answers).await;
    let done = app.wait_for_run(&run, "completed").await;
    assert_eq!(
        done["executionContext"]["send"]["decisions"],
        json!([ { "itemId": "call_0", "runs": true, "arguments": { "to": "sales@acme.example" }, "message": null },
                { "itemId": "call_1", "runs": false, "arguments": null, "message": "leave it open" } ])
    );
    app.stop().await;
    let _ = agent.kill();
    let _ = agent.wait();
}

#[tokio::test]
async fn an_agents_request_may_need_two_approvals_each_answering_every_item() {
    let agent = raw_agent(|body, _| {
        if body["responses"].is_null() {
            let request = json!({ "prompt": "Two tools, four eyes", "approvals": { "required": 2 },
                "items": [
                    { "itemId": "call_mail", "tool": { "name": "send_email", "arguments": {} } },
                    { "itemId": "call_pay", "tool": { "name": "pay", "arguments": { "eur": 10 } } } ] });
            reply(
                200,
                json!({ "status": "interrupted", "request": request }).to_string(),
            )
        } else {
            completed(json!({ "answers": body["responses"] }))
        }
    });
    let (app, url) = app_with_agent(agent).await;
    let run = app.create_run(agent_plan(&url)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();
    assert_eq!(parked["hitlRequests"][0]["approvals"]["required"], 2);
    let both = json!([
        { "itemId": "call_mail", "responseType": "approval", "approved": true },
        { "itemId": "call_pay", "responseType": "approval", "approved": true } ]);
    // An edit cannot be counted among approvals.
    let edit = json!([
        { "itemId": "call_mail", "responseType": "approval", "approved": true },
        { "itemId": "call_pay", "responseType": "edit", "editedArguments": { "eur": 1 } } ]);
    let refused = app
        .post("/api/hitl/resume", OPERATOR, &resume(&run, &request, edit))
        .await;
    assert_eq!(
        (refused.status, refused.field()),
        (422, "responses[1].responseType")
    );
    // Two act-as credentials are two approvers.
    let wait = [("Prefer", "wait=20")];
    let first = app
        .post_as(
            "/api/hitl/resume",
            OPERATOR,
            &resume(&run, &request, both.clone()),
            &wait,
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["run"]["status"], "awaiting_hitl");
    let second = app
        .post_as(
            "/api/hitl/resume",
            crate::common::api::ADMIN,
            &resume(&run, &request, both),
            &wait,
        )
        .await;
    assert_eq!(second.status, 200, "{second:?}");
    let done = app.wait_for_run(&run, "completed").await;
    let answers = done["executionContext"]["tools"]["answers"]
        .as_array()
        .unwrap();
    assert_eq!(
        answers.len(),
        2,
        "the resolving answers reach the agent: {done}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agents_request_needing_approvals_offers_approval_and_rejection_only() {
    let reason = refusal_of(
        json!({ "prompt": "?", "approvals": { "required": 2 }, "items": [
        { "itemId": "a", "title": "A" },
        { "itemId": "b", "title": "B", "tool": { "name": "t", "arguments": {} },
          "responseTypes": ["approval", "edit"] } ] }),
    )
    .await;
    assert!(
        reason.starts_with(
            "agent reply: request.items[1].responseTypes: needs responseTypes of approval"
        ),
        "{reason}"
    );
}

#[tokio::test]
async fn an_agents_request_is_reminded_and_escalated_while_pending_and_no_more_once_answered() {
    let agent = raw_agent(|body, _| {
        if body["responses"].is_null() {
            let request = json!({ "prompt": "Wire the money?", "responseTypes": ["approval", "rejection"],
                "assignees": { "users": ["alice"] },
                "remindEverySeconds": 1,
                "escalation": [ { "afterSeconds": 2, "addAssignees": { "groups": ["leads"] } } ] });
            reply(
                200,
                json!({ "status": "interrupted", "request": request }).to_string(),
            )
        } else {
            completed(json!({ "answers": body["responses"] }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent);
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = crate::common::api::tokens_file(
        dir.path(),
        &[(
            "bob",
            "\"operate\"",
            "operator = { id = \"bob\" }\ngroups = [\"leads\"]",
        )],
    );
    let app = TestApp::spawn_with(AppOptions {
        engine: webhook_engine(&url, 1 << 20, None),
        tokens_file: Some(file),
        ..AppOptions::default()
    })
    .await;
    let bob = &tokens[0];
    let run = app.create_run(agent_plan(&url)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    let request = parked["pendingRequestId"].as_str().unwrap().to_owned();
    // Bob's credential names its operator.
    let answer = json!({ "runId": run, "requestId": request,
        "responses": [ { "requestId": request, "responseType": "approval", "approved": true } ] });
    let refused = app.post("/api/hitl/resume", bob, &answer).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "not_assignee"),
        "{refused:?}"
    );
    let count = |action: &'static str| {
        let pool = app.pool.clone();
        let run = run.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from run_audit_events where run_id = $1 and action = $2",
            )
            .bind(&run)
            .bind(action)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    crate::common::queue_support::wait_for_count(
        &app.pool,
        &format!(
            "select count(*) from run_audit_events where run_id = '{run}' and action = 'escalated'"
        ),
        1,
        std::time::Duration::from_secs(30),
    )
    .await;
    let shown = app
        .get(&format!("/api/hitl/requests/{request}"), OPERATOR)
        .await;
    assert_eq!(
        shown.body["assignees"],
        json!({ "users": ["alice"], "groups": ["leads"] }),
        "{shown:?}"
    );
    assert_eq!(shown.body["followUp"]["remindEverySeconds"], 1, "{shown:?}");
    crate::common::queue_support::wait_for_count(
        &app.pool,
        &format!(
            "select least(count(*), 1) from run_audit_events \
             where run_id = '{run}' and action = 'reminded'"
        ),
        1,
        std::time::Duration::from_secs(30),
    )
    .await;

    // The escalation made bob, a lead, an assignee.
    let accepted = app.post("/api/hitl/resume", bob, &answer).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    app.wait_for_run(&run, "completed").await;
    let reminded = count("reminded").await;
    // about time: two reminder intervals pass with the request settled.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    app.settle().await;
    assert_eq!(count("reminded").await, reminded, "reminders stopped");
    app.assert_audit_intact().await;
    app.stop().await;
}

#[tokio::test]
async fn an_agents_follow_up_fields_are_checked_naming_the_field() {
    let reason = refusal_of(json!({ "prompt": "?", "responseTypes": ["approval"],
        "escalation": [ { "afterSeconds": 0, "notify": ["x"] } ] }))
    .await;
    assert!(
        reason.starts_with("agent reply: request.escalation[0].afterSeconds"),
        "{reason}"
    );
}
