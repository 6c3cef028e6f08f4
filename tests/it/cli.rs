//! The command line: every role and setting is documented in `--help`, and bad settings
//! stop the process at start with a message naming the setting.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(crate::common::service_binary());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("API_KEY")
        .env_remove("LISTEN_ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_role() {
    let (ok, stdout, _) = run(&["--help"], &[]);
    assert!(ok);
    for role in ["serve", "api", "worker", "migrate"] {
        assert!(stdout.contains(role), "{role} in:\n{stdout}");
    }
}

#[test]
fn each_role_documents_its_settings_and_their_environment_variables() {
    let common_vars = [
        "DATABASE_URL",
        "HITL_DATA_DIR",
        "HITL_ENABLED",
        "HITL_PG_BIN_DIR",
        "HITL_DB_MAX_CONNECTIONS",
        "HITL_DB_ACQUIRE_TIMEOUT",
        "HITL_DB_STARTUP_TIMEOUT",
        "HITL_LOG_FORMAT",
    ];
    for role in ["serve", "api", "worker", "migrate"] {
        let (ok, stdout, _) = run(&[role, "--help"], &[]);
        assert!(ok, "{role} --help");
        for var in common_vars {
            assert!(stdout.contains(var), "{role} --help names {var}:\n{stdout}");
        }
    }
    for role in ["serve", "api"] {
        let (_, stdout, _) = run(&[role, "--help"], &[]);
        for var in ["LISTEN_ADDR", "API_KEY", "127.0.0.1:8080"] {
            assert!(stdout.contains(var), "{role} --help names {var}:\n{stdout}");
        }
    }
}

#[test]
fn a_bad_listen_address_is_refused_at_start_naming_the_setting() {
    let (ok, _, stderr) = run(&["serve"], &[("LISTEN_ADDR", "not-an-address")]);
    assert!(!ok);
    assert!(stderr.contains("--listen-addr"), "{stderr}");
}

#[test]
fn a_bad_database_url_is_refused_at_start_without_echoing_it() {
    let (ok, _, stderr) = run(
        &["migrate"],
        &[("DATABASE_URL", "mysql://user:hunter2@localhost/db")],
    );
    assert!(!ok);
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the URL's password is not printed: {stderr}"
    );
}

#[test]
fn a_short_api_key_is_refused_at_start() {
    let (ok, _, stderr) = run(&["serve"], &[("API_KEY", "short")]);
    assert!(!ok);
    assert!(
        stderr.contains("--api-key") && stderr.contains("16 characters"),
        "{stderr}"
    );
}

#[test]
fn the_old_agent_attempts_setting_is_refused_naming_its_replacement_and_agent_settings_are_checked()
{
    let (ok, _, stderr) = run(&["worker"], &[("HITL_AGENT_MAX_ATTEMPTS", "3")]);
    assert!(!ok);
    assert!(
        stderr.contains("HITL_AGENT_MAX_ATTEMPTS") && stderr.contains("HITL_AGENT_RETRY_FOR"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(
        &["worker"],
        &[
            ("HITL_AGENT_BACKOFF", "10s"),
            ("HITL_AGENT_BACKOFF_MAX", "1s"),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("HITL_AGENT_BACKOFF_MAX"), "{stderr}");
    let (ok, _, stderr) = run(&["worker"], &[("HITL_AGENT_MAX_RESPONSE", "lots")]);
    assert!(!ok);
    assert!(stderr.contains("--agent-max-response"), "{stderr}");
    // An unreadable CA file stops the process before it opens any database.
    let (ok, _, stderr) = run(
        &["worker"],
        &[("HITL_AGENT_CA_FILE", "/nonexistent/agents-ca.pem")],
    );
    assert!(!ok);
    assert!(
        stderr.contains("HITL_AGENT_CA_FILE /nonexistent/agents-ca.pem"),
        "{stderr}"
    );
    let (_, stdout, _) = run(&["worker", "--help"], &[]);
    for var in [
        "HITL_AGENT_RETRY_FOR",
        "HITL_AGENT_BACKOFF_MAX",
        "HITL_AGENT_MAX_RESPONSE",
        "HITL_AGENT_CA_FILE",
    ] {
        assert!(stdout.contains(var), "worker --help names {var}");
    }
}

#[test]
fn jwt_settings_are_checked_at_start() {
    let (ok, _, stderr) = run(&["api"], &[("HITL_JWKS_URL", "https://idp.example/jwks")]);
    assert!(!ok);
    assert!(
        stderr.contains("HITL_JWT_ISSUER") && stderr.contains("HITL_JWT_AUDIENCE"),
        "{stderr}"
    );
    let data = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(
        &["api"],
        &[
            ("HITL_JWKS_URL", "http://idp.example/jwks"),
            ("HITL_JWT_ISSUER", "https://idp.example"),
            ("HITL_JWT_AUDIENCE", "hitl"),
            ("HITL_DATA_DIR", data.path().to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("HITL_JWKS_URL must be an https:// URL"),
        "{stderr}"
    );
}
