//! Authentication and scopes on every `/api` route, checked before anything else, and the
//! token settings of the binary.

use std::time::{Duration, Instant};

use crate::common::api::{
    ADMIN, OPERATOR, Reply, STRANGER, SUBMITTER, TestApp, approval, review_plan,
};
use serde_json::{Value, json};

/// One `/api` route: method, path, body, the scope it needs, and what the right token
/// gets.
struct Route {
    method: &'static str,
    path: String,
    body: Option<Value>,
    scope: &'static str,
    success: u16,
}

/// Every route, aimed at real records so the right token gets the success answer.
async fn every_route(app: &TestApp) -> Vec<Route> {
    let (run, request) = app.parked_run().await;
    let (other_run, _) = app.parked_run().await;
    let accepted = app
        .post_with(
            "/api/hitl/remove",
            &json!({ "runId": other_run, "operator": { "id": "op" } }),
            &[("Prefer", "wait=5")],
        )
        .await;
    let command = accepted.body["commandId"].as_str().unwrap().to_owned();
    let (removable, _) = app.parked_run().await;
    let thread = app.get(&format!("/api/runs/{run}"), ADMIN).await.body["threadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let route = |method, path: String, body, scope, success| Route {
        method,
        path,
        body,
        scope,
        success,
    };
    vec![
        route("GET", "/api/hitl/pending".into(), None, "operate", 200),
        route(
            "POST",
            "/api/hitl/resume".into(),
            Some(approval(&run, &request, "op")),
            "operate",
            202,
        ),
        route(
            "POST",
            "/api/hitl/remove".into(),
            Some(json!({ "runId": removable, "operator": { "id": "op" } })),
            "operate",
            202,
        ),
        route(
            "GET",
            format!("/api/hitl/commands/{command}"),
            None,
            "operate",
            200,
        ),
        route(
            "POST",
            "/api/runs".into(),
            Some(json!({ "brief": { "title": "t" }, "plan": review_plan() })),
            "submit",
            202,
        ),
        route("GET", format!("/api/runs/{run}"), None, "operate", 200),
        route(
            "GET",
            format!("/api/runs?threadId={thread}"),
            None,
            "operate",
            200,
        ),
    ]
}

async fn call(app: &TestApp, route: &Route, authorization: Option<&str>) -> Reply {
    let mut request = match route.method {
        "GET" => app.client.get(app.url(&route.path)),
        _ => app.client.post(app.url(&route.path)),
    };
    if let Some(a) = authorization {
        request = request.header("Authorization", a);
    }
    if let Some(body) = &route.body {
        request = request.json(body);
    }
    app.send(request).await
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_eq!(
        reply.body,
        json!({ "error": { "code": "unauthorized",
                           "message": "a valid bearer token is required", "details": null } }),
        "{what}: one body for every refusal"
    );
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
}

#[tokio::test]
async fn every_api_route_refuses_missing_or_unknown_tokens_and_wrong_scopes_and_serves_the_right_one()
 {
    let app = TestApp::spawn().await;
    for route in every_route(&app).await {
        let what = format!("{} {}", route.method, route.path);
        for authorization in [
            None,
            Some(format!("Bearer {STRANGER}")),
            Some("Bearer".to_owned()),
            Some(format!("Basic {ADMIN}")),
            Some(format!("Bearer {ADMIN}x")),
        ] {
            let reply = call(&app, &route, authorization.as_deref()).await;
            assert_unauthorized(&reply, &what);
        }
        let (wrong, right) = match route.scope {
            "operate" => (SUBMITTER, OPERATOR),
            _ => (OPERATOR, SUBMITTER),
        };
        let reply = call(&app, &route, Some(&format!("Bearer {wrong}"))).await;
        assert_eq!(reply.status, 403, "{what}: {reply:?}");
        assert_eq!(reply.code(), "forbidden");
        assert_eq!(
            reply.body["error"]["details"]["requiredScope"], route.scope,
            "{what}"
        );
        let reply = call(&app, &route, Some(&format!("bearer {right}"))).await;
        assert_eq!(reply.status, route.success, "{what}: {reply:?}");
        for token in [ADMIN, OPERATOR, SUBMITTER, STRANGER] {
            assert!(!reply.body.to_string().contains(token), "{what}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn authentication_comes_before_routing_parsing_and_validation() {
    let app = TestApp::spawn().await;
    let bad_json = |token: Option<&str>| {
        let mut r = app
            .client
            .post(app.url("/api/hitl/resume"))
            .header("Content-Type", "application/json")
            .body("{not json");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    assert_unauthorized(&app.send(bad_json(None)).await, "malformed body");
    assert_eq!(app.send(bad_json(Some(SUBMITTER))).await.status, 403);
    assert_eq!(app.send(bad_json(Some(OPERATOR))).await.status, 400);

    let unknown = app.send(app.client.get(app.url("/api/nothing/here"))).await;
    assert_unauthorized(&unknown, "unknown route");
    let unknown = app.get("/api/nothing/here", OPERATOR).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.code(), "not_found");

    let wrong_method = app.send(app.client.delete(app.url("/api/runs"))).await;
    assert_unauthorized(&wrong_method, "wrong method");
    let wrong_method = app
        .send(app.client.delete(app.url("/api/runs")).bearer_auth(ADMIN))
        .await;
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    assert_eq!(wrong_method.code(), "method_not_allowed");

    let health = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(health.status, 200, "probes need no token");
    app.stop().await;
}

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(crate::common::service_binary());
    // Every case here must be refused before any database is opened; were one not, it
    // fails for want of server binaries instead of starting a cluster in the checkout.
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("API_KEY")
        .env_remove("API_TOKENS")
        .env(
            "HITL_DATA_DIR",
            std::env::temp_dir().join("hitl-never-started"),
        )
        .env("HITL_PG_BIN_DIR", "/nonexistent/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_api_tokens_setting_is_refused_at_start_naming_it_without_echoing_tokens() {
    let secret = "a-secret-token-nobody-may-see";
    for value in [
        format!("ops:{secret}:admin"),
        format!("ops:{secret}"),
        format!("ops:operate:{secret}"),
        format!("ops:{secret}:operate;ci:{secret}:submit"),
    ] {
        let (ok, stderr) = run_binary(&["serve"], &[("API_TOKENS", &value)]);
        assert!(!ok, "{value}");
        assert!(stderr.contains("--api-tokens (API_TOKENS)"), "{stderr}");
        assert!(!stderr.contains(secret), "{stderr}");
    }
    let (ok, stderr) = run_binary(
        &["api"],
        &[
            ("API_KEY", secret),
            ("API_TOKENS", &format!("ops:{secret}:operate")),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("API_TOKENS") && !stderr.contains(secret),
        "{stderr}"
    );
    let (ok, stderr) = run_binary(&["serve"], &[("HITL_MAX_BODY", "lots")]);
    assert!(!ok);
    assert!(stderr.contains("--max-body"), "{stderr}");
}

#[tokio::test]
async fn serve_without_any_token_prints_a_generated_one_that_authenticates() {
    let db = crate::common::fresh_db().await;
    let logs = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let service = crate::common::ServiceProcess::start_until(
        &["api"],
        &[
            ("DATABASE_URL", &db.url),
            ("LISTEN_ADDR", &addr),
            ("API_KEY", ""),
            ("API_TOKENS", ""),
        ],
        logs.path(),
        "hitl-orchestrator api key: ",
    );
    let token = service.base_url.clone();
    assert_eq!(token.len(), 64, "{token}");
    let client = crate::common::http_client();
    let url = format!("http://{addr}/api/hitl/pending");
    let started = Instant::now();
    let answer = loop {
        match client.get(&url).bearer_auth(&token).send().await {
            Ok(r) => break r,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                crate::common::poll_pause().await;
            }
            Err(e) => panic!("the service did not answer: {e}"),
        }
    };
    assert_eq!(answer.status(), 200);
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!service.log().contains(&token), "the token is not logged");
}
