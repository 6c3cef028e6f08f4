//! Who may answer: a request that names assignees (operators, groups) is answered or
//! removed only by them — or by a credential with `supervise` — and the pending list
//! filters `assignee=me` and `group=…`. Real API, real PostgreSQL, tokens from a file.

use hitl_orchestrator::identity::new_token;
use serde_json::{Value, json};

use crate::common::api::{AppOptions, OPERATOR, TestApp, approval};

struct Who {
    alice: String,
    bob: String,
    boss: String,
    bot: String,
}

fn tokens_file(dir: &std::path::Path) -> (std::path::PathBuf, Who) {
    let mut text = String::new();
    let mut add = |name: &str, scopes: &str, rest: &str| {
        let (token, hash) = new_token().unwrap();
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n{rest}\n"
        ));
        token
    };
    let who = Who {
        alice: add(
            "alice",
            "\"operate\"",
            "operator = { id = \"alice\" }\ngroups = [\"payments\"]",
        ),
        bob: add("bob", "\"operate\"", "operator = { id = \"bob\" }"),
        boss: add(
            "boss",
            "\"operate\", \"supervise\"",
            "operator = { id = \"boss\" }",
        ),
        bot: add("bot", "\"operate\"", "actAs = true"),
    };
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    (path, who)
}

fn assigned_plan(assignees: Value) -> Value {
    let mut node = json!({ "id": "review", "type": "hitl", "prompt": "Approve the payout?",
                           "responseTypes": ["approval", "rejection"] });
    if !assignees.is_null() {
        node["assignees"] = assignees;
    }
    json!({ "nodes": [ node ] })
}

async fn parked(app: &TestApp, assignees: Value) -> (String, String) {
    let run = app.create_run(assigned_plan(assignees)).await;
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    (run, parked["pendingRequestId"].as_str().unwrap().to_owned())
}

async fn pending_runs(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let page = app.get(&format!("/api/hitl/pending{query}"), token).await;
    assert_eq!(page.status, 200, "{page:?}");
    let mut runs: Vec<String> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runId"].as_str().unwrap().to_owned())
        .collect();
    runs.sort();
    runs
}

fn without_operator(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("operator");
    body
}

#[tokio::test]
async fn only_assignees_or_a_supervisor_answer_and_the_inbox_filters_by_assignee_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let (file, who) = tokens_file(dir.path());
    let app = TestApp::spawn_with(AppOptions {
        tokens_file: Some(file),
        ..AppOptions::default()
    })
    .await;
    let (for_bob, bob_request) = parked(&app, json!({ "users": ["bob"] })).await;
    let (for_payments, payments_request) =
        parked(&app, json!({ "users": ["carol"], "groups": ["payments"] })).await;
    let (for_anyone, _) = parked(&app, Value::Null).await;
    let listed = app.get("/api/hitl/pending", OPERATOR).await;
    let assignees: Vec<Value> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["assignees"].clone())
        .collect();
    assert!(
        assignees.contains(&json!({ "users": ["bob"], "groups": [] })),
        "{assignees:?}"
    );
    assert!(assignees.contains(&Value::Null));

    let mut all = vec![for_bob.clone(), for_payments.clone(), for_anyone.clone()];
    all.sort();
    assert_eq!(pending_runs(&app, OPERATOR, "").await, all);
    assert_eq!(
        pending_runs(&app, &who.alice, "?assignee=me").await,
        vec![for_payments.clone()]
    );
    assert_eq!(
        pending_runs(&app, &who.bob, "?assignee=me").await,
        vec![for_bob.clone()]
    );
    assert_eq!(
        pending_runs(&app, OPERATOR, "?group=payments").await,
        vec![for_payments.clone()]
    );
    assert_eq!(
        pending_runs(&app, OPERATOR, "?assignee=me").await,
        Vec::<String>::new()
    );
    let bad = app.get("/api/hitl/pending?assignee=bob", OPERATOR).await;
    assert_eq!((bad.status, bad.field()), (422, "assignee"));

    // Not an assignee: refused, nothing changes — bound, act-as, and for a remove too.
    let before = app.dump().await;
    for (token, body) in [
        (
            who.bob.clone(),
            without_operator(approval(&for_payments, &payments_request, "bob")),
        ),
        (
            who.alice.clone(),
            without_operator(approval(&for_bob, &bob_request, "alice")),
        ),
        (who.bot.clone(), approval(&for_bob, &bob_request, "bob")),
        (OPERATOR.to_owned(), approval(&for_bob, &bob_request, "bob")),
    ] {
        let refused = app.post("/api/hitl/resume", &token, &body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "not_assignee"),
            "{refused:?}"
        );
    }
    let remove = json!({ "runId": for_bob, "reason": "not mine", "operator": { "id": "eve" } });
    let refused = app.post("/api/hitl/remove", &who.bot, &remove).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "not_assignee"),
        "{refused:?}"
    );
    assert_eq!(
        refused.body["error"]["details"]["requestId"],
        bob_request.as_str()
    );
    assert_eq!(app.dump().await, before, "refusals change nothing");

    // A group member, and a supervisor, may.
    let ok = app
        .post(
            "/api/hitl/resume",
            &who.alice,
            &without_operator(approval(&for_payments, &payments_request, "alice")),
        )
        .await;
    assert_eq!(ok.status, 202, "{ok:?}");
    let ok = app
        .post(
            "/api/hitl/resume",
            &who.boss,
            &without_operator(approval(&for_bob, &bob_request, "boss")),
        )
        .await;
    assert_eq!(
        ok.status, 202,
        "a supervisor overrides the assignment: {ok:?}"
    );
    let done = app.wait_for_run(&for_bob, "completed").await;
    let resume = crate::common::api::audit_event(&done, "resume");
    assert_eq!(
        (
            resume["operator"]["id"].as_str(),
            resume["principal"].as_str()
        ),
        (Some("boss"), Some("boss"))
    );
    app.wait_for_run(&for_payments, "completed").await;
    app.stop().await;
}

#[tokio::test]
async fn assignees_in_a_plan_are_checked_naming_the_field() {
    let app = TestApp::spawn().await;
    for (assignees, field) in [
        (json!({}), "plan.nodes[0].assignees"),
        (json!({ "users": [] }), "plan.nodes[0].assignees"),
        (
            json!({ "users": ["  "] }),
            "plan.nodes[0].assignees.users[0]",
        ),
        (json!({ "teams": ["x"] }), "plan.nodes[0].assignees.teams"),
        (json!(["alice"]), "plan.nodes[0].assignees"),
    ] {
        let body = json!({ "brief": { "title": "t", "content": {} },
                           "plan": assigned_plan(assignees.clone()) });
        let refused = app
            .post("/api/runs", crate::common::api::SUBMITTER, &body)
            .await;
        assert_eq!(
            (refused.status, refused.field()),
            (422, field),
            "{assignees}: {refused:?}"
        );
    }
    app.stop().await;
}
