//! The operator console over plain HTTP, and the support its other tests share (an app
//! with two operators' tokens, a cookie-keeping client): where `/` and `/console` lead,
//! the security headers of every response, the inbox's order, columns, filters and
//! paging, claims, answers that do not fit, a form sent twice, the address printed at
//! start. Sessions, CSRF and origins: `console_sessions`; a real browser:
//! `console_browser`. Real router on port 0, real PostgreSQL, tokens from a file.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::common::api::{ADMIN, AppOptions, TestApp, tokens_file};

/// The operators of the console tests: two people with tokens bound to them.
pub(crate) struct People {
    pub alice: String,
    pub bob: String,
    pub file: std::path::PathBuf,
    /// Holds the tokens file; dropped with the test.
    pub _dir: tempfile::TempDir,
}

/// An app whose tokens file binds `alice` and `bob` (operate), beside the test tokens
/// (`ADMIN` acts as the operator a body or a sign-in names), with `options`.
pub(crate) async fn console_app_with(options: AppOptions) -> (TestApp, People) {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = tokens_file(
        dir.path(),
        &[
            (
                "alice",
                "\"operate\"",
                "operator = { id = \"alice\", displayName = \"Alice Ops\" }",
            ),
            (
                "bob",
                "\"operate\"",
                "operator = { id = \"bob\", displayName = \"Bob Ops\" }",
            ),
        ],
    );
    let app = TestApp::spawn_with(AppOptions {
        tokens_file: Some(file.clone()),
        ..options
    })
    .await;
    let [alice, bob] = <[String; 2]>::try_from(tokens).unwrap();
    (
        app,
        People {
            alice,
            bob,
            file,
            _dir: dir,
        },
    )
}

pub(crate) async fn console_app() -> (TestApp, People) {
    console_app_with(AppOptions::default()).await
}

/// A page as the server sent it.
#[derive(Debug)]
pub(crate) struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first hidden field `name` on the page.
    pub fn field(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&needle)
            .unwrap_or_else(|| panic!("no field {name} on the page: {}", self.body))
            + needle.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

/// A browser without a browser: keeps the session cookie, follows no redirect, sends its
/// forms from the console's own origin unless told otherwise.
pub(crate) struct Visitor {
    base: String,
    client: reqwest::Client,
    /// `name=value` of the session cookie.
    pub cookie: Option<String>,
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        hitl_orchestrator::tls::install_provider();
        Self {
            base: app.base.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(c) => request.header("cookie", c),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(set) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// GET with these headers (and no cookie but the ones given).
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, String)]) -> Page {
        let mut request = self.client.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let keep = self.cookie.take();
        let page = self.send(request).await;
        self.cookie = keep;
        page
    }

    /// Posts `fields` as a form from the console's own pages.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.post_with(path, fields, &[("origin", &origin)]).await
    }

    /// Posts `fields` with these headers (and no others of a browser's), as a form unless
    /// they name another content type.
    pub async fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .body(serde_urlencoded::to_string(fields).unwrap());
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request).await
    }

    /// Signs in with `token` (and, for an act-as token, an operator id and name).
    pub async fn sign_in(&mut self, token: &str, operator: Option<(&str, &str)>) -> Page {
        let (id, name) = operator.unwrap_or(("", ""));
        let fields = [
            ("token", token),
            ("operator_id", id),
            ("operator_name", name),
        ];
        self.post("/console/sign-in", &fields).await
    }

    /// Signs in and expects to land on the inbox.
    pub async fn signed_in(app: &TestApp, token: &str, operator: Option<(&str, &str)>) -> Self {
        let mut visitor = Self::new(app);
        let page = visitor.sign_in(token, operator).await;
        assert_eq!(
            (page.status, page.header("location")),
            (303, "/console/"),
            "{page:?}"
        );
        visitor
    }
}

/// Parks three runs at `review` and returns their (run, request) ids, oldest first.
pub(crate) async fn three_parked(app: &TestApp) -> Vec<(String, String)> {
    let mut parked = Vec::new();
    for _ in 0..3 {
        parked.push(app.parked_run().await);
    }
    parked
}

/// A signed-in visitor on a parked request's page: (visitor, run, request, csrf, key).
pub(crate) async fn on_a_request(
    app: &TestApp,
    token: &str,
) -> (Visitor, String, String, String, String) {
    let (run, request) = app.parked_run().await;
    let mut visitor = Visitor::signed_in(app, token, None).await;
    let detail = visitor.get(&format!("/console/requests/{request}")).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let (csrf, key) = (detail.field("csrf"), detail.field("key"));
    (visitor, run, request, csrf, key)
}

#[tokio::test]
async fn the_root_leads_to_the_console_and_the_console_to_its_sign_in_page() {
    let (app, _people) = console_app().await;
    let mut visitor = Visitor::new(&app);
    let root = visitor.get("/").await;
    assert_eq!((root.status, root.header("location")), (303, "/console/"));
    let bare = visitor.get("/console").await;
    assert_eq!((bare.status, bare.header("location")), (303, "/console/"));
    let inbox = visitor.get("/console/").await;
    assert_eq!(
        (inbox.status, inbox.header("location")),
        (303, "/console/sign-in"),
        "not signed in"
    );
    let form = visitor.get("/console/sign-in").await;
    assert_eq!(form.status, 200);
    assert!(form.header("content-type").starts_with("text/html"));
    assert!(form.body.contains(r#"name="token""#), "{}", form.body);
    app.stop().await;
}

#[tokio::test]
async fn every_console_response_carries_a_strict_content_security_policy() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    let mut visitor = Visitor::signed_in(&app, &people.alice, None).await;
    for path in [
        "/console/sign-in".to_owned(),
        "/console/".to_owned(),
        format!("/console/requests/{request}"),
        "/console/static/console.css".to_owned(),
        "/console/static/console.js".to_owned(),
        format!("/console/runs/{run}"),
        "/console/no-such-page".to_owned(),
    ] {
        let page = visitor.get(&path).await;
        assert!(matches!(page.status, 200 | 404), "{path}: {page:?}");
        assert_eq!(
            page.header("content-security-policy"),
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "{path}"
        );
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(page.header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(page.header("x-frame-options"), "DENY", "{path}");
        if path.ends_with(".css") {
            assert!(page.header("content-type").starts_with("text/css"));
        } else if path.ends_with(".js") {
            assert!(page.header("content-type").starts_with("text/javascript"));
            // The script builds no markup from data.
            assert!(!page.body.contains("innerHTML") && !page.body.contains("eval("));
        } else {
            assert_eq!(page.header("cache-control"), "no-store", "{path}");
            // No inline script or style, and no secret: the page names no token. The one
            // script is the console's own file.
            let own = r#"<script src="/console/static/console.js" defer></script>"#;
            let body = page.body.replace(own, "");
            for inline in ["<script", "style=", "<style", " onclick", "javascript:"] {
                assert!(!body.contains(inline), "{path} has {inline}");
            }
            assert!(!page.body.contains(&people.alice), "{path} shows the token");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_inbox_lists_oldest_first_filters_and_pages_by_keyset() {
    let (app, people) = console_app().await;
    let parked = three_parked(&app).await;
    let other = app
        .create_run(json!({ "nodes": [ {
            "id": "legal", "type": "hitl", "prompt": "Legal check?",
            "responseTypes": ["approval", "rejection"],
            "timeoutSeconds": 7200, "onTimeout": "approve",
            "assignees": { "users": ["alice"], "groups": ["legal"] },
            "approvals": { "required": 2 } } ] }))
        .await;
    app.wait_for_run(&other, "awaiting_hitl").await;
    let mut visitor = Visitor::signed_in(&app, &people.alice, None).await;
    let order = |body: &str| -> Vec<String> {
        body.match_indices("/console/requests/hitl_req_")
            .map(|(i, _)| body[i + 18..i + 18 + 41].to_owned())
            .collect()
    };
    let all = visitor.get("/console/").await;
    let mut expected: Vec<String> = parked.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(order(&all.body)[..3], expected[..], "oldest first");
    assert_eq!(order(&all.body).len(), 4);

    let legal = visitor.get("/console/?node=legal").await;
    assert_eq!(order(&legal.body).len(), 1);
    for shown in [
        "Legal check?",
        "in 1 h",
        "then it is approved",
        "alice, group legal",
        "0 of 2",
    ] {
        assert!(legal.body.contains(shown), "{shown}: {}", legal.body);
    }
    let snapshot = app.get(&format!("/api/runs/{}", parked[1].0), ADMIN).await;
    let thread = snapshot.body["threadId"].as_str().unwrap().to_owned();
    let by_thread = visitor
        .get(&format!("/console/?thread={}", urlencode(&thread)))
        .await;
    assert_eq!(order(&by_thread.body), vec![parked[1].1.clone()]);
    let brief = snapshot.body["briefId"].as_str().unwrap();
    let by_brief = visitor.get(&format!("/console/?brief={brief}")).await;
    assert_eq!(order(&by_brief.body), vec![parked[1].1.clone()]);
    let bad = visitor.get("/console/?brief=not-a-brief").await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("brief:"), "{}", bad.body);

    // Two a page: the next page starts after the last one shown.
    expected.push(order(&all.body)[3].clone());
    let mut seen = Vec::new();
    let mut page = visitor.get("/console/?limit=2").await;
    loop {
        seen.extend(order(&page.body));
        let Some(at) = page.body.find("rel=\"next\"") else {
            break;
        };
        let href_start = page.body[..at].rfind("href=\"").unwrap() + 6;
        let href = page.body[href_start..]
            .split('"')
            .next()
            .unwrap()
            .replace("&#38;", "&");
        assert!(
            href.contains("limit=2") && href.contains("cursor="),
            "{href}"
        );
        page = visitor.get(&href).await;
        assert!(page.body.contains("First page"), "{}", page.body);
    }
    assert_eq!(seen, expected);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn a_claim_from_the_console_holds_off_another_operator_until_released() {
    let (app, people) = console_app().await;
    let (mut alice, _run, request, csrf, _key) = on_a_request(&app, &people.alice).await;
    let claimed = alice
        .post(
            &format!("/console/requests/{request}/claim"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (claimed.status, claimed.header("location")),
        (303, format!("/console/requests/{request}").as_str())
    );
    let pending = app.get("/api/hitl/pending", ADMIN).await;
    assert_eq!(
        pending.body["items"][0]["claimedBy"]["operator"]["id"],
        "alice"
    );
    let detail = alice.get(&format!("/console/requests/{request}")).await;
    assert!(detail.body.contains("Release my claim"));
    assert!(
        detail.body.contains("Alice Ops (alice) for 1"),
        "{}",
        detail.body
    );

    let mut bob = Visitor::signed_in(&app, &people.bob, None).await;
    let page = bob.get(&format!("/console/requests/{request}")).await;
    let sent = bob
        .post(
            &format!("/console/requests/{request}/answer"),
            &[
                ("csrf", &page.field("csrf")),
                ("key", &page.field("key")),
                ("decision-0", "approve"),
            ],
        )
        .await;
    assert_eq!(sent.status, 409, "{sent:?}");
    assert!(sent.body.contains("Someone else has claimed it"));
    assert!(
        sent.body.contains("claimed by operator alice"),
        "{}",
        sent.body
    );

    let released = alice
        .post(
            &format!("/console/requests/{request}/unclaim"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(released.status, 303);
    let pending: Value = app.get("/api/hitl/pending", ADMIN).await.body;
    assert!(pending["items"][0]["claimedBy"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn an_answer_that_does_not_fit_is_shown_on_the_request_page_and_nothing_is_sent() {
    let (app, people) = console_app().await;
    let (mut visitor, _run, request, csrf, key) = on_a_request(&app, &people.alice).await;
    let before = app.dump().await;
    let answer = format!("/console/requests/{request}/answer");
    for (fields, says) in [
        (vec![], "choose an answer"),
        (vec![("decision-0", "freeform")], "write the answer"),
        (vec![("decision-0", "option-7")], "choose an answer"),
    ] {
        let mut fields = fields;
        fields.extend([("csrf", csrf.as_str()), ("key", key.as_str())]);
        let page = visitor.post(&answer, &fields).await;
        assert_eq!(page.status, 422, "{fields:?}");
        assert!(page.body.contains(says), "{says}: {}", page.body);
        assert!(
            page.body.contains("Send the answer"),
            "the form is shown again"
        );
    }
    let remove = visitor
        .post(
            &format!("/console/requests/{request}/remove"),
            &[("csrf", &csrf), ("key", &key)],
        )
        .await;
    assert_eq!(remove.status, 422);
    assert!(remove.body.contains("Give a reason"));
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

#[tokio::test]
async fn the_same_form_sent_twice_is_one_command() {
    let (app, people) = console_app().await;
    let (mut visitor, run, request, csrf, key) = on_a_request(&app, &people.alice).await;
    let answer = format!("/console/requests/{request}/answer");
    let fields = [
        ("csrf", csrf.as_str()),
        ("key", &key),
        ("decision-0", "option-1"),
    ];
    let first = visitor.post(&answer, &fields).await;
    assert_eq!(first.status, 303, "{first:?}");
    app.wait_for_run(&run, "completed").await;
    let second = visitor.post(&answer, &fields).await;
    assert_eq!(second.header("location"), first.header("location"));
    let commands: i64 = sqlx::query_scalar("select count(*) from hitl_commands")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(commands, 1);
    let outcome = visitor.get(first.header("location")).await;
    assert!(outcome.body.contains("completed"), "{}", outcome.body);
    app.stop().await;
}

#[tokio::test]
async fn the_service_prints_the_console_address_and_serves_it() {
    let db = crate::common::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = crate::common::ServiceProcess::start_until(
        &["api"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("API_KEY", ADMIN),
            ("API_TOKENS", ""),
        ],
        dir.path(),
        "hitl-orchestrator console: ",
    );
    let console = service.base_url.clone();
    assert!(
        console.starts_with("http://127.0.0.1:") && console.ends_with("/console/"),
        "{console}"
    );
    let base = console.trim_end_matches("/console/");
    let (status, body) = crate::common::http_get(base, "/console/sign-in");
    assert_eq!(status, 200);
    assert!(body.contains(r#"name="token""#));
    drop(service);
}
