//! The console's live stream, search and filters, and run page over plain HTTP: the
//! stream under `/console/events` follows the session cookie (never a bearer token),
//! carries what `/api/events` carries and resumes after `Last-Event-ID`; the inbox
//! searches prompts and titles and filters by assignee and deadline from its address;
//! a run's page shows its status, nodes, requests, commands and audit, and retries a
//! failed run. The same in a real browser: `console_browser_live`. Real router on port
//! 0, real PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api_events::{Sse, SseClient};
use crate::common::api::{ADMIN, AppOptions, SUBMITTER, TestApp};
use crate::console::{Visitor, console_app, console_app_with};

/// The most a test waits for an event the service is about to send.
const EVENT: Duration = Duration::from_secs(10);

/// Reads `client` until an event named `name` for `request`, and returns it.
async fn until(client: &mut SseClient, name: &str, request: &str) -> Sse {
    loop {
        let event = client.next(EVENT).await.expect("the stream stays open");
        if event.event == name && event.data["requestId"] == request {
            return event;
        }
    }
}

async fn console_stream(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    last: Option<&str>,
) -> (u16, SseClient) {
    SseClient::connect_raw(&app.base, path, headers, last, None).await
}

#[tokio::test]
async fn the_console_stream_follows_the_session_cookie_and_resumes_after_the_last_event_id() {
    let (app, people) = console_app().await;
    let visitor = Visitor::signed_in(&app, &people.alice, None).await;
    let cookie = visitor.cookie.clone().unwrap();
    let with_cookie = [("Cookie", cookie.as_str())];

    let (status, mut live) = console_stream(&app, "/console/events", &with_cookie, None).await;
    assert_eq!(status, 200);
    let (run, request) = app.parked_run().await;
    let raised = until(&mut live, "request_raised", &request).await;
    assert_eq!(raised.data["runId"], run.as_str());
    let claim = app
        .post(
            "/api/hitl/claim",
            &people.bob,
            &json!({ "requestId": request }),
        )
        .await;
    assert_eq!(claim.status, 200, "{claim:?}");
    let claimed = until(&mut live, "request_claimed", &request).await;
    assert_eq!(claimed.data["operatorId"], "bob");
    drop(live);

    // After a drop, the browser comes back with the last id it saw: what followed it is
    // replayed, the same events with the same ids, and nothing before it.
    let last = raised.id.clone().unwrap();
    let (status, mut again) =
        console_stream(&app, "/console/events", &with_cookie, Some(&last)).await;
    assert_eq!(status, 200);
    let first = again.next(EVENT).await.unwrap();
    assert!(
        first.id.as_ref().unwrap().parse::<i64>().unwrap() > last.parse::<i64>().unwrap(),
        "{first:?}"
    );
    let replayed = if first.event == "request_claimed" {
        first
    } else {
        until(&mut again, "request_claimed", &request).await
    };
    assert_eq!(replayed, claimed);

    // One run's events only, with `run`.
    let (other_run, other_request) = app.parked_run().await;
    let path = format!("/console/events?run={run}");
    let (status, mut one) = console_stream(&app, &path, &with_cookie, Some(&last)).await;
    assert_eq!(status, 200);
    let release = app
        .post(
            "/api/hitl/unclaim",
            &people.bob,
            &json!({ "requestId": request }),
        )
        .await;
    assert_eq!(release.status, 200, "{release:?}");
    loop {
        let event = one.next(EVENT).await.unwrap();
        assert_eq!(event.data["runId"], run.as_str(), "only {run}: {event:?}");
        assert_ne!(event.data["requestId"], other_request.as_str());
        if event.event == "request_released" {
            break;
        }
    }
    assert_ne!(other_run, run);
    app.stop().await;
}

#[tokio::test]
async fn the_console_stream_refuses_a_bearer_token_no_cookie_and_malformed_input() {
    let (app, people) = console_app().await;
    let bearer = format!("Bearer {}", people.alice);
    for headers in [vec![], vec![("Authorization", bearer.as_str())]] {
        let (status, _) = console_stream(&app, "/console/events", &headers, None).await;
        assert_eq!(status, 401, "{headers:?}");
    }
    let visitor = Visitor::signed_in(&app, &people.alice, None).await;
    let cookie = visitor.cookie.clone().unwrap();
    let mut client = Visitor::new(&app);
    client.cookie = Some(cookie);
    for (path, last, field) in [
        ("/console/events", Some("12x"), "Last-Event-ID"),
        (
            "/console/events",
            Some("1234567890123456789"),
            "Last-Event-ID",
        ),
        ("/console/events?run=not%20a%20run", None, "run"),
        ("/console/events?what=1", None, "query"),
    ] {
        let mut headers = vec![("cookie", client.cookie.clone().unwrap())];
        if let Some(l) = last {
            headers.push(("last-event-id", l.to_owned()));
        }
        let page = client.get_with(path, &headers).await;
        assert_eq!(page.status, 422, "{path} {last:?}: {page:?}");
        assert!(page.body.starts_with(field), "{path}: {}", page.body);
    }
    app.stop().await;
}

/// Creates a run of one `hitl` node asking `prompt` in a brief titled `title`, with an
/// optional item title, deadline and assignees, and waits until it is parked; its request.
pub(crate) async fn asking(app: &TestApp, prompt: &str, title: &str, extra: Value) -> String {
    let mut node = json!({ "id": "ask", "type": "hitl", "prompt": prompt,
                           "responseTypes": ["approval", "rejection"] });
    if let Value::Object(more) = extra {
        for (k, v) in more {
            node[k] = v;
        }
    }
    let created = app
        .post(
            "/api/runs",
            SUBMITTER,
            &json!({ "brief": { "title": title }, "plan": { "nodes": [ node ] } }),
        )
        .await;
    assert_eq!(created.status, 202, "{created:?}");
    let run = created.body["runId"].as_str().unwrap().to_owned();
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    parked["pendingRequestId"].as_str().unwrap().to_owned()
}

/// The request ids an inbox page lists, in order.
pub(crate) fn listed(body: &str) -> Vec<String> {
    body.split("data-request=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_inbox_searches_prompts_and_titles_and_filters_by_assignee_and_deadline() {
    let (app, people) = console_app().await;
    let mail = asking(
        &app,
        "Send the 100% off mail?",
        "Spring newsletter",
        json!({}),
    )
    .await;
    let payout = asking(
        &app,
        "Approve the payout?",
        "Quarterly payouts",
        json!({ "assignees": { "users": ["alice"] }, "timeoutSeconds": 1800 }),
    )
    .await;
    let post = asking(
        &app,
        "Publish it?",
        "Blog",
        json!({ "timeoutSeconds": 86_400 }),
    )
    .await;
    let mut alice = Visitor::signed_in(&app, &people.alice, None).await;
    for (query, expected) in [
        ("", vec![&mail, &payout, &post]),
        ("?q=payout", vec![&payout]),
        ("?q=NEWSLETTER", vec![&mail]),
        ("?q=100%25", vec![&mail]),
        ("?q=%25", vec![&mail]),
        ("?q=_", vec![]),
        ("?assigned=me", vec![&payout]),
        ("?expiring=1h", vec![&payout]),
        ("?expiring=2d", vec![&payout, &post]),
        ("?expiring=2d&q=publish", vec![&post]),
        ("?node=ask&q=mail", vec![&mail]),
    ] {
        let page = alice.get(&format!("/console/{query}")).await;
        assert_eq!(page.status, 200, "{query}: {}", page.body);
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(listed(&page.body), expected, "{query}");
    }
    // The filters are kept in the form, and in the next page's address.
    let page = alice
        .get("/console/?q=payout&assigned=me&limit=1&expiring=4h")
        .await;
    assert!(
        page.body
            .contains(r#"name="q" type="search" value="payout""#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"value="me" checked"#), "{}", page.body);
    let first = alice.get("/console/?q=e&limit=1").await;
    let next = first.body.split("rel=\"next\"").next().unwrap();
    let href = next
        .rsplit("href=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(href.contains("q=e") && href.contains("cursor="), "{href}");

    // Bob is not assigned anything.
    let mut bob = Visitor::signed_in(&app, &people.bob, None).await;
    assert!(listed(&bob.get("/console/?assigned=me").await.body).is_empty());
    // Nor is a shared token naming alice at sign-in: the service would not let it answer
    // as her assignee, so it is not listed as hers.
    let mut shared = Visitor::signed_in(&app, ADMIN, Some(("alice", "Alice"))).await;
    assert!(listed(&shared.get("/console/?assigned=me").await.body).is_empty());
    assert_eq!(
        listed(&shared.get("/console/?q=payout").await.body),
        vec![payout.clone()]
    );

    // Bad input: 422 naming the field, nothing listed.
    let long = format!("?q={}", "x".repeat(257));
    for (query, field) in [
        ("?expiring=soon", "expiring"),
        ("?expiring=0h", "expiring"),
        ("?expiring=31d", "expiring"),
        ("?assigned=bob", "assigned"),
        (long.as_str(), "q"),
    ] {
        let page = alice.get(&format!("/console/{query}")).await;
        assert_eq!(page.status, 422, "{query}");
        assert!(
            page.body.contains(&format!("{field}:")),
            "{query}: {}",
            page.body
        );
        assert!(listed(&page.body).is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_run_page_shows_status_nodes_requests_commands_and_audit_and_finds_runs_by_thread() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    let mut alice = Visitor::signed_in(&app, &people.alice, None).await;
    let page = alice.get(&format!("/console/runs/{run}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for expected in [
        "<strong class=\"run-status\">awaiting_hitl</strong>",
        "<code>prepare</code>",
        "<code>publish</code>",
        &format!("href=\"/console/requests/{request}\""),
        "No operator command was sent to this run.",
        "<strong class=\"action\">hitl_requested</strong>",
    ] {
        assert!(page.body.contains(expected), "{expected}: {}", page.body);
    }
    assert!(
        !page
            .body
            .contains("form method=\"post\" action=\"/console/runs/"),
        "not failed"
    );
    // Claim from the run page, then the run page offers the release.
    let csrf = page.field("csrf");
    let run_page = format!("/console/runs/{run}");
    let back = [("csrf", csrf.as_str()), ("back", "run")];
    let claimed = alice
        .post(&format!("/console/requests/{request}/claim"), &back)
        .await;
    assert_eq!(
        (claimed.status, claimed.header("location")),
        (303, run_page.as_str())
    );
    let page = alice.get(&run_page).await;
    assert!(
        page.body.contains("claimed by Alice Ops (alice)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Release my claim"), "{}", page.body);
    let released = alice
        .post(&format!("/console/requests/{request}/unclaim"), &back)
        .await;
    assert_eq!(
        (released.status, released.header("location")),
        (303, run_page.as_str())
    );
    let page = alice.get(&run_page).await;
    assert!(!page.body.contains("claimed by"), "{}", page.body);

    // By thread id, or by run id, from the header's form.
    let snapshot = app.get(&format!("/api/runs/{run}"), ADMIN).await;
    let thread = snapshot.body["threadId"].as_str().unwrap();
    for id in [thread, run.as_str()] {
        let found = alice.get(&format!("/console/runs?id={id}")).await;
        assert_eq!(
            (found.status, found.header("location")),
            (303, format!("/console/runs/{run}").as_str())
        );
    }
    let none = alice.get("/console/runs?id=no-such-thread").await;
    assert_eq!(none.status, 404);
    let blank = alice.get("/console/runs?id=").await;
    assert_eq!(blank.status, 422);
    assert!(blank.body.contains("id:"), "{}", blank.body);
    let unknown = alice.get("/console/runs/run_nonesuch").await;
    assert_eq!(unknown.status, 404);
    app.stop().await;
}

/// An agent that fails for good on its first call (400) and completes on the next.
pub(crate) fn fails_once() -> std::sync::Arc<crate::agent_faults::RawAgent> {
    crate::agent_faults::raw_agent(|_, seen| match seen {
        0 => crate::agent_faults::reply(400, "{}".to_owned()),
        _ => crate::agent_faults::completed(json!({ "sent": true })),
    })
}

/// An app whose one-node plan calls `agent`, and a run of it that failed.
pub(crate) async fn failed_run(
    agent: std::sync::Arc<crate::agent_faults::RawAgent>,
) -> (TestApp, crate::console::People, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = crate::agent_faults::serve(listener, agent);
    let (app, people) = console_app_with(AppOptions {
        engine: crate::agent_faults::webhook_engine(&url, 1 << 20, None),
        ..AppOptions::default()
    })
    .await;
    let plan = json!({ "nodes": [ { "id": "mail", "type": "task",
        "capability": "agent.webhook", "config": { "url": url } } ] });
    let run = app.create_run(plan).await;
    app.wait_for_run(&run, "failed").await;
    (app, people, run)
}

#[tokio::test]
async fn a_failed_run_is_retried_from_its_page_and_completes() {
    let (app, people, run) = failed_run(fails_once()).await;
    let mut alice = Visitor::signed_in(&app, &people.alice, None).await;
    let page = alice.get(&format!("/console/runs/{run}")).await;
    assert!(
        page.body
            .contains("<strong class=\"run-status\">failed</strong>"),
        "{}",
        page.body
    );
    let (csrf, key) = (page.field("csrf"), page.field("key"));
    let path = format!("/console/runs/{run}/retry");
    // Without the session's token nothing is sent.
    let forged = alice.post(&path, &[("csrf", "nope"), ("key", &key)]).await;
    assert_eq!(forged.status, 403);
    let long = "n".repeat(4001);
    let too_long = alice
        .post(&path, &[("csrf", &csrf), ("key", &key), ("note", &long)])
        .await;
    assert_eq!(too_long.status, 422);
    assert!(too_long.body.contains("note:"), "{}", too_long.body);
    let sent = alice
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("key", &key),
                ("note", "the agent is back"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{sent:?}");
    let outcome = alice.get(sent.header("location")).await;
    assert!(outcome.body.contains("Run retried"), "{}", outcome.body);
    let done = app.wait_for_run(&run, "completed").await;
    assert_eq!(done["executionContext"]["mail"]["sent"], true, "{done}");
    let page = alice.get(&format!("/console/runs/{run}")).await;
    assert!(
        page.body
            .contains("<strong class=\"run-status\">completed</strong>")
    );
    assert!(
        page.body.contains(
            ">retry</a> · <span class=\"command-status\">succeeded</span> by Alice Ops (alice)"
        ),
        "{}",
        page.body
    );
    // Retrying a completed run is refused, naming why.
    let again = alice
        .post(&path, &[("csrf", &csrf), ("key", "console-another-key")])
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let retries: i64 =
        sqlx::query_scalar("select count(*) from hitl_commands where kind = 'retry'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(retries, 1);
    app.assert_audit_intact().await;
    app.stop().await;
}
