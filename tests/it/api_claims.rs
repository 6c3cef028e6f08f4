//! Claims: a principal claims a pending request for a lease; meanwhile another
//! principal's resume, remove or claim is 409 `claimed` naming the holder, unless it says
//! `force: true` with the `supervise` scope (audited `claim_broken`). A lease ends by time
//! alone. Real API, real PostgreSQL, tokens from a file.

use serde_json::{Value, json};

use crate::api_events::{SseClient, names};
use crate::common::api::{AppOptions, OPERATOR, TestApp, approval, audit_event, tokens_file};

struct Who {
    alice: String,
    bob: String,
    boss: String,
}

async fn app() -> (TestApp, Who, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = tokens_file(
        dir.path(),
        &[
            ("alice", "\"operate\"", "operator = { id = \"alice\" }"),
            ("bob", "\"operate\"", "operator = { id = \"bob\" }"),
            (
                "boss",
                "\"operate\", \"supervise\"",
                "operator = { id = \"boss\" }",
            ),
        ],
    );
    let app = TestApp::spawn_with(AppOptions {
        tokens_file: Some(file),
        ..AppOptions::default()
    })
    .await;
    let [alice, bob, boss] = <[String; 3]>::try_from(tokens).unwrap();
    (app, Who { alice, bob, boss }, dir)
}

fn claim(request: &str) -> Value {
    json!({ "requestId": request })
}

fn bound(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("operator");
    body
}

fn holder(reply: &crate::common::api::Reply) -> &str {
    reply.body["error"]["details"]["holder"]["operator"]["id"]
        .as_str()
        .unwrap_or("")
}

async fn pending_claim(app: &TestApp, request: &str) -> Value {
    let page = app.get("/api/hitl/pending", OPERATOR).await;
    page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["pendingRequestId"] == request)
        .map(|i| i["claimedBy"].clone())
        .unwrap()
}

#[tokio::test]
async fn a_claim_holds_off_everyone_else_until_released_or_its_lease_ends() {
    let (app, who, _dir) = app().await;
    let (run, request) = app.parked_run().await;
    let (_, mut sse) = SseClient::connect(&app.base, "/api/events", OPERATOR, None).await;

    let claimed = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(claimed.status, 200, "{claimed:?}");
    assert_eq!(claimed.body["claimedBy"]["principal"], "alice");
    assert_eq!(claimed.body["claimedBy"]["operator"]["id"], "alice");
    assert_eq!(claimed.body["runId"], run.as_str());
    let expires =
        chrono::DateTime::parse_from_rfc3339(claimed.body["claimExpiresAt"].as_str().unwrap())
            .unwrap();
    let lease = expires.signed_duration_since(chrono::Utc::now());
    assert!(
        (890..=900).contains(&lease.num_seconds()),
        "the default lease is 900 s: {lease}"
    );
    assert_eq!(
        pending_claim(&app, &request).await["operator"]["id"],
        "alice"
    );
    let shown = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(
        shown.body["hitlRequests"][0]["claimedBy"]["principal"],
        "alice"
    );

    // Another principal: refused at once, naming the holder, and nothing changes.
    let before = app.dump().await;
    let resume = bound(approval(&run, &request, "bob"));
    let remove = json!({ "runId": run, "reason": "mine now" });
    for (path, body) in [
        ("/api/hitl/resume", resume.clone()),
        ("/api/hitl/remove", remove.clone()),
        ("/api/hitl/claim", claim(&request)),
        ("/api/hitl/unclaim", claim(&request)),
    ] {
        let refused = app.post(path, &who.bob, &body).await;
        assert_eq!(
            (refused.status, refused.code(), holder(&refused)),
            (409, "claimed", "alice"),
            "{path}: {refused:?}"
        );
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("claimed by operator alice")
        );
    }
    // `force` needs supervise.
    for (path, mut body) in [
        ("/api/hitl/resume", resume.clone()),
        ("/api/hitl/remove", remove.clone()),
        ("/api/hitl/claim", claim(&request)),
        ("/api/hitl/unclaim", claim(&request)),
    ] {
        body["force"] = json!(true);
        let refused = app.post(path, &who.bob, &body).await;
        assert_eq!(
            (refused.status, refused.code(), refused.field()),
            (403, "supervise_required", "force"),
            "{path}: {refused:?}"
        );
    }
    assert_eq!(app.dump().await, before, "refusals change nothing");

    // The holder renews and releases; a release of nothing is a no-op.
    let renewed = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let released = app
        .post("/api/hitl/unclaim", &who.alice, &claim(&request))
        .await;
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(released.body["claimedBy"], Value::Null);
    assert_eq!(pending_claim(&app, &request).await, Value::Null);
    let again = app
        .post("/api/hitl/unclaim", &who.bob, &claim(&request))
        .await;
    assert_eq!(again.status, 200, "{again:?}");

    // A one-second lease: once it has passed, the claim is gone without anyone acting.
    let short = app
        .post(
            "/api/hitl/claim",
            &who.bob,
            &json!({ "requestId": request, "leaseSeconds": 1 }),
        )
        .await;
    assert_eq!(short.status, 200, "{short:?}");
    let refused = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!((refused.status, holder(&refused)), (409, "bob"));
    // This test is about time: the lease is one second long.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(pending_claim(&app, &request).await, Value::Null);
    let taken = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(taken.status, 200, "an ended lease is no claim: {taken:?}");

    // A supervisor takes it over, then answers as its holder.
    let forced = app
        .post(
            "/api/hitl/claim",
            &who.boss,
            &json!({ "requestId": request, "force": true }),
        )
        .await;
    assert_eq!(forced.status, 200, "{forced:?}");
    assert_eq!(forced.body["claimedBy"]["operator"]["id"], "boss");
    let refused = app
        .post(
            "/api/hitl/resume",
            &who.alice,
            &bound(approval(&run, &request, "alice")),
        )
        .await;
    assert_eq!((refused.status, holder(&refused)), (409, "boss"));
    let resumed = app
        .post(
            "/api/hitl/resume",
            &who.boss,
            &bound(approval(&run, &request, "boss")),
        )
        .await;
    assert_eq!(resumed.status, 202, "{resumed:?}");
    let done = app.wait_for_run(&run, "completed").await;

    // Every claim, release and override is in the audit with principal and operator.
    let trail: Vec<(String, String, String)> = done["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e["action"].as_str(),
                Some("request_claimed" | "request_released" | "claim_broken")
            )
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["principal"].as_str().unwrap().to_owned(),
                e["operator"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let t = |a: &str, p: &str| (a.to_owned(), p.to_owned(), p.to_owned());
    assert_eq!(
        trail,
        vec![
            t("request_claimed", "alice"),
            t("request_claimed", "alice"),
            t("request_released", "alice"),
            t("request_claimed", "bob"),
            t("request_claimed", "alice"),
            t("claim_broken", "boss"),
            t("request_claimed", "boss"),
        ]
    );
    let broken = audit_event(&done, "claim_broken");
    assert_eq!(broken["details"]["holder"]["operator"]["id"], "alice");
    assert_eq!(broken["fromStatus"], "awaiting_hitl");
    assert_eq!(broken["toStatus"], "awaiting_hitl");

    // And on the live stream.
    let streamed = sse.until(&run, "run_completed").await;
    let streamed: Vec<&str> = names(&streamed)
        .into_iter()
        .filter(|n| n.contains("claim") || n.contains("release"))
        .collect();
    assert_eq!(
        streamed,
        vec![
            "request_claimed",
            "request_claimed",
            "request_released",
            "request_claimed",
            "request_claimed",
            "claim_broken",
            "request_claimed"
        ]
    );
    app.assert_audit_intact().await;
    app.stop().await;
}

#[tokio::test]
async fn a_supervisor_forces_a_resume_or_remove_past_a_claim_and_the_worker_checks_claims_too() {
    let (mut app, who, _dir) = app().await;
    // Resume with force: the claim is broken, then the resume applies.
    let (run, request) = app.parked_run().await;
    let ok = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let mut body = bound(approval(&run, &request, "boss"));
    body["force"] = json!(true);
    let forced = app.post("/api/hitl/resume", &who.boss, &body).await;
    assert_eq!(forced.status, 202, "{forced:?}");
    let done = app.wait_for_run(&run, "completed").await;
    let broken = audit_event(&done, "claim_broken");
    assert_eq!(
        (
            broken["principal"].as_str(),
            broken["details"]["holder"]["principal"].as_str(),
            broken["commandId"].is_string()
        ),
        (Some("boss"), Some("alice"), true)
    );

    // Remove with force.
    let (run, request) = app.parked_run().await;
    let ok = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let forced = app
        .post(
            "/api/hitl/remove",
            &who.boss,
            &json!({ "runId": run, "reason": "stale", "force": true }),
        )
        .await;
    assert_eq!(forced.status, 202, "{forced:?}");
    let done = app.wait_for_run(&run, "cancelled").await;
    audit_event(&done, "claim_broken");

    // A claim taken after a resume was accepted but before a worker applied it: the
    // worker refuses the resume as the API would have.
    let (run, request) = app.parked_run().await;
    app.stop_workers().await;
    let accepted = app
        .post(
            "/api/hitl/resume",
            &who.bob,
            &bound(approval(&run, &request, "bob")),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let ok = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    app.settle().await;
    let command = app
        .wait_for_command(accepted.body["commandId"].as_str().unwrap())
        .await;
    assert_eq!(command["status"], "rejected", "{command}");
    assert_eq!(command["outcome"]["reason"], "claimed");
    assert_eq!(command["outcome"]["holder"]["operator"]["id"], "alice");
    let shown = app.get(&format!("/api/runs/{run}"), OPERATOR).await;
    assert_eq!(shown.body["status"], "awaiting_hitl");
    app.stop().await;
}

#[tokio::test]
async fn claims_are_checked_naming_the_field_and_refused_once_the_request_is_settled() {
    let (app, who, _dir) = app().await;
    let (run, request) = app.parked_run().await;
    for (body, field) in [
        (json!({}), "requestId"),
        (json!({ "requestId": "run_x" }), "requestId"),
        (
            json!({ "requestId": request, "leaseSeconds": 0 }),
            "leaseSeconds",
        ),
        (
            json!({ "requestId": request, "leaseSeconds": 86_401 }),
            "leaseSeconds",
        ),
        (
            json!({ "requestId": request, "leaseSeconds": -1 }),
            "leaseSeconds",
        ),
        (json!({ "requestId": request, "until": 5 }), "until"),
    ] {
        let refused = app.post("/api/hitl/claim", &who.alice, &body).await;
        assert_eq!(
            (refused.status, refused.field()),
            (422, field),
            "{body}: {refused:?}"
        );
    }
    // An act-as credential names the operator; a bound one may not name another.
    let missing = app
        .post("/api/hitl/claim", OPERATOR, &claim(&request))
        .await;
    assert_eq!((missing.status, missing.field()), (422, "operator"));
    let mismatch = app
        .post(
            "/api/hitl/claim",
            &who.alice,
            &json!({ "requestId": request, "operator": { "id": "bob" } }),
        )
        .await;
    assert_eq!(
        (mismatch.status, mismatch.code()),
        (403, "operator_mismatch")
    );
    let unknown = app
        .post(
            "/api/hitl/claim",
            &who.alice,
            &claim(hitl_orchestrator::domain::RequestId::new().as_str()),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "request_not_found"));

    let resumed = app
        .post(
            "/api/hitl/resume",
            &who.bob,
            &bound(approval(&run, &request, "bob")),
        )
        .await;
    assert_eq!(resumed.status, 202);
    app.wait_for_run(&run, "completed").await;
    let late = app
        .post("/api/hitl/claim", &who.alice, &claim(&request))
        .await;
    assert_eq!((late.status, late.code()), (409, "conflict"), "{late:?}");
    assert_eq!(
        late.body["error"]["details"]["winner"]["operator"]["id"],
        "bob"
    );
    app.stop().await;
}
