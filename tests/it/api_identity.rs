//! Bound identities through the real API: tokens from a hashed tokens file, each bound to
//! an operator (who may leave `operator` out, and may not name another) or acting for
//! the operator the body names; the audit names the credential beside the operator; the
//! `token` subcommand's entry works; SIGHUP adds and revokes tokens in a running service,
//! and a broken file names its line and leaves the old tokens in force; no token or hash
//! in the logs.

use std::time::Duration;

use hitl_orchestrator::identity::new_token;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::ServiceProcess;
use crate::common::api::{AppOptions, TestApp, approval};

fn entry(name: &str, sha256: &str, bound: Option<&str>) -> String {
    let who = match bound {
        Some(id) => format!("operator = {{ id = \"{id}\", displayName = \"{id} (bound)\" }}\n"),
        None => "actAs = true\n".to_owned(),
    };
    format!("[[token]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nscopes = [\"operate\"]\n{who}\n")
}

async fn resume_with(app: &TestApp, token: &str, body: &Value) -> crate::common::api::Reply {
    app.post("/api/hitl/resume", token, body).await
}

#[tokio::test]
async fn a_bound_token_acts_as_its_operator_only_and_the_audit_names_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_hash) = new_token().unwrap();
    let (bot, bot_hash) = new_token().unwrap();
    // A short token whose hash is listed still does not authenticate.
    let short = "short-token-of-31-characters-xx";
    assert_eq!(short.len(), 31);
    let short_hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(short.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        entry("alice", &alice_hash, Some("alice"))
            + &entry("chat-bot", &bot_hash, None)
            + &entry("short", &short_hash, Some("eve")),
    )
    .unwrap();
    let app = TestApp::spawn_with(AppOptions {
        tokens_file: Some(file.clone()),
        ..AppOptions::default()
    })
    .await;
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(&alice),
        "only hashes in the file"
    );
    assert_eq!(app.get("/api/hitl/pending", short).await.status, 401);

    // Bound: naming another operator is refused and changes nothing.
    let (run, request) = app.parked_run().await;
    let before = app.dump().await;
    let as_mallory = approval(&run, &request, "mallory");
    let refused = resume_with(&app, &alice, &as_mallory).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "operator_mismatch"),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["details"]["boundOperator"], "alice");
    assert_eq!(app.dump().await, before);

    // Bound, operator left out: filled in from the binding.
    let mut body = approval(&run, &request, "alice");
    body.as_object_mut().unwrap().remove("operator");
    let accepted = resume_with(&app, &alice, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = app.wait_for_run(&run, "completed").await;
    let resume = crate::common::api::audit_event(&done, "resume");
    assert_eq!(resume["operator"]["id"], "alice");
    assert_eq!(resume["operator"]["displayName"], "alice (bound)");
    assert_eq!(
        resume["principal"], "alice",
        "the credential beside the operator"
    );
    let created = &done["auditLog"][0];
    assert_eq!(
        (created["action"].as_str(), created["principal"].as_str()),
        (Some("run_created"), Some("ci"))
    );

    // Act-as: the body must name the operator, and the audit names both.
    let (run, request) = app.parked_run().await;
    let mut body = approval(&run, &request, "carol");
    body.as_object_mut().unwrap().remove("operator");
    let missing = resume_with(&app, &bot, &body).await;
    assert_eq!(
        (missing.status, missing.field()),
        (422, "operator"),
        "{missing:?}"
    );
    let accepted = resume_with(&app, &bot, &approval(&run, &request, "carol")).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = app.wait_for_run(&run, "completed").await;
    let resume = crate::common::api::audit_event(&done, "resume");
    assert_eq!(
        (
            resume["operator"]["id"].as_str(),
            resume["principal"].as_str()
        ),
        (Some("carol"), Some("chat-bot"))
    );
    app.stop().await;
}

/// `hitl-orchestrator token …`: (the token, its entry).
fn token_command(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(crate::common::service_binary())
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let token = lines.next().unwrap().to_owned();
    let entry: String = lines.map(|l| format!("{l}\n")).collect();
    (token, entry)
}

fn status_with(base: &str, token: &str) -> u16 {
    let (status, _) = crate::common::http_get_with(base, "/api/hitl/pending", token);
    status
}

#[test]
fn sighup_adds_and_revokes_tokens_and_a_broken_file_names_its_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_entry) = token_command(&["--name", "first", "--operator", "alice"]);
    assert!(first.len() >= 32);
    assert!(first_entry.contains("operator = { id = \"alice\" }") && !first_entry.contains(&first));
    let (second, second_entry) = token_command(&["--name", "second", "--scopes", "operate,submit"]);
    assert!(second_entry.contains("actAs = true"));
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, &first_entry).unwrap();
    let data = dir.path().join("data");
    // And an identity provider's keys, from a file.
    let (key, jwk) = crate::api_jwt::es256("file-key");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let jwt = crate::api_jwt::sign(
        jsonwebtoken::Algorithm::ES256,
        "file-key",
        &key,
        &crate::api_jwt::claims("dana", "operate"),
    );
    let env = [
        ("HITL_TOKENS_FILE", file.to_str().unwrap()),
        ("HITL_DATA_DIR", data.to_str().unwrap()),
        ("HITL_JWKS_URL", jwks.to_str().unwrap()),
        ("HITL_JWT_ISSUER", crate::api_jwt::ISSUER),
        ("HITL_JWT_AUDIENCE", crate::api_jwt::AUDIENCE),
        ("API_KEY", ""),
        ("API_TOKENS", ""),
    ];
    let mut service = ServiceProcess::start(&["serve"], &env, dir.path());
    let base = service.base_url.clone();
    assert_eq!(status_with(&base, &first), 200);
    assert_eq!(status_with(&base, &second), 401);
    assert_eq!(status_with(&base, &jwt), 200, "a JWT of the provider");

    let hup = |service: &ServiceProcess| {
        let pid = nix::unistd::Pid::from_raw(service.child.id() as i32);
        nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    };
    let eventually = |token: &str, want: u16| {
        let started = std::time::Instant::now();
        while status_with(&base, token) != want {
            assert!(started.elapsed() < Duration::from_secs(20), "never {want}");
            crate::common::poll_pause_blocking();
        }
    };
    // Add the second, revoke the first.
    std::fs::write(&file, &second_entry).unwrap();
    hup(&service);
    eventually(&second, 200);
    eventually(&first, 401);
    // A broken file: named by line in the log, the tokens in force stay.
    std::fs::write(&file, format!("{second_entry}\n[[token]]\nname = 7\n")).unwrap();
    hup(&service);
    let started = std::time::Instant::now();
    while !service.log().contains("tokens file not reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            service.log()
        );
        crate::common::poll_pause_blocking();
    }
    assert!(service.log().contains("line 8"), "{}", service.log());
    assert_eq!(
        status_with(&base, &second),
        200,
        "the previous tokens stay in force"
    );
    assert!(service.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    let log = service.log();
    for secret in [&first, &second, &jwt] {
        assert!(!log.contains(secret.as_str()), "no token or JWT in the log");
    }
    for hash in [&first_entry, &second_entry] {
        let sha = hash.lines().find(|l| l.starts_with("sha256")).unwrap();
        let sha = sha.split('"').nth(1).unwrap();
        assert!(!log.contains(sha), "no hash in the log");
    }
    // A broken file at start stops the process naming the line.
    let out = std::process::Command::new(crate::common::service_binary())
        .arg("api")
        .env("HITL_TOKENS_FILE", &file)
        .env("HITL_DATA_DIR", &data)
        .env_remove("API_KEY")
        .env_remove("API_TOKENS")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 8"), "{stderr}");
}
