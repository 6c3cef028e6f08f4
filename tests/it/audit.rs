//! The tamper-evident audit trail against a real PostgreSQL: untouched runs verify
//! intact and signed; each tampering done with SQL — a field edited, an event deleted,
//! one inserted, two swapped, the tail cut, a whole chain recomputed without the key —
//! is named; events written before the chain existed are chained at start; the export
//! pages through 10,000 events without a gap or a repeat while others are written; the
//! public keys need no token and the rest needs the `audit` scope.

use std::collections::BTreeSet;

use hitl_orchestrator::persistence::audit::{self, ChainFields};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::api::{OPERATOR, TestApp, approval, spawn_with_tokens};

async fn app() -> (TestApp, String, tempfile::TempDir) {
    let (app, tokens, dir) =
        spawn_with_tokens(&[("auditor", "\"audit\"", "operator = { id = \"auditor\" }")]).await;
    (app, tokens[0].clone(), dir)
}

/// A run resumed to its end: created, started, node completed, paused, resumed, … completed.
async fn completed_run(app: &TestApp) -> String {
    let (run, request) = app.parked_run().await;
    let ok = app
        .post(
            "/api/hitl/resume",
            OPERATOR,
            &approval(&run, &request, "op"),
        )
        .await;
    assert_eq!(ok.status, 202, "{ok:?}");
    app.wait_for_run(&run, "completed").await;
    run
}

async fn verify(app: &TestApp, auditor: &str, run: &str) -> Value {
    let reply = app
        .get(&format!("/api/runs/{run}/audit/verify"), auditor)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

async fn exec(pool: &PgPool, sql: &str, run: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(run)
        .execute(pool)
        .await
        .unwrap();
}

/// The break a verification names: (problem, run version).
fn broken(verdict: &Value) -> (String, i64) {
    assert_eq!(verdict["intact"], false, "{verdict}");
    (
        verdict["broken"]["problem"].as_str().unwrap().to_owned(),
        verdict["broken"]["runVersion"].as_i64().unwrap(),
    )
}

/// Recomputes run `run`'s hashes, as someone with database access but without the key
/// would, keeping (`strip = false`) or dropping the signatures.
async fn rechain(pool: &PgPool, run: &str, strip: bool) {
    let ids: Vec<i64> = sqlx::query_scalar(
        "select event_id from run_audit_events where run_id = $1 order by run_version",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut prev: Option<Vec<u8>> = None;
    for id in ids {
        let mut f: ChainFields = sqlx::query_as(
            "select prev_hash, run_id, run_version, action, request_id, command_id, operator_id, \
                 operator_display_name, operator_email, principal, note, from_status, to_status, \
                 details, created_at, trace_id from run_audit_events where event_id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        f.prev_hash = prev.clone();
        let hash = audit::event_hash(&f).to_vec();
        let sql = if strip {
            "update run_audit_events set prev_hash = $2, hash = $3, signature = null, key_id = null \
             where event_id = $1"
        } else {
            "update run_audit_events set prev_hash = $2, hash = $3 where event_id = $1"
        };
        sqlx::query(sql)
            .bind(id)
            .bind(&prev)
            .bind(&hash)
            .execute(pool)
            .await
            .unwrap();
        prev = Some(hash);
    }
}

#[tokio::test]
async fn untouched_runs_verify_intact_and_each_tampering_names_the_event() {
    let (app, auditor, _dir) = app().await;
    let pool = &app.pool;
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(completed_run(&app).await);
    }
    for run in &runs {
        let v = verify(&app, &auditor, run).await;
        assert_eq!(v["intact"], true, "{v}");
        assert_eq!(v["signed"], v["events"], "every event signed: {v}");
        assert!(v["events"].as_i64().unwrap() >= 6, "{v}");
    }
    let last: i64 =
        sqlx::query_scalar("select max(run_version) from run_audit_events where run_id = $1")
            .bind(&runs[4])
            .fetch_one(pool)
            .await
            .unwrap();

    // A field edited.
    exec(
        pool,
        "update run_audit_events set note = 'nothing to see' where run_id = $1 and run_version = 5",
        &runs[0],
    )
    .await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[0]).await),
        ("altered".into(), 5)
    );
    // An event deleted.
    exec(
        pool,
        "delete from run_audit_events where run_id = $1 and run_version = 3",
        &runs[1],
    )
    .await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[1]).await),
        ("missing".into(), 3)
    );
    // An event inserted: later versions moved up one, a made-up event put at 3 that
    // links to its predecessor (its prev_hash is right; its own hash cannot be).
    exec(pool, "update run_audit_events set run_version = run_version + 1000 where run_id = $1 and run_version >= 3", &runs[2]).await;
    exec(pool, "update run_audit_events set run_version = run_version - 999 where run_id = $1 and run_version > 1000", &runs[2]).await;
    exec(
        pool,
        "insert into run_audit_events (run_id, run_version, action, to_status, prev_hash, hash) \
         select run_id, 3, 'node_completed', 'running', hash, hash from run_audit_events \
         where run_id = $1 and run_version = 2",
        &runs[2],
    )
    .await;
    let (problem, at) = broken(&verify(&app, &auditor, &runs[2]).await);
    assert_eq!((problem.as_str(), at), ("altered", 3), "the inserted event");
    // Two events swapped.
    exec(
        pool,
        "update run_audit_events set run_version = run_version + 1000 \
         where run_id = $1 and run_version in (3, 4)",
        &runs[3],
    )
    .await;
    exec(
        pool,
        "update run_audit_events set run_version = case run_version when 1003 then 4 else 3 end \
         where run_id = $1 and run_version > 1000",
        &runs[3],
    )
    .await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[3]).await),
        ("out_of_order".into(), 3)
    );
    // The tail cut.
    exec(pool, "delete from run_audit_events where run_id = $1 and run_version = (select max(run_version) from run_audit_events where run_id = $1)", &runs[4]).await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[4]).await),
        ("missing".into(), last)
    );
    // A whole chain recomputed after an edit, without the key: the signatures kept no
    // longer match, and dropping them leaves events the service signed unsigned.
    exec(
        pool,
        "update run_audit_events set note = 'rewritten' where run_id = $1 and run_version = 4",
        &runs[5],
    )
    .await;
    rechain(pool, &runs[5], false).await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[5]).await),
        ("bad_signature".into(), 4)
    );
    exec(
        pool,
        "update run_audit_events set note = 'rewritten' where run_id = $1 and run_version = 4",
        &runs[6],
    )
    .await;
    rechain(pool, &runs[6], true).await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[6]).await),
        ("unsigned".into(), 1)
    );
    // An event signed with a key nobody listed.
    exec(pool, "update run_audit_events set key_id = 'ffffffffffffffff' where run_id = $1 and run_version = 2", &runs[7]).await;
    assert_eq!(
        broken(&verify(&app, &auditor, &runs[7]).await),
        ("unknown_key".into(), 2)
    );

    // Every run a page at a time: the tampered ones, and only those, are broken.
    let mut verdicts = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/api/audit/verify?limit=3".to_owned()
        } else {
            format!("/api/audit/verify?limit=3&after={after}")
        };
        let page = app.get(&path, &auditor).await;
        assert_eq!(page.status, 200, "{page:?}");
        verdicts.extend(page.body["items"].as_array().unwrap().clone());
        match page.body["nextCursor"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(verdicts.len(), runs.len());
    assert!(
        verdicts.iter().all(|v| v["intact"] == false),
        "{verdicts:#?}"
    );

    // Scopes: the operator may not verify; nobody needs a token for the public keys.
    let refused = app
        .get(&format!("/api/runs/{}/audit/verify", runs[0]), OPERATOR)
        .await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
    let keys = app.send(app_client().get(app.url("/api/audit/keys"))).await;
    assert_eq!(keys.status, 200, "{keys:?}");
    let listed = keys.body["keys"][0]["keyId"].as_str().unwrap();
    assert_eq!(listed, crate::common::test_signer().key_id());
    let unknown = app
        .get(
            &format!(
                "/api/runs/{}/audit/verify",
                hitl_orchestrator::domain::RunId::new()
            ),
            &auditor,
        )
        .await;
    assert_eq!(unknown.status, 404);
    app.stop().await;
}

fn app_client() -> reqwest::Client {
    crate::common::http_client()
}

#[tokio::test]
async fn events_written_before_the_chain_existed_are_chained_at_start() {
    let (app, auditor, _dir) = app().await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(completed_run(&app).await);
    }
    crate::common::queue_support::seed_parked_runs(&app.pool, 5).await;
    // As an earlier version left them: no hash, no signature.
    sqlx::query("update run_audit_events set prev_hash = null, hash = null, signature = null, key_id = null")
        .execute(&app.pool)
        .await
        .unwrap();
    let v = verify(&app, &auditor, &runs[0]).await;
    assert_eq!(broken(&v), ("unchained".into(), 1));
    let chained = audit::chain_unhashed(&app.pool).await.unwrap();
    assert!(chained >= 3 * 6 + 5 * 3, "{chained}");
    assert_eq!(
        audit::chain_unhashed(&app.pool).await.unwrap(),
        0,
        "nothing left"
    );
    let page = app.get("/api/audit/verify", &auditor).await;
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    for v in items {
        assert_eq!(v["intact"], true, "{v}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_export_pages_through_ten_thousand_events_without_a_gap_or_a_repeat_while_others_are_written()
 {
    let (app, auditor, _dir) = app().await;
    crate::common::queue_support::seed_parked_runs(&app.pool, 3_400).await;
    // Runs created and answered meanwhile keep adding events while the export pages.
    let writer = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let client = crate::common::http_client();
            for _ in 0..20 {
                let reply = client
                    .post(format!("{base}/api/runs"))
                    .bearer_auth(crate::common::api::SUBMITTER)
                    .json(&json!({ "brief": { "title": "t" }, "plan": crate::common::api::review_plan() }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), 202);
            }
        })
    };
    let mut seen = Vec::new();
    let mut after = 0i64;
    let mut pages = 0;
    let mut committed: Vec<i64>;
    loop {
        let page = app
            .get(&format!("/api/audit?after={after}&limit=700"), &auditor)
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        pages += 1;
        let items = page.body["items"].as_array().unwrap().clone();
        after = page.body["nextAfter"].as_i64().unwrap();
        seen.extend(items.iter().map(|e| e["eventId"].as_i64().unwrap()));
        if items.is_empty() && writer.is_finished() {
            app.settle().await;
            // Every event committed by now must be in the export; one a background job
            // writes after this read may or may not be.
            committed =
                sqlx::query_scalar("select event_id from run_audit_events order by event_id")
                    .fetch_all(&app.pool)
                    .await
                    .unwrap();
            let last = app
                .get(&format!("/api/audit?after={after}"), &auditor)
                .await;
            let rest = last.body["items"].as_array().unwrap();
            seen.extend(rest.iter().map(|e| e["eventId"].as_i64().unwrap()));
            if rest.is_empty() {
                break;
            }
            after = last.body["nextAfter"].as_i64().unwrap();
        }
        assert!(pages < 200, "the export ended");
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    let all: Vec<i64> =
        sqlx::query_scalar("select event_id from run_audit_events order by event_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(committed.len() >= 10_000, "{}", committed.len());
    let missing: Vec<i64> = committed
        .iter()
        .filter(|id| !unique.contains(id))
        .copied()
        .collect();
    let extra: Vec<i64> = unique
        .iter()
        .filter(|id| !all.contains(id))
        .copied()
        .collect();
    assert_eq!(
        (missing, extra),
        (vec![], vec![]),
        "no gap (missing, unknown)"
    );

    // NDJSON: one event per line, each with its chain.
    let reply = app
        .send(
            app_client()
                .get(app.url("/api/audit?limit=5"))
                .bearer_auth(&auditor)
                .header("Accept", "application/x-ndjson"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = reply
        .body
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["hash"].as_str().unwrap().len(), 64);

    let refused = app.get("/api/audit", OPERATOR).await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
    let bad = app.get("/api/audit?after=x", &auditor).await;
    assert_eq!((bad.status, bad.field()), (422, "after"));
    // An id past every event is read as the latest event's id: the same page. (Not always
    // empty: an event of a later transaction can hold a lower id than the latest one.)
    let never = app.get("/api/audit?after=999999999", &auditor).await;
    let latest = app
        .get(
            &format!("/api/audit?after={}", all.last().unwrap()),
            &auditor,
        )
        .await;
    assert_eq!(never.status, 200, "{never:?}");
    assert_eq!(never.body["items"], latest.body["items"]);
    assert!(
        never.body["items"].as_array().unwrap().len() < 20,
        "only what committed after the latest id's transaction: {never:?}"
    );
    app.stop().await;
}
