//! The integration suite, in one test binary: one link, and one throwaway PostgreSQL
//! cluster for the whole process (`common`), each test in a fresh database cloned from a
//! migrated template. Each module is one area, named as before.
//!
//! Two suites stay binaries of their own because they depend on process-wide state:
//! `tests/api_logging.rs` (tracing's per-callsite interest cache) and
//! `tests/telemetry.rs` (the process's one metrics registry, whose database gauges any
//! other test's app would overwrite).

#[path = "../common/mod.rs"]
mod common;

mod agent;
mod agent_faults;
mod agent_items;
mod api_approvals;
mod api_assignees;
mod api_auth;
mod api_bad_input;
mod api_boundary;
mod api_claims;
mod api_commands;
mod api_events;
mod api_hitl;
mod api_identity;
mod api_jwt;
mod api_requests;
mod api_runs;
mod audit;
mod bench;
mod cli;
mod compose;
mod console;
mod console_browser;
mod console_browser_live;
mod console_live;
mod console_sessions;
mod embedded;
mod engine;
mod examples;
mod kubernetes;
mod migrations;
mod notifications;
mod openapi;
mod operator_cli;
mod persistence_commands;
mod persistence_runs;
mod pooler;
mod rehydrate;
mod retention;
mod retry;
mod statements;
mod worker;

/// A fixed sleep in a test is a guess that something has happened by then; tests wait
/// for conditions instead (polls, `TestApp::settle`). A sleep is allowed only as a poll's
/// pause or where the test is about time itself, and says so on its line or the line
/// above.
#[test]
fn no_test_sleeps_except_to_poll_or_where_time_is_what_it_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut dirs = vec![root];
    let mut unexplained = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                // The needle is split so that this check does not find itself.
                if !line.contains(concat!("sleep", "(")) {
                    continue;
                }
                let context = [*line, if i > 0 { lines[i - 1] } else { "" }].join(" ");
                if !(context.contains("about time") || context.contains("the poll's pause")) {
                    unexplained.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(unexplained.is_empty(), "{unexplained:#?}");
}
