//! The operator console in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (`chromedriver` on a free port, fantoccini as the client), against the real
//! router and a real PostgreSQL. One browser at a time (they are heavy on two cores), each
//! test bounded by a timeout, every process it starts killed with its process group.
//!
//! Without `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`) the
//! tests fail when `CI` is set, and elsewhere say loudly that they did not run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::agent_faults::{completed, raw_agent, reply, serve, webhook_engine};
use crate::common::api::{ADMIN, AppOptions, SUBMITTER, TestApp, audit_event};
use crate::console::{People, console_app, console_app_with, three_parked};

/// The most one browser test may take, start to finish.
const BOUND: Duration = Duration::from_secs(180);
/// The most the browser waits for an element of the next page.
pub(crate) const PAGE: Duration = Duration::from_secs(20);

/// Browser tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether both packages are there.
pub(crate) fn browser_installed() -> bool {
    installed("chromium").is_some() && installed("chromedriver").is_some()
}

fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A headless Chromium under a chromedriver of its own.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts one, or — without the packages — fails under CI and otherwise says loudly
    /// that the test did not run (`None`).
    async fn start() -> Option<Self> {
        let (Some(chromium), Some(chromedriver)) =
            (installed("chromium"), installed("chromedriver"))
        else {
            let why = "chromium and chromedriver are not installed \
                       (apt-get install chromium chromium-driver)";
            assert!(
                std::env::var_os("CI").is_none(),
                "browser tests need a browser: {why}"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // a passing test, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! THE CONSOLE'S BROWSER TEST DID NOT RUN: {why} !!!!!!!!\n"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that killing it takes Chromium along.
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self {
            client: None,
            driver,
            _profile: profile,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < PAGE, "chromedriver did not listen");
            crate::common::poll_pause().await;
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            // This machine's network is closed: no background fetches to fail.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
            // A dialog stays open, so a test can see it opened.
            "unhandledPromptBehavior": "ignore",
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Ends the session (Chromium quits); the driver is killed on drop.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Runs `test` with a browser of its own, one test at a time, within [`BOUND`].
pub(crate) async fn with_browser<F, Fut>(test: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let started = Instant::now();
    tokio::time::timeout(BOUND, test(browser.client().clone()))
        .await
        .expect("the browser test took too long");
    eprintln!("browser test body: {:?}", started.elapsed());
    browser.close().await;
}

pub(crate) async fn goto(c: &Client, app: &TestApp, path: &str) {
    c.goto(&app.url(path)).await.unwrap();
}

/// Waits for `css` on the page that is loading, and returns it.
pub(crate) async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(PAGE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

pub(crate) async fn text_of(c: &Client, css: &str) -> String {
    wait_for(c, css).await.text().await.unwrap()
}

/// Signs in through the form, with an operator for an act-as token.
pub(crate) async fn sign_in(
    c: &Client,
    app: &TestApp,
    token: &str,
    operator: Option<(&str, &str)>,
) {
    goto(c, app, "/console/").await;
    wait_for(c, "input[name=token]")
        .await
        .send_keys(token)
        .await
        .unwrap();
    if let Some((id, name)) = operator {
        c.find(Locator::Css("#operator-id"))
            .await
            .unwrap()
            .send_keys(id)
            .await
            .unwrap();
        c.find(Locator::Css("#operator-name"))
            .await
            .unwrap()
            .send_keys(name)
            .await
            .unwrap();
    }
    click_through(c, "form.sign-in button[type=submit]").await;
    let who = text_of(c, ".who").await;
    assert!(who.starts_with("Signed in as"), "{who}");
}

/// Opens the request page of `request`.
pub(crate) async fn open(c: &Client, app: &TestApp, request: &str) {
    goto(c, app, &format!("/console/requests/{request}")).await;
    wait_for(c, "section[aria-labelledby=audit-h]").await;
}

pub(crate) async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks what leads to another page (a submit button, a link) and waits until that
/// page has loaded: the old document is marked first, so that nothing of it is mistaken
/// for the new one.
pub(crate) async fn click_through(c: &Client, css: &str) {
    c.execute("window.__oldPage = true;", vec![]).await.unwrap();
    click(c, css).await;
    let started = Instant::now();
    loop {
        let fresh = c
            .execute(
                "return window.__oldPage !== true && document.readyState === 'complete';",
                vec![],
            )
            .await;
        // While the page changes, the script may fail: look again.
        if matches!(fresh, Ok(Value::Bool(true))) {
            return;
        }
        assert!(started.elapsed() < PAGE, "no new page after clicking {css}");
        crate::common::poll_pause().await;
    }
}

pub(crate) async fn run_status(app: &TestApp, run: &str) -> String {
    sqlx::query_scalar("select status from orchestrator_runs where run_id = $1")
        .bind(run)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_operator_signs_in_sees_three_requests_approves_one_and_its_run_completes() {
    let (app, people) = console_app().await;
    let parked = three_parked(&app).await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        assert_eq!(c.current_url().await.unwrap().path(), "/console/");
        let rows = c
            .find_all(Locator::Css("table.inbox tr.request"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        let first = rows[0].find(Locator::Css("a.prompt")).await.unwrap();
        assert_eq!(first.text().await.unwrap(), "Approve the draft?");
        let link = format!("a.prompt[href$='{}']", parked[0].1);
        click_through(&c, &link).await;
        wait_for(&c, "form.answer").await;
        assert!(
            c.current_url()
                .await
                .unwrap()
                .path()
                .ends_with(&parked[0].1)
        );
        click(&c, "input[name='decision-0'][value=approve]").await;
        wait_for(&c, "#text-0")
            .await
            .send_keys("Ship it")
            .await
            .unwrap();
        click_through(&c, "form.answer button[type=submit]").await;
        assert_eq!(text_of(&c, "h1").await, "Answer applied");
        assert_eq!(text_of(&c, ".run-status").await, "completed");
        assert_eq!(run_status(&app, &parked[0].0).await, "completed");
        let snapshot = app.get(&format!("/api/runs/{}", parked[0].0), ADMIN).await;
        let resumed = audit_event(&snapshot.body, "resume");
        assert_eq!(
            (
                resumed["operator"]["id"].as_str(),
                resumed["principal"].as_str()
            ),
            (Some("alice"), Some("alice"))
        );
        // Back in the inbox, two are left.
        click_through(&c, "main a[href='/console/']").await;
        wait_for(&c, "table.inbox").await;
        assert_eq!(
            c.find_all(Locator::Css("tr.request")).await.unwrap().len(),
            2
        );
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn when_another_operator_answered_first_the_page_names_the_winner() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        open(&c, &app, &request).await;
        click(&c, "input[name='decision-0'][value=approve]").await;
        // Meanwhile bob answers through the API.
        let bobs = app
            .post_as(
                "/api/hitl/resume",
                &people.bob,
                &json!({ "runId": run, "requestId": request, "responses": [
                    { "responseType": "rejection", "freeformText": "not yet" } ] }),
                &[("prefer", "wait=10")],
            )
            .await;
        assert_eq!(bobs.status, 200, "{bobs:?}");
        click_through(&c, "form.answer button[type=submit]").await;
        assert_eq!(text_of(&c, "h1").await, "Someone answered first");
        assert_eq!(text_of(&c, ".winner-name").await, "Bob Ops (bob)");
        assert!(text_of(&c, ".outcome").await.contains("bob"));
        let status = run_status(&app, &run).await;
        assert_eq!(status, "failed", "bob's rejection stands");
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn removing_with_a_reason_cancels_the_run_and_the_audit_keeps_the_reason() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        open(&c, &app, &request).await;
        let reason = "Duplicate of the autumn launch";
        wait_for(&c, "#reason")
            .await
            .send_keys(reason)
            .await
            .unwrap();
        wait_for(&c, "#remove-note")
            .await
            .send_keys("asked by marketing")
            .await
            .unwrap();
        click_through(&c, "form.remove button[type=submit]").await;
        assert_eq!(text_of(&c, "h1").await, "Run removed");
        assert_eq!(text_of(&c, ".run-status").await, "cancelled");
        assert_eq!(run_status(&app, &run).await, "cancelled");
        let snapshot = app.get(&format!("/api/runs/{run}"), ADMIN).await;
        let removed = audit_event(&snapshot.body, "remove");
        assert_eq!(removed["details"]["reason"], reason);
        assert_eq!(removed["note"], "asked by marketing");
        assert_eq!(removed["operator"]["id"], "alice");
        assert_eq!(snapshot.body["hitlRequests"][0]["denialReason"], reason);
        // The request page now says it is settled, and the timeline shows the reason.
        open(&c, &app, &request).await;
        assert!(text_of(&c, ".notice").await.contains(reason));
        assert!(text_of(&c, "ol.timeline").await.contains(reason));
        assert!(
            c.find_all(Locator::Css("form.answer"))
                .await
                .unwrap()
                .is_empty()
        );
        app.stop().await;
    })
    .await;
}

/// Markup that would open a dialog, set a flag or add an element if it were not text.
fn payload(tag: &str) -> String {
    format!(
        "<script>window.__xss='{tag}';alert('{tag}')</script>\
         <img src=x onerror=\"window.__xss='{tag}';alert('{tag}')\"><b id=\"xss-{tag}\">{tag}</b>"
    )
}

/// An agent that asks about one tool call whose prompt, title and argument carry payloads.
fn scripted_agent() -> std::sync::Arc<crate::agent_faults::RawAgent> {
    raw_agent(move |body, _| {
        if body["responses"].is_null() {
            let request = json!({ "prompt": payload("prompt"), "items": [
                { "itemId": "call_1", "kind": "tool_approval", "title": payload("title"),
                  "tool": { "name": "publish", "arguments": { "html": payload("argument") } },
                  "responseTypes": ["approval", "rejection", "edit"] } ] });
            reply(
                200,
                json!({ "status": "interrupted", "request": request }).to_string(),
            )
        } else {
            completed(json!({ "answers": body["responses"] }))
        }
    })
}

/// An app with a webhook agent (and the console's people); the agent's URL.
async fn app_with_agent(
    agent: std::sync::Arc<crate::agent_faults::RawAgent>,
) -> (TestApp, People, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = serve(listener, agent);
    let (app, people) = console_app_with(AppOptions {
        engine: webhook_engine(&url, 1 << 20, None),
        ..AppOptions::default()
    })
    .await;
    (app, people, url)
}

/// Creates a run of `plan` with a brief titled `title`, parked; (run, request).
async fn parked_with_brief(app: &TestApp, title: &str, plan: Value) -> (String, String) {
    let created = app
        .post(
            "/api/runs",
            SUBMITTER,
            &json!({ "brief": { "title": title, "content": { "body": payload("content") } },
                     "executionContext": { "note": payload("context") }, "plan": plan }),
        )
        .await;
    assert_eq!(created.status, 202, "{created:?}");
    let run = created.body["runId"].as_str().unwrap().to_owned();
    let parked = app.wait_for_run(&run, "awaiting_hitl").await;
    (run, parked["pendingRequestId"].as_str().unwrap().to_owned())
}

/// No dialog is open, no flag was set, no element came from a payload, and each payload
/// shows as text.
async fn nothing_ran(c: &Client, tags: &[&str]) {
    assert!(c.get_alert_text().await.is_err(), "a dialog opened");
    let flag = c
        .execute(
            "return window.__xss === undefined ? null : window.__xss;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(flag, Value::Null, "a payload ran");
    let made = c
        .find_all(Locator::Css(
            // The console's own script is the one script element a page may have.
            "script:not([src='/console/static/console.js']), img, main b[id^=xss-], [onerror]",
        ))
        .await
        .unwrap();
    assert!(
        made.is_empty(),
        "{} elements came from payloads",
        made.len()
    );
    let text = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for tag in tags {
        assert!(
            text.contains(&payload(tag)),
            "{tag} is not visible as text in: {text}"
        );
    }
}

#[tokio::test]
async fn script_in_a_prompt_a_tool_argument_and_a_brief_title_stays_text() {
    let (app, people, url) = app_with_agent(scripted_agent()).await;
    let plan = json!({ "nodes": [ { "id": "tool", "type": "task", "capability": "agent.webhook",
                                    "config": { "url": url } } ] });
    let (_run, request) = parked_with_brief(&app, &payload("brief"), plan).await;
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        wait_for(&c, "table.inbox").await;
        nothing_ran(&c, &["prompt", "brief", "title"]).await;
        open(&c, &app, &request).await;
        // The collapsed parts too.
        for summary in c.find_all(Locator::Css("details summary")).await.unwrap() {
            summary.click().await.unwrap();
        }
        nothing_ran(&c, &["prompt", "brief", "title"]).await;
        let shown = c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for tag in ["argument", "content", "context"] {
            // Inside pretty-printed JSON, quotes are escaped: look for the markup's start.
            assert!(
                shown.contains(&format!("<script>window.__xss='{tag}'")),
                "{tag}: {shown}"
            );
        }
        let args = c
            .find(Locator::Css("#arguments-0"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert!(
            args.unwrap_or_default()
                .contains("<script>window.__xss='argument'")
        );
        app.stop().await;
    })
    .await;
}

/// What in the page is an input without a label (or an accessible name from
/// `aria-label`/`aria-labelledby`), and how many inputs it has.
const UNLABELLED: &str = r#"
    const fields = [...document.querySelectorAll('input, select, textarea')]
        .filter(el => el.type !== 'hidden');
    const named = el => [...(el.labels || [])].some(l => l.textContent.trim() !== '')
        || (el.getAttribute('aria-label') || '').trim() !== ''
        || (el.getAttribute('aria-labelledby') || '').split(/\s+/).some(id => {
               const l = id && document.getElementById(id);
               return l && l.textContent.trim() !== '';
           });
    const buttons = [...document.querySelectorAll('button')].filter(b => b.textContent.trim() === '');
    return { fields: fields.length,
             unlabelled: fields.filter(el => !named(el)).map(el => el.outerHTML)
                 .concat(buttons.map(b => b.outerHTML)) };
"#;

async fn every_input_labelled(c: &Client, page: &str, at_least: u64) {
    let found = c.execute(UNLABELLED, vec![]).await.unwrap();
    assert_eq!(found["unlabelled"], json!([]), "{page}");
    let fields = found["fields"].as_u64().unwrap();
    assert!(fields >= at_least, "{page}: {fields} inputs");
}

/// An agent that asks about two tool calls, one of them editable.
fn two_tool_agent() -> std::sync::Arc<crate::agent_faults::RawAgent> {
    raw_agent(move |body, _| {
        if body["responses"].is_null() {
            let request = json!({ "prompt": "The agent wants to run two tools", "items": [
                { "itemId": "call_mail", "kind": "tool_approval", "title": "Send the launch mail",
                  "tool": { "name": "send_email", "arguments": { "to": "press@example.com" } } },
                { "itemId": "call_rm", "tool": { "name": "delete_file", "arguments": { "path": "/drafts/old.md" } },
                  "responseTypes": ["approval", "rejection", "edit"] } ] });
            reply(
                200,
                json!({ "status": "interrupted", "request": request }).to_string(),
            )
        } else {
            completed(json!({ "answers": body["responses"] }))
        }
    })
}

#[tokio::test]
async fn every_input_of_every_page_has_a_label_and_focus_is_visible() {
    let (app, people, url) = app_with_agent(two_tool_agent()).await;
    let (_, review) = app.parked_run().await;
    let plan = json!({ "nodes": [ { "id": "tools", "type": "task", "capability": "agent.webhook",
                                    "config": { "url": url } } ] });
    let (run, tools) = parked_with_brief(&app, "Two tools", plan).await;
    with_browser(|c| async move {
        goto(&c, &app, "/console/sign-in").await;
        wait_for(&c, "input[name=token]").await;
        every_input_labelled(&c, "sign-in", 3).await;
        sign_in(&c, &app, &people.alice, None).await;
        every_input_labelled(&c, "inbox", 3).await;
        open(&c, &app, &review).await;
        // Approve, reject, two options, free text; its text, the note, the reason, its note.
        every_input_labelled(&c, "a plan's request", 9).await;
        open(&c, &app, &tools).await;
        every_input_labelled(&c, "an agent's request", 11).await;

        // Keyboard focus is visible: tab to the first field and look at its outline.
        c.execute(
            "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .unwrap();
        let tab = '\u{E004}';
        let mut keys = KeyActions::new("keyboard".into());
        for _ in 0..3 {
            keys = keys
                .then(KeyAction::Down { value: tab })
                .then(KeyAction::Up { value: tab });
        }
        c.perform_actions(keys).await.unwrap();
        let outline = c
            .execute(
                "const s = getComputedStyle(document.activeElement); \
                 return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth];",
                vec![],
            )
            .await
            .unwrap();
        assert_ne!(
            outline[1], "none",
            "the focused element shows it: {outline}"
        );
        assert_ne!(outline[2], "0px", "{outline}");

        // The agent's request answered from the form: approve one, edit the other.
        click(&c, "input[name='decision-0'][value=approve]").await;
        click(&c, "input[name='decision-1'][value=edit]").await;
        let args = c.find(Locator::Css("#arguments-1")).await.unwrap();
        args.clear().await.unwrap();
        args.send_keys(r#"{"path": "/drafts/older.md"}"#)
            .await
            .unwrap();
        click_through(&c, "form.answer button[type=submit]").await;
        assert_eq!(text_of(&c, "h1").await, "Answer applied");
        let done = app.wait_for_run(&run, "completed").await;
        let answers = &done["hitlRequests"][0]["responses"];
        assert_eq!(answers[1]["responseType"], "edit", "{answers}");
        assert_eq!(
            answers[1]["editedArguments"],
            json!({ "path": "/drafts/older.md" })
        );
        app.stop().await;
    })
    .await;
}

pub(crate) fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// The width of a PNG image (its IHDR chunk's first field).
fn png_width(png: &[u8]) -> u32 {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24,
        "a PNG"
    );
    u32::from_be_bytes(png[16..20].try_into().unwrap())
}

/// Whether anything on the page is wider than the window (a phone would scroll sideways).
async fn overflows(c: &Client) -> Value {
    c.execute(
        "return document.documentElement.scrollWidth > window.innerWidth + 1 \
           ? [document.documentElement.scrollWidth, window.innerWidth] : false;",
        vec![],
    )
    .await
    .unwrap()
}

/// Where the README's screenshot is kept; rewritten from the 1280 px inbox when the test
/// runs with `HITL_UPDATE_SCREENSHOTS=1`.
const README_SHOT: &str = "docs/console-inbox.png";

#[tokio::test]
async fn screenshots_of_the_inbox_and_a_detail_page_at_1280_and_390_px_are_saved_under_target() {
    let (app, people) = console_app().await;
    let parked = three_parked(&app).await;
    let claim = app
        .post(
            "/api/hitl/claim",
            &people.bob,
            &json!({ "requestId": parked[1].1 }),
        )
        .await;
    assert_eq!(claim.status, 200);
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // (file, window width); the 1280 px ones first.
    let shots: Vec<(PathBuf, u32)> = ["inbox.png", "detail.png", "inbox-390.png", "detail-390.png"]
        .iter()
        .zip([1280, 1280, 390, 390])
        .map(|(name, width)| (dir.join(name), width))
        .collect();
    for (old, _) in &shots {
        let _ = std::fs::remove_file(old);
    }
    let files: Vec<PathBuf> = shots.iter().map(|(f, _)| f.clone()).collect();
    with_browser(|c| async move {
        sign_in(&c, &app, &people.alice, None).await;
        for (at, width) in [(0, 1280), (2, 390)] {
            c.set_window_size(width, 900).await.unwrap();
            goto(&c, &app, "/console/").await;
            wait_for(&c, "table.inbox").await;
            std::fs::write(&files[at], c.screenshot().await.unwrap()).unwrap();
            assert_eq!(
                overflows(&c).await,
                Value::Bool(false),
                "the inbox at {width} px"
            );
            open(&c, &app, &parked[0].1).await;
            std::fs::write(&files[at + 1], c.screenshot().await.unwrap()).unwrap();
            assert_eq!(
                overflows(&c).await,
                Value::Bool(false),
                "a request at {width} px"
            );
        }
        // At phone width the inbox is a list of cards: one row above the next.
        c.set_window_size(390, 900).await.unwrap();
        goto(&c, &app, "/console/").await;
        let stacked = c
            .execute(
                "const r = document.querySelectorAll('tr.request'); \
                 return r[1].getBoundingClientRect().top >= r[0].getBoundingClientRect().bottom \
                   && getComputedStyle(r[0]).display === 'block';",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(stacked, Value::Bool(true));
        app.stop().await;
    })
    .await;
    if !browser_installed() {
        return; // said loudly above
    }
    for (shot, width) in &shots {
        let png = std::fs::read(shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(png.len() > 10_000, "{}", shot.display());
        let got = png_width(&png);
        // The window's width is the page's, less a scroll bar at most.
        assert!(
            got <= *width && got + 20 >= *width,
            "{}: {got} px",
            shot.display()
        );
    }
    if std::env::var_os("HITL_UPDATE_SCREENSHOTS").is_some() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join(README_SHOT);
        std::fs::copy(&shots[0].0, &readme).unwrap();
    }
    let committed = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(README_SHOT))
        .expect("the README's screenshot is committed");
    assert_eq!(
        png_width(&committed),
        png_width(&std::fs::read(&shots[0].0).unwrap())
    );
}
