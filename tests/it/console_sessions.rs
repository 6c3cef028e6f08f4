//! Console sessions over plain HTTP: sign-in (cookie attributes, only hashes stored, a
//! new id each time, act-as operators declared, bound ones held to their operator, wrong
//! tokens and missing scopes, attempts limited), the CSRF token and the origin check on
//! every form, bodies too large or not forms, `/api` refusing the cookie, and what ends a
//! session: sign-out, expiry, a revoked token, an expired JWT.

use std::time::Duration;

use serde_json::json;

use crate::common::api::{ADMIN, AppOptions, OPERATOR, SUBMITTER, TestApp};
use crate::console::{Visitor, console_app, console_app_with, on_a_request};

/// The session rows, as JSON text (every column), for looking for secrets in them.
async fn session_rows(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("select to_jsonb(s)::text from console_sessions s")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_sign_in_sets_an_http_only_strict_cookie_and_stores_only_hashes() {
    let (app, people) = console_app().await;
    let mut visitor = Visitor::new(&app);
    let signed = visitor.sign_in(&people.alice, None).await;
    assert_eq!(signed.status, 303, "{signed:?}");
    let cookie = signed.header("set-cookie").to_owned();
    assert!(cookie.starts_with("hitl_console="), "{cookie}");
    for attribute in [
        "; Path=/",
        "; HttpOnly",
        "; SameSite=Strict",
        "; Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let id = visitor.cookie.clone().unwrap();
    let id = id.strip_prefix("hitl_console=").unwrap().to_owned();
    assert_eq!(id.len(), 64);

    let rows = session_rows(&app).await;
    assert_eq!(rows.len(), 1);
    let id_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        rows[0].contains(&format!("\\\\x{}", sha256_hex(&id_bytes))),
        "keyed by the id's SHA-256: {}",
        rows[0]
    );
    let token_hex: String = people.alice.bytes().map(|b| format!("{b:02x}")).collect();
    for secret in [&id, &people.alice, &token_hex] {
        assert!(
            !rows[0].contains(secret.as_str()),
            "a secret is stored: {}",
            rows[0]
        );
    }
    let inbox = visitor.get("/console/").await;
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains("Alice Ops (alice)"), "{}", inbox.body);

    // Signing in again gives a new id and ends the session the browser had.
    let old = visitor.cookie.clone().unwrap();
    let again = visitor.sign_in(&people.bob, None).await;
    assert_eq!(again.status, 303);
    assert_ne!(visitor.cookie.as_ref().unwrap(), &old);
    assert_eq!(session_rows(&app).await.len(), 1, "the old session ended");
    let mut stale = Visitor::new(&app);
    stale.cookie = Some(old);
    let refused = stale.get("/console/").await;
    assert_eq!(
        refused.header("location"),
        "/console/sign-in?reason=expired"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_an_https_public_url_the_cookie_is_secure_and_forms_must_come_from_it() {
    let public: hitl_orchestrator::config::console::PublicUrl =
        "https://hitl.example.com".parse().unwrap();
    let (app, people) = console_app_with(AppOptions {
        console: hitl_orchestrator::console::ConsoleSettings {
            public_url: Some(public),
            ..Default::default()
        },
        ..AppOptions::default()
    })
    .await;
    let mut visitor = Visitor::new(&app);
    let fields = [("token", people.alice.as_str())];
    let own_host = visitor.post("/console/sign-in", &fields).await;
    assert_eq!(own_host.status, 403, "the origin must be the public one");
    let signed = visitor
        .post_with(
            "/console/sign-in",
            &fields,
            &[("origin", "https://hitl.example.com")],
        )
        .await;
    assert_eq!(signed.status, 303, "{signed:?}");
    let cookie = signed.header("set-cookie");
    assert!(cookie.starts_with("__Host-hitl_console="), "{cookie}");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert_eq!(visitor.get("/console/").await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_token_and_one_without_the_operate_scope_start_no_session() {
    let (app, _people) = console_app().await;
    let mut visitor = Visitor::new(&app);
    let wrong = visitor
        .sign_in("not-a-token-of-this-service-0123", None)
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("This token is not accepted."));
    let submit_only = visitor.sign_in(SUBMITTER, Some(("ci", "CI"))).await;
    assert_eq!(submit_only.status, 403);
    assert!(submit_only.body.contains("operate scope"));
    assert!(visitor.cookie.is_none());
    assert!(session_rows(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_act_as_token_names_its_operator_at_sign_in_and_acts_as_that_operator() {
    let (app, _people) = console_app().await;
    let (run, request) = app.parked_run().await;
    let mut visitor = Visitor::new(&app);
    let unnamed = visitor.sign_in(OPERATOR, None).await;
    assert_eq!(unnamed.status, 422);
    assert!(
        unnamed
            .body
            .contains("enter your operator id and your name")
    );
    let mut visitor = Visitor::signed_in(&app, OPERATOR, Some(("dora", "Dora Declared"))).await;
    let inbox = visitor.get("/console/").await;
    assert!(
        inbox.body.contains("Dora Declared (dora)"),
        "{}",
        inbox.body
    );

    let detail = visitor.get(&format!("/console/requests/{request}")).await;
    let (csrf, key) = (detail.field("csrf"), detail.field("key"));
    let sent = visitor
        .post(
            &format!("/console/requests/{request}/answer"),
            &[
                ("csrf", &csrf),
                ("key", &key),
                ("decision-0", "approve"),
                ("note", "fine"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{sent:?}");
    let outcome = visitor.get(sent.header("location")).await;
    assert_eq!(outcome.status, 200, "{}", outcome.body);
    assert!(outcome.body.contains("Answer applied"), "{}", outcome.body);
    let snapshot = app.wait_for_run(&run, "completed").await;
    let resumed = crate::common::api::audit_event(&snapshot, "resume");
    assert_eq!(resumed["operator"]["id"], "dora");
    assert_eq!(resumed["operator"]["displayName"], "Dora Declared");
    assert_eq!(resumed["principal"], "ops");
    assert_eq!(resumed["note"], "fine");
    app.stop().await;
}

#[tokio::test]
async fn a_bound_token_cannot_sign_in_as_another_operator() {
    let (app, people) = console_app().await;
    let mut visitor = Visitor::new(&app);
    let page = visitor.sign_in(&people.alice, Some(("bob", "Bob"))).await;
    assert_eq!(page.status, 403, "{page:?}");
    assert!(
        page.body.contains("acts as operator alice"),
        "{}",
        page.body
    );
    assert!(visitor.cookie.is_none());
    app.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_client_address() {
    let (app, people) = console_app().await;
    let mut visitor = Visitor::new(&app);
    for _ in 0..hitl_orchestrator::console::guard::SIGN_IN_BURST {
        let wrong = visitor
            .sign_in("guess-0123456789abcdef0123456789", None)
            .await;
        assert_eq!(wrong.status, 401);
    }
    let limited = visitor.sign_in(&people.alice, None).await;
    assert_eq!(limited.status, 429, "even the right token waits");
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!((1..=6).contains(&wait), "{wait}");
    assert!(limited.body.contains("Too many sign-in attempts"));
    assert!(session_rows(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_form_without_this_sessions_csrf_token_is_refused_and_changes_nothing() {
    let (app, people) = console_app().await;
    let (mut visitor, _run, request, csrf, key) = on_a_request(&app, &people.alice).await;
    let mut bobs = Visitor::signed_in(&app, &people.bob, None).await;
    let bobs_csrf = bobs
        .get(&format!("/console/requests/{request}"))
        .await
        .field("csrf");
    let before = app.dump().await;
    let answer = format!("/console/requests/{request}/answer");
    for token in [None, Some(""), Some("00ff"), Some(bobs_csrf.as_str())] {
        let mut fields = vec![("key", key.as_str()), ("decision-0", "approve")];
        if let Some(t) = token {
            fields.push(("csrf", t));
        }
        let refused = visitor.post(&answer, &fields).await;
        assert_eq!(refused.status, 403, "{token:?}: {refused:?}");
        assert!(refused.body.contains("security token"));
    }
    for path in ["remove", "claim", "unclaim"] {
        let fields = [("reason", "no"), ("key", key.as_str())];
        let refused = visitor
            .post(&format!("/console/requests/{request}/{path}"), &fields)
            .await;
        assert_eq!(refused.status, 403, "{path}");
    }
    let sign_out = visitor.post("/console/sign-out", &[]).await;
    assert_eq!(sign_out.status, 403);
    assert_eq!(app.dump().await, before, "nothing changed");
    assert_eq!(
        visitor.get("/console/").await.status,
        200,
        "still signed in"
    );
    // With it, the same form goes through.
    let sent = visitor
        .post(
            &answer,
            &[("csrf", &csrf), ("key", &key), ("decision-0", "approve")],
        )
        .await;
    assert_eq!(sent.status, 303, "{sent:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_form_from_another_origin_is_refused_and_changes_nothing() {
    let (app, people) = console_app().await;
    let (mut visitor, _run, request, csrf, key) = on_a_request(&app, &people.alice).await;
    let before = app.dump().await;
    let answer = format!("/console/requests/{request}/answer");
    let fields = [
        ("csrf", csrf.as_str()),
        ("key", &key),
        ("decision-0", "approve"),
    ];
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![
            ("sec-fetch-site", "same-site"),
            ("origin", app.base.as_str()),
        ],
    ] {
        let refused = visitor.post_with(&answer, &fields, &headers).await;
        assert_eq!(refused.status, 403, "{headers:?}: {refused:?}");
        assert!(refused.body.contains("not sent from this console"));
    }
    let elsewhere = Visitor::new(&app)
        .post_with(
            "/console/sign-in",
            &[("token", &people.bob)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(elsewhere.status, 403, "no sign-in from another site either");
    assert_eq!(app.dump().await, before);
    let same = visitor
        .post_with(&answer, &fields, &[("sec-fetch-site", "same-origin")])
        .await;
    assert_eq!(same.status, 303, "{same:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_api_never_accepts_the_console_cookie() {
    let (app, people) = console_app().await;
    let (run, request) = app.parked_run().await;
    let visitor = Visitor::signed_in(&app, &people.alice, None).await;
    let cookie = visitor.cookie.clone().unwrap();
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/hitl/pending".to_owned()),
        ("GET", format!("/api/runs/{run}")),
        ("POST", "/api/hitl/resume".to_owned()),
    ] {
        let response = client
            .request(method.parse().unwrap(), app.url(&path))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(crate::common::api::approval(&run, &request, "alice").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{method} {path}");
    }
    let pending = app.get("/api/hitl/pending", ADMIN).await;
    assert_eq!(
        pending.body["items"].as_array().unwrap().len(),
        1,
        "still pending"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_ends_its_session() {
    let (app, people) = console_app().await;
    let mut alice = Visitor::signed_in(&app, &people.alice, None).await;
    let mut bob = Visitor::signed_in(&app, &people.bob, None).await;
    assert_eq!(alice.get("/console/").await.status, 200);

    // The tokens file loses alice's entry and is reloaded (what SIGHUP does).
    let text = std::fs::read_to_string(&people.file).unwrap();
    let kept: String = text
        .split("[[token]]")
        .filter(|entry| !entry.trim().is_empty() && !entry.contains("name = \"alice\""))
        .map(|entry| format!("[[token]]{entry}"))
        .collect();
    std::fs::write(&people.file, kept).unwrap();
    app.auth.load_tokens_file(&people.file).unwrap();

    let ended = alice.get("/console/").await;
    assert_eq!(
        (ended.status, ended.header("location")),
        (303, "/console/sign-in?reason=ended")
    );
    assert!(ended.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(session_rows(&app).await.len(), 1, "alice's row is gone");
    let told = alice.get("/console/sign-in?reason=ended").await;
    assert!(told.body.contains("no longer accepted"), "{}", told.body);
    assert_eq!(
        bob.get("/console/").await.status,
        200,
        "bob's session lives on"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_jwt_ends_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = crate::api_jwt::es256("console-key");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let (app, _people) = console_app_with(AppOptions {
        jwt: Some(hitl_orchestrator::identity::jwt::JwtSettings {
            jwks: hitl_orchestrator::identity::jwt::JwksSource::File(jwks),
            issuer: crate::api_jwt::ISSUER.into(),
            audience: crate::api_jwt::AUDIENCE.into(),
            claims: Default::default(),
        }),
        ..AppOptions::default()
    })
    .await;
    // Expired 57 s ago: within the 60 s of skew allowed for 3 s more.
    let mut claims = crate::api_jwt::claims("erin", "operate");
    claims["exp"] = json!(chrono::Utc::now().timestamp() - 57);
    let jwt = crate::api_jwt::sign(jsonwebtoken::Algorithm::ES256, "console-key", &key, &claims);
    let mut visitor = Visitor::signed_in(&app, &jwt, None).await;
    let inbox = visitor.get("/console/").await;
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains("erin (idp) (erin)"), "{}", inbox.body);
    // Past the skew: this test is about time.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let ended = visitor.get("/console/").await;
    assert_eq!(ended.header("location"), "/console/sign-in?reason=ended");
    app.stop().await;
}

#[tokio::test]
async fn signing_out_ends_the_session_and_an_expired_one_ends_by_itself() {
    let (app, people) = console_app().await;
    let mut visitor = Visitor::signed_in(&app, &people.alice, None).await;
    let cookie = visitor.cookie.clone().unwrap();
    let inbox = visitor.get("/console/").await;
    let out = visitor
        .post("/console/sign-out", &[("csrf", &inbox.field("csrf"))])
        .await;
    assert_eq!(
        (out.status, out.header("location")),
        (303, "/console/sign-in?reason=signed-out")
    );
    assert!(visitor.cookie.is_none(), "the cookie is cleared");
    assert!(session_rows(&app).await.is_empty());
    let mut replay = Visitor::new(&app);
    replay.cookie = Some(cookie);
    assert_eq!(replay.get("/console/").await.status, 303);

    let mut visitor = Visitor::signed_in(&app, &people.alice, None).await;
    sqlx::query(
        "update console_sessions set created_at = now() - interval '9 hours', \
         expires_at = now() - interval '1 hour'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let expired = visitor.get("/console/").await;
    assert_eq!(
        expired.header("location"),
        "/console/sign-in?reason=expired"
    );
    // The next sign-in clears it away.
    Visitor::signed_in(&app, &people.bob, None).await;
    assert_eq!(session_rows(&app).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_form_too_large_or_not_a_form_is_refused_and_changes_nothing() {
    let (app, people) = console_app().await;
    let (mut visitor, _run, request, csrf, key) = on_a_request(&app, &people.alice).await;
    let before = app.dump().await;
    let answer = format!("/console/requests/{request}/answer");
    let huge = "x".repeat(hitl_orchestrator::api::DEFAULT_MAX_BODY + 1);
    let fields = [
        ("csrf", csrf.as_str()),
        ("key", &key),
        ("decision-0", "approve"),
        ("note", &huge),
    ];
    let page = visitor.post(&answer, &fields).await;
    assert_eq!(page.status, 413, "{}", page.header("content-type"));
    let origin = app.base.clone();
    let json = visitor
        .post_with(
            &answer,
            &[],
            &[("origin", &origin), ("content-type", "application/json")],
        )
        .await;
    assert_eq!(json.status, 415, "only the console's own forms");
    assert_eq!(app.dump().await, before);
    app.stop().await;
}

/// One bad row per constraint of `console_sessions`, for the migrations test that checks
/// every constraint refuses one.
pub(crate) fn session_bad_rows() -> Vec<(String, &'static str)> {
    let row = |hash: &str, sealed: &str, principal: &str, operator: &str, expires: &str| {
        format!(
            "insert into console_sessions (session_hash, sealed_credential, principal, operator, expires_at) \
             values ({hash}, {sealed}, '{principal}', {operator}, {expires})"
        )
    };
    let hash = "decode(repeat('ab', 32), 'hex')";
    let sealed = "decode(repeat('cd', 40), 'hex')";
    let later = "now() + interval '1 hour'";
    vec![
        (
            row("'\\x00'", sealed, "alice", "null", later),
            "console_sessions_session_hash_check",
        ),
        (
            row(hash, "'\\x00'", "alice", "null", later),
            "console_sessions_sealed_credential_check",
        ),
        (
            row(hash, sealed, "", "null", later),
            "console_sessions_principal_check",
        ),
        (
            row(hash, sealed, "alice", "'[]'", later),
            "console_sessions_operator_check",
        ),
        (
            row(hash, sealed, "alice", "null", "now() - interval '1 hour'"),
            "console_sessions_expire_after_creation",
        ),
    ]
}
