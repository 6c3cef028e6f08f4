//! The live console in a real browser (Debian's Chromium over WebDriver, as
//! `console_browser`, whose browser and helpers these tests share, one at a time): a
//! request appears in an open inbox and leaves it without a reload; a request is approved
//! by keys alone, and a key typed in a field stays in the field; a request's page says
//! who else claimed or answered it; a shared filter address
//! opens the same list; a failed run is retried from its page.

use std::time::Instant;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use crate::console::{console_app, three_parked};
use crate::console_browser::{
    PAGE, click_through, goto, open, run_status, sign_in, text_of, wait_for, with_browser,
};
use crate::console_live::{asking, failed_run, fails_once};

const ENTER: char = '\u{E007}';
const ESCAPE: char = '\u{E00C}';

/// Presses and releases `key` wherever the focus is.
async fn press(c: &Client, key: char) {
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    c.perform_actions(keys).await.unwrap();
}

/// Presses `key`, which leads to another page, and waits until it has loaded.
async fn press_through(c: &Client, key: char) {
    c.execute("window.__oldPage = true;", vec![]).await.unwrap();
    press(c, key).await;
    until(
        c,
        "return window.__oldPage !== true && document.readyState === 'complete';",
        "a new page",
    )
    .await;
}

/// Waits until `script` returns true (the page changes on its own: the live stream).
async fn until(c: &Client, script: &str, what: &str) {
    let started = Instant::now();
    loop {
        // While a page changes, the script may fail: look again.
        if matches!(c.execute(script, vec![]).await, Ok(Value::Bool(true))) {
            return;
        }
        assert!(started.elapsed() < PAGE, "never: {what}");
        crate::common::poll_pause().await;
    }
}

async fn listed(c: &Client) -> Vec<String> {
    let rows = c.find_all(Locator::Css("tr.request")).await.unwrap();
    let mut ids = Vec::new();
    for row in rows {
        ids.push(row.attr("data-request").await.unwrap().unwrap());
    }
    ids
}

#[tokio::test]
async fn a_request_made_through_the_api_appears_in_an_open_inbox_and_leaves_when_another_operator_answers()
 {
    let (app, people) = console_app().await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        assert!(
            text_of(&c, ".empty")
                .await
                .starts_with("Nothing is waiting")
        );
        until(
            &c,
            "return document.body.dataset.live === 'open';",
            "the stream opened",
        )
        .await;
        // Marks this document: a reload would lose the mark.
        c.execute("window.__same = true;", vec![]).await.unwrap();

        let asked = Instant::now();
        let (run, request) = app.parked_run().await;
        let row = format!("tr.request[data-request='{request}']");
        until(
            &c,
            &format!("return document.querySelector(\"{row}\") !== null;"),
            "the new row",
        )
        .await;
        eprintln!(
            "the new request appeared {:?} after it was asked for",
            asked.elapsed()
        );
        assert_eq!(
            text_of(&c, &format!("{row} a.prompt")).await,
            "Approve the draft?"
        );

        let bobs = app
            .post_as(
                "/api/hitl/resume",
                &people.bob,
                &json!({ "runId": run, "requestId": request, "responses": [
                    { "responseType": "approval", "approved": true } ] }),
                &[("prefer", "wait=10")],
            )
            .await;
        assert_eq!(bobs.status, 200, "{bobs:?}");
        until(
            &c,
            &format!("return document.querySelector(\"{row}\") === null;"),
            "the row left",
        )
        .await;
        let same = c
            .execute("return window.__same === true;", vec![])
            .await
            .unwrap();
        assert_eq!(same, Value::Bool(true), "no reload");
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_page_says_when_another_operator_claimed_and_answered_it() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        open(&c, &app, &request).await;
        until(
            &c,
            "return document.body.dataset.live === 'open';",
            "the stream opened",
        )
        .await;
        let notice = "const n = document.getElementById('live-notice'); \
                      return n.hidden ? null : [n.dataset.event, n.textContent];";
        assert_eq!(c.execute(notice, vec![]).await.unwrap(), Value::Null);

        let claim = app
            .post(
                "/api/hitl/claim",
                &people.bob,
                &json!({ "requestId": request }),
            )
            .await;
        assert_eq!(claim.status, 200, "{claim:?}");
        until(
            &c,
            "return document.getElementById('live-notice').dataset.event === 'request_claimed';",
            "the claim shown",
        )
        .await;
        let shown = c.execute(notice, vec![]).await.unwrap();
        assert!(
            shown[1]
                .as_str()
                .unwrap()
                .starts_with("bob claimed this request at "),
            "{shown}"
        );

        let bobs = app
            .post_as(
                "/api/hitl/resume",
                &people.bob,
                &json!({ "runId": run, "requestId": request, "responses": [
                    { "responseType": "approval", "approved": true } ] }),
                &[("prefer", "wait=10")],
            )
            .await;
        assert_eq!(bobs.status, 200, "{bobs:?}");
        until(
            &c,
            "return document.getElementById('live-notice').dataset.event === 'resumed';",
            "the answer shown",
        )
        .await;
        let shown = c.execute(notice, vec![]).await.unwrap();
        assert!(
            shown[1]
                .as_str()
                .unwrap()
                .starts_with("bob answered this request at "),
            "{shown}"
        );
        // Its link reloads the page, which now says the request is settled.
        click_through(&c, "#live-notice a").await;
        assert!(text_of(&c, ".notice").await.contains("no longer pending"));
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_is_approved_by_keys_alone_and_a_key_typed_in_the_reason_stays_there() {
    let (app, people) = console_app().await;
    let parked = three_parked(&app).await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        wait_for(&c, "table.inbox").await;
        // `?` lists the keys; Escape closes the list.
        press(&c, '?').await;
        until(&c, "return document.getElementById('keys').open;", "the keys listed").await;
        press(&c, ESCAPE).await;
        until(&c, "return !document.getElementById('keys').open;", "the list closed").await;
        // `/` goes to the search; a `j` typed there is text.
        press(&c, '/').await;
        press(&c, 'j').await;
        let search = c.execute("return [document.activeElement.id, document.activeElement.value];", vec![]).await.unwrap();
        assert_eq!(search, json!(["f-q", "j"]));
        press(&c, ESCAPE).await;
        c.execute("document.getElementById('f-q').value = '';", vec![]).await.unwrap();

        // j, j, k: the first row; Enter opens it.
        press(&c, 'j').await;
        press(&c, 'j').await;
        press(&c, 'k').await;
        let selected = c.execute("return document.querySelector('tr.request.selected').dataset.request;", vec![]).await.unwrap();
        assert_eq!(selected, json!(parked[0].1));
        press_through(&c, ENTER).await;
        wait_for(&c, "form.answer").await;
        assert_eq!(c.current_url().await.unwrap().path(), format!("/console/requests/{}", parked[0].1));

        // c claims it.
        press_through(&c, 'c').await;
        assert!(text_of(&c, "dl.facts").await.contains("Alice Ops (alice) for"));

        // r chooses reject and goes to the reason: an `a` typed there is text, not an approval.
        press(&c, 'r').await;
        let state = c.execute(
            "return [document.activeElement.id, document.querySelector(\"input[name='decision-0'][value=reject]\").checked];",
            vec![]).await.unwrap();
        assert_eq!(state, json!(["text-0", true]));
        press(&c, 'a').await;
        let still = c.execute("return [document.activeElement.value, location.pathname, \
            document.querySelector(\"input[name='decision-0'][value=approve]\").checked];", vec![]).await.unwrap();
        assert_eq!(still, json!(["a", format!("/console/requests/{}", parked[0].1), false]));
        assert_eq!(run_status(&app, &parked[0].0).await, "awaiting_hitl", "nothing was sent");

        // Escape leaves the field; now `a` approves and sends.
        press(&c, ESCAPE).await;
        press_through(&c, 'a').await;
        assert_eq!(text_of(&c, "h1").await, "Answer applied");
        let done = app.wait_for_run(&parked[0].0, "completed").await;
        let answer = &done["hitlRequests"][0]["responses"][0];
        assert_eq!(answer["responseType"], "approval", "{answer}");
        assert_eq!(answer["freeformText"], "a", "{answer}");
        assert_eq!(answer["responderId"], "alice", "{answer}");
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_shared_filter_address_opens_the_same_filtered_list() {
    let (app, people) = console_app().await;
    let payout = asking(
        &app,
        "Approve the payout?",
        "Quarterly payouts",
        json!({ "timeoutSeconds": 3600 }),
    )
    .await;
    let _mail = asking(&app, "Send the mail?", "Spring newsletter", json!({})).await;
    let _late = asking(
        &app,
        "Approve the late payout?",
        "Payouts",
        json!({ "timeoutSeconds": 86_400 }),
    )
    .await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        wait_for(&c, "table.inbox").await;
        wait_for(&c, "#f-q").await.send_keys("payout").await.unwrap();
        wait_for(&c, "#f-expiring").await.send_keys("2h").await.unwrap();
        click_through(&c, "form.filters button[type=submit]").await;
        assert_eq!(listed(&c).await, vec![payout.clone()]);
        let shared = c.current_url().await.unwrap();
        assert!(shared.query().unwrap().contains("q=payout"), "{shared}");

        // Bob opens the address he was sent.
        c.delete_all_cookies().await.unwrap();
        sign_in(&c, &app, &people.bob, None).await;
        c.goto(shared.as_str()).await.unwrap();
        wait_for(&c, "table.inbox").await;
        assert_eq!(listed(&c).await, vec![payout.clone()]);
        let fields = c.execute("return [document.getElementById('f-q').value, document.getElementById('f-expiring').value];", vec![]).await.unwrap();
        assert_eq!(fields, json!(["payout", "2h"]));
        assert!(text_of(&c, ".who").await.contains("Bob Ops"));
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_runs_retry_button_completes_it() {
    let (app, people, run) = failed_run(fails_once()).await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        goto(&c, &app, &format!("/console/runs/{run}")).await;
        assert_eq!(text_of(&c, ".run-status").await, "failed");
        wait_for(&c, "#retry-note")
            .await
            .send_keys("the agent is back")
            .await
            .unwrap();
        click_through(&c, "form.retry button[type=submit]").await;
        assert_eq!(text_of(&c, "h1").await, "Run retried");
        app.wait_for_run(&run, "completed").await;
        click_through(&c, "a.to-run").await;
        assert_eq!(text_of(&c, ".run-status").await, "completed");
        assert!(
            text_of(&c, "ul.commands")
                .await
                .contains("succeeded by Alice Ops (alice)")
        );
        app.stop().await;
    })
    .await;
}
