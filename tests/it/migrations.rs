//! The schema: migrations apply and re-apply cleanly, concurrently too, and every foreign
//! key and CHECK constraint rejects a row that breaks it.

use std::collections::BTreeSet;

use hitl_orchestrator::db;
use sqlx::{Connection, PgConnection, PgPool};

async fn applied_migrations(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select (select count(*) from public._sqlx_migrations), \
                (select count(*) from apalis._sqlx_migrations)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// An empty database (not from the migrated template).
async fn empty_database() -> PgPool {
    let scratch = crate::common::fresh_db().await;
    let name = format!("{}_empty", scratch.name);
    let mut conn = PgConnection::connect(&scratch.url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create database \"{name}\" template template0"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    PgPool::connect(&crate::common::url_with_database(&scratch.url, &name))
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_reapplying_is_a_no_op() {
    let pool = empty_database().await;
    db::migrate(&pool).await.unwrap();
    let first = applied_migrations(&pool).await;
    assert!(
        first.0 >= 1 && first.1 >= 1,
        "both migration sets recorded: {first:?}"
    );
    db::check_ready(&pool).await.unwrap();

    db::migrate(&pool).await.unwrap();
    assert_eq!(applied_migrations(&pool).await, first);
}

#[tokio::test]
async fn processes_migrating_at_once_apply_each_migration_exactly_once() {
    let pool = empty_database().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move { db::migrate(&pool).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let expected_ours = db::MIGRATOR.iter().count() as i64;
    assert_eq!(applied_migrations(&pool).await.0, expected_ours);
    db::check_ready(&pool).await.unwrap();
}

async fn indexes_of(pool: &PgPool, table: &str) -> BTreeSet<String> {
    let names: Vec<String> = sqlx::query_scalar(
        "select indexname::text from pg_indexes where schemaname = 'apalis' and tablename = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    names.into_iter().collect()
}

#[tokio::test]
async fn the_queue_keeps_one_index_per_lookup_and_each_duplicate_its_covering_index() {
    let pool = empty_database().await;
    db::migrate(&pool).await.unwrap();
    let jobs = indexes_of(&pool, "jobs").await;
    let workers = indexes_of(&pool, "workers").await;
    for (dropped, covering, on) in [
        ("unique_job_id", "jobs_pkey", &jobs),
        ("lidx", "idx_apalis_jobs_lock_by", &jobs),
        ("lsidx", "idx_apalis_workers_last_seen", &workers),
        ("wtidx", "idx_apalis_workers_worker_type", &workers),
    ] {
        assert!(!on.contains(dropped), "{dropped} is still there: {on:?}");
        assert!(on.contains(covering), "{covering} is gone: {on:?}");
    }
    // What the claim, the orphan scan, the cleanup and apalis's own fetch read by.
    for kept in [
        "idx_apalis_jobs_fetch_partial",
        "idx_jobs_idempotency_key",
        "hitl_jobs_due_idx",
        "hitl_jobs_claimed_idx",
        "hitl_jobs_finished_idx",
        "hitl_jobs_singleton_idx",
        "hitl_jobs_live_run_idx",
        "hitl_jobs_live_request_idx",
    ] {
        assert!(jobs.contains(kept), "{kept} is gone: {jobs:?}");
    }
    // The foreign key from jobs to workers was made on this one: it has to stay.
    assert!(workers.contains("unique_worker_id"), "{workers:?}");

    // No two indexes of the queue left with the same definition (name aside).
    let repeated: Vec<String> = sqlx::query_scalar(
        "select string_agg(indexname, ', ') from pg_indexes where schemaname = 'apalis' \
         group by tablename, regexp_replace(indexdef, '^CREATE (UNIQUE )?INDEX \\S+ ON ', '') \
         having count(*) > 1 and not bool_or(indexname = 'unique_worker_id')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(repeated.is_empty(), "duplicate indexes: {repeated:?}");
}

const FIXTURE: &str = r#"
insert into briefs (brief_id, title) values ('brief_1', 'A brief');
insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan)
    values ('run_1', 'thread_1', 'brief_1', 'running', '{"nodes": []}');
insert into hitl_requests (request_id, run_id, thread_id, brief_id, node_id, operator_prompt, response_types)
    values ('hitl_req_1', 'run_1', 'thread_1', 'brief_1', 'review', 'Approve?', array['approval']);
update orchestrator_runs set status = 'awaiting_hitl', pending_request_id = 'hitl_req_1' where run_id = 'run_1';
insert into hitl_commands (command_id, kind, run_id, request_id, payload, operator)
    values ('cmd_1', 'resume', 'run_1', 'hitl_req_1', '{}', '{}');
"#;

fn run_row(
    run_id: &str,
    thread: &str,
    brief: &str,
    status: &str,
    plan: &str,
    extra: &str,
) -> String {
    format!(
        "insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan{}) values \
         ('{run_id}', '{thread}', '{brief}', '{status}', '{plan}'{})",
        extra
            .split_once('=')
            .map_or(String::new(), |(c, _)| format!(", {c}")),
        extra
            .split_once('=')
            .map_or(String::new(), |(_, v)| format!(", {v}")),
    )
}

fn request_row(
    request_id: &str,
    run: &str,
    node: &str,
    prompt: &str,
    types: &str,
    extra: &str,
) -> String {
    format!(
        "insert into hitl_requests (request_id, run_id, thread_id, brief_id, node_id, operator_prompt, \
         response_types{}) values ('{request_id}', '{run}', 'thread_1', 'brief_1', '{node}', '{prompt}', \
         {types}{})",
        extra
            .split_once('=')
            .map_or(String::new(), |(c, _)| format!(", {c}")),
        extra
            .split_once('=')
            .map_or(String::new(), |(_, v)| format!(", {v}")),
    )
}

fn command_row(command_id: &str, kind: &str, run: &str, request: &str, extra: &str) -> String {
    format!(
        "insert into hitl_commands (command_id, kind, run_id, request_id, payload, operator{}) values \
         ('{command_id}', '{kind}', '{run}', {request}, '{{}}', '{{}}'{})",
        extra
            .split_once('=')
            .map_or(String::new(), |(c, _)| format!(", {c}")),
        extra
            .split_once('=')
            .map_or(String::new(), |(_, v)| format!(", {v}")),
    )
}

fn response_row(response_id: &str, request: &str, kind: &str, extra: &str) -> String {
    format!(
        "insert into hitl_responses (response_id, request_id, run_id, response_type{}) values \
         ('{response_id}', '{request}', 'run_1', '{kind}'{})",
        extra
            .split_once('=')
            .map_or(String::new(), |(c, _)| format!(", {c}")),
        extra
            .split_once('=')
            .map_or(String::new(), |(_, v)| format!(", {v}")),
    )
}

fn audit_row(run: &str, version: i64, action: &str, extra: &str) -> String {
    format!(
        "insert into run_audit_events (run_id, run_version, action, to_status{}) values \
         ('{run}', {version}, '{action}', 'running'{})",
        extra
            .split_once('=')
            .map_or(String::new(), |(c, _)| format!(", {c}")),
        extra
            .split_once('=')
            .map_or(String::new(), |(_, v)| format!(", {v}")),
    )
}

fn approval_row(request: &str, approver: &str, command: &str, operator: &str) -> String {
    format!(
        "insert into hitl_approvals (request_id, approver, command_id, operator) values \
         ('{request}', '{approver}', '{command}', '{operator}')"
    )
}

/// One bad row per constraint: (statement, the constraint that must reject it).
fn bad_rows() -> Vec<(String, &'static str)> {
    let ok_plan = r#"{"nodes": []}"#;
    let approval = "array['approval']";
    vec![
        ("insert into briefs (brief_id, title) values ('b_2', 'x')".into(), "briefs_brief_id_check"),
        ("insert into briefs (brief_id, title) values ('brief_2', '')".into(), "briefs_title_check"),
        (run_row("r_2", "t2", "brief_1", "queued", ok_plan, ""), "orchestrator_runs_run_id_check"),
        (run_row("run_2", "", "brief_1", "queued", ok_plan, ""), "orchestrator_runs_thread_id_check"),
        (run_row("run_2", "t2", "brief_9", "queued", ok_plan, ""), "orchestrator_runs_brief_id_fkey"),
        (run_row("run_2", "t2", "brief_1", "paused", ok_plan, ""), "orchestrator_runs_status_check"),
        (run_row("run_2", "t2", "brief_1", "queued", "[]", ""), "orchestrator_runs_plan_check"),
        (run_row("run_2", "t2", "brief_1", "queued", ok_plan, "execution_context='[]'"), "orchestrator_runs_execution_context_check"),
        (run_row("run_2", "t2", "brief_1", "queued", ok_plan, "runner_metadata='\"x\"'"), "orchestrator_runs_runner_metadata_check"),
        (run_row("run_2", "t2", "brief_1", "queued", ok_plan, "version=0"), "orchestrator_runs_version_check"),
        (run_row("run_2", "t2", "brief_1", "running", ok_plan, "agent_retry='[]'"), "orchestrator_runs_agent_retry_check"),
        ("insert into run_runner_states (run_id, node_id, state) values ('run_9', 'n', '{}')".into(), "run_runner_states_run_id_fkey"),
        (run_row("run_2", "t2", "brief_1", "completed", ok_plan, ""), "runs_finished_iff_terminal"),
        (run_row("run_2", "t2", "brief_1", "running", ok_plan, "finished_at=now()"), "runs_finished_iff_terminal"),
        (run_row("run_2", "t2", "brief_1", "awaiting_hitl", ok_plan, ""), "runs_pending_request_iff_awaiting"),
        ("update orchestrator_runs set pending_request_id = 'hitl_req_9' where run_id = 'run_1'".into(), "runs_pending_request_fk"),
        (request_row("req_2", "run_1", "n", "p", approval, ""), "hitl_requests_request_id_check"),
        (request_row("hitl_req_2", "run_9", "n", "p", approval, ""), "hitl_requests_run_id_thread_id_brief_id_fkey"),
        (request_row("hitl_req_2", "run_1", "", "p", approval, ""), "hitl_requests_node_id_check"),
        (request_row("hitl_req_2", "run_1", "n", "", approval, ""), "hitl_requests_operator_prompt_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", "array['maybe']", ""), "hitl_requests_response_types_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", "array[]::text[]", ""), "hitl_requests_response_types_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "options='{}'"), "hitl_requests_options_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "items='[]'"), "hitl_requests_items_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "assignees='[]'"), "hitl_requests_assignees_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "follow_up='[]'"), "hitl_requests_follow_up_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "approvals_required=0"), "hitl_requests_approvals_required_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "claimed_by, claim_expires_at='[]', now()"), "hitl_requests_claimed_by_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "claimed_by='{}'"), "requests_claim_has_lease"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "claim_expires_at=now()"), "requests_claim_has_lease"),
        (approval_row("hitl_req_9", "operator:a", "cmd_1", "{}"), "hitl_approvals_request_id_fkey"),
        (approval_row("hitl_req_1", "", "cmd_1", "{}"), "hitl_approvals_approver_check"),
        (approval_row("hitl_req_1", "operator:a", "cmd_9", "{}"), "hitl_approvals_command_id_fkey"),
        (approval_row("hitl_req_1", "operator:a", "cmd_1", "[]"), "hitl_approvals_operator_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", "array['edit', 'maybe']", ""), "hitl_requests_response_types_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "contract_summary='[]'"), "hitl_requests_contract_summary_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "status='open'"), "hitl_requests_status_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "expires_at, on_timeout=now(), 'ignore'"), "hitl_requests_on_timeout_check"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "expires_at=now()"), "requests_deadline_has_action"),
        (request_row("hitl_req_2", "run_1", "n", "p", approval, "status='resolved'"), "requests_resolved_iff_not_pending"),
        (command_row("c_2", "remove", "run_1", "null", ""), "hitl_commands_command_id_check"),
        (command_row("cmd_2", "pause", "run_1", "null", ""), "hitl_commands_kind_check"),
        (command_row("cmd_2", "remove", "run_9", "null", ""), "hitl_commands_run_id_fkey"),
        (command_row("cmd_2", "remove", "run_1", "'hitl_req_9'", ""), "hitl_commands_request_id_run_id_fkey"),
        (command_row("cmd_2", "remove", "run_1", "null", "idempotency_key=''"), "hitl_commands_idempotency_key_check"),
        ("insert into hitl_commands (command_id, kind, run_id, payload, operator) values ('cmd_2', 'remove', 'run_1', '[]', '{}')".into(), "hitl_commands_payload_check"),
        ("insert into hitl_commands (command_id, kind, run_id, payload, operator) values ('cmd_2', 'remove', 'run_1', '{}', '[]')".into(), "hitl_commands_operator_check"),
        (command_row("cmd_2", "remove", "run_1", "null", "status='done'"), "hitl_commands_status_check"),
        (command_row("cmd_2", "remove", "run_1", "null", "attempts=-1"), "hitl_commands_attempts_check"),
        (command_row("cmd_2", "remove", "run_1", "null", "principal=''"), "hitl_commands_principal_check"),
        (command_row("cmd_2", "remove", "run_1", "null", "approver=''"), "hitl_commands_approver_check"),
        (command_row("cmd_2", "resume", "run_1", "null", ""), "commands_resume_names_request"),
        (command_row("cmd_2", "remove", "run_1", "null", "status='succeeded'"), "commands_finished_iff_final"),
        (command_row("cmd_2", "remove", "run_1", "null", "status, finished_at='failed', now()"), "commands_failed_has_error"),
        (response_row("resp_2", "hitl_req_1", "rejection", ""), "hitl_responses_response_id_check"),
        (response_row("hitl_resp_2", "hitl_req_9", "rejection", ""), "hitl_responses_request_id_run_id_fkey"),
        (response_row("hitl_resp_2", "hitl_req_1", "maybe", ""), "hitl_responses_response_type_check"),
        (response_row("hitl_resp_2", "hitl_req_1", "rejection", "position=-1"), "hitl_responses_position_check"),
        (response_row("hitl_resp_2", "hitl_req_1", "rejection", "command_id='cmd_9'"), "hitl_responses_command_id_fkey"),
        (response_row("hitl_resp_2", "hitl_req_1", "approval", ""), "responses_approval_has_answer"),
        (response_row("hitl_resp_2", "hitl_req_1", "option", ""), "responses_option_has_id"),
        (response_row("hitl_resp_2", "hitl_req_1", "freeform", ""), "responses_freeform_has_text"),
        (response_row("hitl_resp_2", "hitl_req_1", "rejection", "item_id=''"), "hitl_responses_item_id_check"),
        (response_row("hitl_resp_2", "hitl_req_1", "edit", ""), "responses_edit_has_arguments"),
        (response_row("hitl_resp_2", "hitl_req_1", "edit", "edited_arguments='[1]'"), "responses_edit_has_arguments"),
        (response_row("hitl_resp_2", "hitl_req_1", "rejection", "edited_arguments='{}'"), "responses_edit_has_arguments"),
        (audit_row("run_9", 1, "resume", ""), "run_audit_events_run_id_fkey"),
        (audit_row("run_1", 0, "resume", ""), "run_audit_events_run_version_check"),
        (audit_row("run_1", 1, "dance", ""), "run_audit_events_action_check"),
        (audit_row("run_1", 1, "resume", "request_id='hitl_req_9'"), "run_audit_events_request_id_fkey"),
        (audit_row("run_1", 1, "resume", "command_id='cmd_9'"), "run_audit_events_command_id_fkey"),
        (audit_row("run_1", 1, "resume", "details='[]'"), "run_audit_events_details_check"),
        (audit_row("run_1", 1, "resume", "principal=''"), "run_audit_events_principal_check"),
        (audit_row("run_1", 1, "resume", "prev_hash='\\x00'"), "run_audit_events_prev_hash_check"),
        (audit_row("run_1", 1, "resume", "hash='\\x00'"), "run_audit_events_hash_check"),
        (audit_row("run_1", 1, "resume", "hash, signature, key_id='\\x0000000000000000000000000000000000000000000000000000000000000000', '\\x00', 'abcdef0123456789'"), "run_audit_events_signature_check"),
        (audit_row("run_1", 1, "resume", "hash, signature, key_id='\\x0000000000000000000000000000000000000000000000000000000000000000', '\\x00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000', 'XYZ'"), "run_audit_events_key_id_check"),
        (audit_row("run_1", 1, "resume", "trace_id='abc'"), "run_audit_events_trace_id_check"),
        (audit_row("run_1", 1, "resume", "hash, signature='\\x0000000000000000000000000000000000000000000000000000000000000000', '\\x00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'"), "audit_signature_has_key"),
        (audit_row("run_1", 1, "resume", "signature, key_id='\\x00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000', 'abcdef0123456789'"), "audit_signed_events_are_chained"),
        ("insert into audit_signing_keys (key_id, public_key) values ('x', '\\x00')".into(), "audit_signing_keys_key_id_check"),
        ("insert into audit_signing_keys (key_id, public_key) values ('abcdef0123456789', '\\x00')".into(), "audit_signing_keys_public_key_check"),
        (audit_row("run_1", 1, "resume", "from_status='paused'"), "run_audit_events_from_status_check"),
        ("insert into run_audit_events (run_id, run_version, action, to_status) values ('run_1', 1, 'resume', 'paused')".into(), "run_audit_events_to_status_check"),
        ("insert into notification_channels (name, format, events) values ('a b', 'json', '{resumed}')".into(), "notification_channels_name_check"),
        ("insert into notification_channels (name, format, events) values ('a', 'xml', '{resumed}')".into(), "notification_channels_format_check"),
        ("insert into notification_channels (name, format, events) values ('a', 'json', '{}')".into(), "notification_channels_events_check"),
        ("insert into notification_channels (name, format, events, expiring_notice_seconds) values ('a', 'json', '{request_expiring}', 0)".into(), "notification_channels_expiring_notice_seconds_check"),
        ("insert into notification_deliveries (delivery_id, channel, event_id, event, run_id, attempts) values (gen_random_uuid(), 'c', 1, 'resumed', 'run_1', -1)".into(), "notification_deliveries_attempts_check"),
        ("insert into notification_deliveries (delivery_id, channel, event_id, event, run_id) values (gen_random_uuid(), '', 1, 'resumed', 'run_1')".into(), "notification_deliveries_channel_check"),
        ("insert into notification_deliveries (delivery_id, channel, event_id, event, run_id) values (gen_random_uuid(), 'c', 1, '', 'run_1')".into(), "notification_deliveries_event_check"),
        ("insert into notification_deliveries (delivery_id, channel, event_id, event, run_id, last_error) values (gen_random_uuid(), 'c', 1, 'resumed', 'run_1', repeat('x', 301))".into(), "notification_deliveries_last_error_check"),
        ("insert into notification_deliveries (delivery_id, channel, event_id, event, run_id, status) values (gen_random_uuid(), 'c', 1, 'resumed', 'run_1', 'lost')".into(), "notification_deliveries_status_check"),
    ]
}

#[tokio::test]
async fn every_foreign_key_and_check_constraint_rejects_a_bad_row() {
    let db = crate::common::fresh_db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(FIXTURE))
        .execute(&db.pool)
        .await
        .unwrap();

    let mut covered = BTreeSet::new();
    for (sql, constraint) in bad_rows()
        .into_iter()
        .chain(crate::console_sessions::session_bad_rows())
    {
        let mut tx = db.pool.begin().await.unwrap();
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *tx)
            .await
            .expect_err(&format!("must be refused by {constraint}: {sql}"));
        let db_err = err
            .as_database_error()
            .unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db_err.constraint(), Some(constraint), "{sql}: {db_err}");
        assert!(
            matches!(db_err.code().as_deref(), Some("23503") | Some("23514")),
            "a foreign key or check violation: {sql}: {db_err}"
        );
        tx.rollback().await.unwrap();
        covered.insert(constraint.to_owned());
    }

    let all: Vec<String> = sqlx::query_scalar(
        "select conname::text from pg_constraint \
         where contype in ('c', 'f') and connamespace = 'public'::regnamespace",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let all: BTreeSet<String> = all.into_iter().collect();
    let untested: Vec<_> = all.difference(&covered).collect();
    assert!(
        untested.is_empty(),
        "constraints without a bad-row case: {untested:?}"
    );

    // The valid fixture itself was accepted, so the cases above fail for their own reason.
    let runs: i64 = sqlx::query_scalar("select count(*) from orchestrator_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);
}

/// An empty database migrated up to, not including, the migration named `before`.
async fn migrated_before(before: &str) -> PgPool {
    let pool = empty_database().await;
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < before {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    // Our migrations tune the queue's tables: the queue's schema comes first.
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn migration_7_moves_stored_runner_states_to_their_own_table_and_out_of_the_metadata() {
    let pool = migrated_before("20261202000007").await;
    sqlx::raw_sql(
        "insert into briefs (brief_id, title) values ('brief_1', 'b'); \
         insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan, runner_metadata) \
         values ('run_1', 't1', 'brief_1', 'running', '{\"nodes\": []}', \
                 '{\"cursor\": \"mail\", \"runnerState\": {\"mail\": {\"turn\": 1}, \"other\": [1, 2]}}'), \
                ('run_2', 't2', 'brief_1', 'running', '{\"nodes\": []}', '{\"cursor\": \"x\"}');",
    )
    .execute(&pool)
    .await
    .unwrap();

    db::migrate(&pool).await.unwrap();
    let moved: Vec<(String, String, String)> = sqlx::query_as(
        "select run_id, node_id, state from run_runner_states order by run_id, node_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved,
        vec![
            ("run_1".into(), "mail".into(), r#"{"turn": 1}"#.into()),
            ("run_1".into(), "other".into(), "[1, 2]".into()),
        ]
    );
    let metadata: Vec<serde_json::Value> =
        sqlx::query_scalar("select runner_metadata from orchestrator_runs order by run_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        metadata,
        vec![
            serde_json::json!({ "cursor": "mail" }),
            serde_json::json!({ "cursor": "x" })
        ]
    );
}

#[tokio::test]
async fn migration_8_gives_every_stored_request_its_one_item_and_every_answer_that_item() {
    let pool = migrated_before("20261202000008").await;
    sqlx::raw_sql(
        "insert into briefs (brief_id, title) values ('brief_1', 'b'); \
         insert into orchestrator_runs (run_id, thread_id, brief_id, status, plan) \
         values ('run_1', 't1', 'brief_1', 'running', '{\"nodes\": []}'); \
         insert into hitl_requests (request_id, run_id, thread_id, brief_id, node_id, operator_prompt, \
             response_types, options, status, resolved_at) \
         values ('hitl_req_1', 'run_1', 't1', 'brief_1', 'review', 'Approve?', \
                 array['approval', 'option'], '[{\"id\": \"a\", \"label\": \"A\"}]', 'resolved', now()); \
         insert into hitl_responses (response_id, request_id, run_id, response_type, approved) \
         values ('hitl_resp_1', 'hitl_req_1', 'run_1', 'approval', true);",
    )
    .execute(&pool)
    .await
    .unwrap();
    db::migrate(&pool).await.unwrap();
    let items: serde_json::Value = sqlx::query_scalar("select items from hitl_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        items,
        serde_json::json!([ { "itemId": "review", "kind": "question", "title": "Approve?", "tool": null,
                              "responseTypes": ["approval", "option"],
                              "options": [ { "id": "a", "label": "A" } ] } ])
    );
    let item: Option<String> = sqlx::query_scalar("select item_id from hitl_responses")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(item.as_deref(), Some("review"));
}
