//! Persistence of runs: creation, lookup, the engine's transitions with their fencing,
//! the pending inbox, expiry, and a snapshot that survives a new pool field by field.

use crate::common::fixtures::{
    self, apply, new_request, new_run, parked_run, state, submit, table_counts,
};
use chrono::{Duration, SubsecRound, Utc};
use hitl_orchestrator::domain::{
    AuditAction, BriefId, RequestStatus, RunId, RunStatus, ThreadId, TimeoutAction, TransitionError,
};
use hitl_orchestrator::persistence::{
    self, BriefInput, ExpireOutcome, Finish, PendingFilter, PersistenceError, RunRef,
};
use serde_json::json;

#[tokio::test]
async fn creating_a_run_stores_brief_plan_and_context_queued_at_version_one() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let created = persistence::create_run(&mut tx, new_run(Some("client-thread-1")))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(created.status, RunStatus::Queued);
    assert_eq!(created.version, 1);
    assert_eq!(created.thread_id.as_str(), "client-thread-1");

    let snap = persistence::load_snapshot(&db.pool, &created.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.plan, fixtures::plan());
    assert_eq!(snap.run.execution_context, json!({ "locale": "en" }));
    assert_eq!(snap.run.brief_id, created.brief_id);
    assert_eq!(snap.audit_log.len(), 1);
    assert_eq!(snap.audit_log[0].action, AuditAction::RunCreated);
    assert_eq!(snap.audit_log[0].run_version, 1);
}

#[tokio::test]
async fn a_run_can_reuse_an_existing_brief_but_not_an_unknown_one() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let first = persistence::create_run(&mut tx, new_run(None))
        .await
        .unwrap();
    let mut again = new_run(None);
    again.brief = BriefInput::Existing(first.brief_id.clone());
    let second = persistence::create_run(&mut tx, again).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(second.brief_id, first.brief_id);

    let before = table_counts(&db.pool).await;
    let mut unknown = new_run(None);
    unknown.brief = BriefInput::Existing(BriefId::new());
    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::create_run(&mut tx, unknown).await.unwrap_err();
    tx.rollback().await.unwrap();
    assert!(
        matches!(
            err,
            PersistenceError::NotFound {
                entity: "brief",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(table_counts(&db.pool).await, before);
}

#[tokio::test]
async fn a_thread_id_in_use_is_refused_and_nothing_is_written() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    persistence::create_run(&mut tx, new_run(Some("t-1")))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before = table_counts(&db.pool).await;

    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::create_run(&mut tx, new_run(Some("t-1")))
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    assert!(
        matches!(err, PersistenceError::ThreadTaken(ref t) if t == "t-1"),
        "{err}"
    );
    assert_eq!(table_counts(&db.pool).await, before);
}

#[tokio::test]
async fn runs_are_found_by_run_id_or_thread_id() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, version) = parked_run(&db.pool).await;
    let by_id = persistence::find_run(&db.pool, &RunRef::Id(run_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_id.status, RunStatus::AwaitingHitl);
    assert_eq!(by_id.pending_request_id, Some(request_id));
    assert_eq!(by_id.version, version);
    let by_thread = persistence::find_run(&db.pool, &RunRef::Thread(by_id.thread_id.clone()))
        .await
        .unwrap();
    assert_eq!(by_thread, Some(by_id));
    assert!(
        persistence::find_run(&db.pool, &RunRef::Id(RunId::new()))
            .await
            .unwrap()
            .is_none()
    );
    let nobody = ThreadId::parse("nobody").unwrap();
    assert!(
        persistence::find_run(&db.pool, &RunRef::Thread(nobody))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn start_moves_a_queued_run_to_running_once_and_refuses_a_stale_version() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let run = persistence::create_run(&mut tx, new_run(None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let v = persistence::start_run(&mut tx, &run.run_id, 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(v, 2);

    let mut tx = db.pool.begin().await.unwrap();
    let stale = persistence::start_run(&mut tx, &run.run_id, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            PersistenceError::StaleVersion {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{stale}"
    );
    tx.rollback().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let again = persistence::start_run(&mut tx, &run.run_id, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            PersistenceError::Transition {
                source: TransitionError::IllegalFrom { .. },
                ..
            }
        ),
        "{again}"
    );
}

#[tokio::test]
async fn a_checkpoint_writes_the_state_and_a_stale_one_writes_nothing() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let run = persistence::create_run(&mut tx, new_run(None))
        .await
        .unwrap();
    let v = persistence::start_run(&mut tx, &run.run_id, 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let mut s = state(7);
    s.plan = Some(json!({ "nodes": [], "artifacts": { "outline": "v2" } }));
    let v2 = persistence::checkpoint(
        &mut tx,
        &run.run_id,
        v,
        persistence::Checkpoint {
            node_id: "prepare",
            state: &s,
            action: AuditAction::NodeCompleted,
            details: json!({}),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(v2, v + 1);
    let snap = persistence::load_snapshot(&db.pool, &run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.execution_context, s.execution_context);
    assert_eq!(snap.run.runner_metadata, s.runner_metadata);
    assert_eq!(snap.run.plan["artifacts"]["outline"], "v2");
    let last = snap.audit_log.last().unwrap();
    assert_eq!(
        (last.action, last.details["nodeId"].as_str()),
        (AuditAction::NodeCompleted, Some("prepare"))
    );

    let before = table_counts(&db.pool).await;
    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::checkpoint(
        &mut tx,
        &run.run_id,
        v,
        persistence::Checkpoint {
            node_id: "prepare",
            state: &state(8),
            action: AuditAction::NodeCompleted,
            details: json!({}),
        },
    )
    .await
    .unwrap_err();
    tx.rollback().await.unwrap();
    assert!(
        matches!(err, PersistenceError::StaleVersion { .. }),
        "{err}"
    );
    assert_eq!(table_counts(&db.pool).await, before);
    let again = persistence::load_snapshot(&db.pool, &run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, snap, "a refused checkpoint changes nothing");
}

#[tokio::test]
async fn raising_a_request_pauses_the_run_and_lists_it_as_pending() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, version) = parked_run(&db.pool).await;
    let snap = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.status, RunStatus::AwaitingHitl);
    assert_eq!(snap.run.pending_request_id.as_ref(), Some(&request_id));
    assert_eq!(snap.run.version, version);
    let req = &snap.hitl_requests[0];
    assert_eq!(
        (req.status, req.node_id.as_str()),
        (RequestStatus::Pending, "review")
    );
    assert_eq!(req.contract_summary["facets"], json!(["tone"]));
    assert_eq!(
        req.response_types,
        vec!["approval", "rejection", "option", "freeform"]
    );

    let page = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].pending_request_id, request_id);
    assert_eq!(page[0].pending_node_id, "review");
    assert_eq!(page[0].operator_prompt, "Decide on review");
    assert_eq!(page[0].execution_context, state(1).execution_context);

    // A paused run cannot raise a second request or take a checkpoint.
    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::raise_request(
        &mut tx,
        &run_id,
        version,
        &new_request("again", None),
        &state(2),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PersistenceError::Transition { .. }), "{err}");
}

#[tokio::test]
async fn the_engine_can_complete_fail_or_cancel_a_running_run_and_terminal_runs_never_change() {
    let db = crate::common::fresh_db().await;
    for (status, action) in [
        (RunStatus::Completed, AuditAction::RunCompleted),
        (RunStatus::Failed, AuditAction::RunFailed),
        (RunStatus::Cancelled, AuditAction::RunCancelled),
    ] {
        let mut tx = db.pool.begin().await.unwrap();
        let run = persistence::create_run(&mut tx, new_run(None))
            .await
            .unwrap();
        let v = persistence::start_run(&mut tx, &run.run_id, 1)
            .await
            .unwrap();
        let finish = Finish {
            status,
            reason: Some("because".into()),
            node_id: Some("n".into()),
            state: Some(state(9)),
        };
        let v = persistence::finish_run(&mut tx, &run.run_id, v, &finish)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let snap = persistence::load_snapshot(&db.pool, &run.run_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.run.status, status);
        assert_eq!(snap.run.status_reason.as_deref(), Some("because"));
        assert!(snap.run.finished_at.is_some());
        assert_eq!(snap.audit_log.last().unwrap().action, action);

        let mut tx = db.pool.begin().await.unwrap();
        let err = persistence::finish_run(&mut tx, &run.run_id, v, &finish)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PersistenceError::Transition {
                    source: TransitionError::Terminal { .. },
                    ..
                }
            ),
            "{err}"
        );
        tx.rollback().await.unwrap();
        let id = submit(&db.pool, fixtures::remove(&run.run_id, None, "late")).await;
        let outcome = apply(&db.pool, &id).await;
        let persistence::ApplyOutcome::Rejected { command } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(command.outcome.unwrap()["reason"], "run_terminal");
        let after = persistence::load_snapshot(&db.pool, &run.run_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.run, snap.run, "a terminal run never changes");
    }
}

#[tokio::test]
async fn the_pending_inbox_is_oldest_first_paged_by_keyset_and_filtered() {
    let db = crate::common::fresh_db().await;
    let mut runs = Vec::new();
    for i in 0..5 {
        let mut tx = db.pool.begin().await.unwrap();
        let run = persistence::create_run(&mut tx, new_run(Some(&format!("inbox-{i}"))))
            .await
            .unwrap();
        let v = persistence::start_run(&mut tx, &run.run_id, 1)
            .await
            .unwrap();
        let node = if i % 2 == 0 { "even" } else { "odd" };
        let (req, _) = persistence::raise_request(
            &mut tx,
            &run.run_id,
            v,
            &new_request(node, None),
            &state(1),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        runs.push((run, req));
    }
    let mut seen = Vec::new();
    let mut filter = PendingFilter {
        limit: 2,
        ..Default::default()
    };
    loop {
        let page = persistence::list_pending(&db.pool, &filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        filter.after = Some((last.created_at, last.pending_request_id.clone()));
        seen.extend(page.into_iter().map(|p| p.pending_request_id));
    }
    let expected: Vec<_> = runs.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(seen, expected, "every request once, oldest first");

    let odd = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            node_id: Some("odd".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        odd.iter()
            .map(|p| p.pending_request_id.clone())
            .collect::<Vec<_>>(),
        vec![runs[1].1.clone(), runs[3].1.clone()]
    );
    let by_thread = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            thread_id: Some(runs[2].0.thread_id.clone()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_thread.len(), 1);
    assert_eq!(by_thread[0].run_id, runs[2].0.run_id);
    let by_brief = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            brief_id: Some(runs[4].0.brief_id.clone()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_brief.len(), 1);

    // Answered requests leave the inbox.
    let id = submit(
        &db.pool,
        fixtures::resume(&runs[0].0.run_id, &runs[0].1, "op"),
    )
    .await;
    apply(&db.pool, &id).await;
    let all = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn a_passed_deadline_expires_the_request_by_its_policy_and_only_once() {
    let db = crate::common::fresh_db().await;
    for (action, run_status) in [
        (TimeoutAction::Reject, RunStatus::Running),
        (TimeoutAction::Approve, RunStatus::Running),
        (TimeoutAction::Cancel, RunStatus::Cancelled),
    ] {
        // PostgreSQL keeps microseconds.
        let deadline = (Utc::now() + Duration::seconds(60)).trunc_subsecs(6);
        let mut tx = db.pool.begin().await.unwrap();
        let run = persistence::create_run(&mut tx, new_run(None))
            .await
            .unwrap();
        let v = persistence::start_run(&mut tx, &run.run_id, 1)
            .await
            .unwrap();
        let (req, _) = persistence::raise_request(
            &mut tx,
            &run.run_id,
            v,
            &new_request("review", Some((deadline, action))),
            &state(1),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let mut tx = db.pool.begin().await.unwrap();
        let early =
            persistence::expire_request(&mut tx, &req, Utc::now(), persistence::AdvanceBy::Job)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(early, ExpireOutcome::NotDue(Some(deadline)));

        let later = deadline + Duration::seconds(1);
        let mut tx = db.pool.begin().await.unwrap();
        let expired =
            persistence::expire_request(&mut tx, &req, later, persistence::AdvanceBy::Job)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        assert!(
            matches!(expired, ExpireOutcome::Expired { action: a, run_status: s, .. } if a == action && s == run_status),
            "{expired:?}"
        );
        let snap = persistence::load_snapshot(&db.pool, &run.run_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.run.status, run_status);
        assert_eq!(snap.hitl_requests[0].status, RequestStatus::Expired);
        assert_eq!(snap.run.pending_request_id, None);
        let last = snap.audit_log.last().unwrap();
        assert_eq!(
            (last.action, last.request_id.as_ref()),
            (AuditAction::Expire, Some(&req))
        );

        let mut tx = db.pool.begin().await.unwrap();
        let again = persistence::expire_request(&mut tx, &req, later, persistence::AdvanceBy::Job)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(again, ExpireOutcome::AlreadySettled(RequestStatus::Expired));
    }
}

#[tokio::test]
async fn an_answered_request_does_not_expire() {
    let db = crate::common::fresh_db().await;
    let deadline = Utc::now() + Duration::seconds(1);
    let mut tx = db.pool.begin().await.unwrap();
    let run = persistence::create_run(&mut tx, new_run(None))
        .await
        .unwrap();
    let v = persistence::start_run(&mut tx, &run.run_id, 1)
        .await
        .unwrap();
    let (req, _) = persistence::raise_request(
        &mut tx,
        &run.run_id,
        v,
        &new_request("review", Some((deadline, TimeoutAction::Cancel))),
        &state(1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let id = submit(&db.pool, fixtures::resume(&run.run_id, &req, "op")).await;
    apply(&db.pool, &id).await;
    let mut tx = db.pool.begin().await.unwrap();
    let outcome = persistence::expire_request(
        &mut tx,
        &req,
        deadline + Duration::seconds(5),
        persistence::AdvanceBy::Job,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        outcome,
        ExpireOutcome::AlreadySettled(RequestStatus::Resolved)
    );
    let snap = persistence::load_snapshot(&db.pool, &run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.status, RunStatus::Running);
}

#[tokio::test]
async fn a_full_run_reads_back_field_by_field_through_a_new_pool() {
    let db = crate::common::fresh_db().await;
    let (run_id, first_request, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, fixtures::resume(&run_id, &first_request, "alice")).await;
    apply(&db.pool, &id).await;
    let header = persistence::find_run(&db.pool, &RunRef::Id(run_id.clone()))
        .await
        .unwrap()
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let mut s = state(2);
    s.runner_metadata =
        json!({ "cursor": 1, "runnerState": { "history": ["a", "b"] }, "agentNotes": ["note"] });
    let (second_request, _) = persistence::raise_request(
        &mut tx,
        &run_id,
        header.version,
        &new_request("second", None),
        &s,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut option = fixtures::resume(&run_id, &second_request, "bob");
    option.payload = json!({ "responses": [
        { "responseType": "option", "optionId": "b", "responderId": "bob" },
        { "responseType": "freeform", "freeformText": "and shorter", "responderDisplayName": "Bob" } ] });
    let id = submit(&db.pool, option).await;
    apply(&db.pool, &id).await;

    let written = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    db.pool.close().await;
    let fresh = hitl_orchestrator::db::lazy_pool(&db.url, Default::default()).unwrap();
    let read = persistence::load_snapshot(&fresh, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, written);

    assert_eq!(read.hitl_requests.len(), 2);
    assert_eq!(
        read.run.runner_metadata["runnerState"]["history"],
        json!(["a", "b"])
    );
    let first = &read.hitl_requests[0].responses[0];
    assert_eq!(first.approved, Some(true));
    assert_eq!(
        first.freeform_text.as_deref(),
        Some("Looks good"),
        "an approval keeps its freeform text"
    );
    assert_eq!(
        first.responder_display_name.as_deref(),
        Some("Operator alice")
    );
    let second: Vec<_> = read.hitl_requests[1]
        .responses
        .iter()
        .map(|r| (r.option_id.clone(), r.freeform_text.clone()))
        .collect();
    assert_eq!(
        second,
        vec![(Some("b".into()), None), (None, Some("and shorter".into()))]
    );
    let actions: Vec<_> = read.audit_log.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            AuditAction::RunCreated,
            AuditAction::RunStarted,
            AuditAction::HitlRequested,
            AuditAction::Resume,
            AuditAction::HitlRequested,
            AuditAction::Resume
        ]
    );
    let versions: Vec<i64> = read.audit_log.iter().map(|e| e.run_version).collect();
    assert_eq!(
        versions,
        (1..=6).collect::<Vec<_>>(),
        "one audit event per version"
    );
    assert_eq!(read.run.version, 6);
    let resume = &read.audit_log[3];
    let who = resume.operator.as_ref().unwrap();
    assert_eq!(
        (who.id.as_str(), who.email.as_deref()),
        ("alice", Some("alice@example.com"))
    );
    assert_eq!(resume.note.as_deref(), Some("Approved after review"));

    // The API shape: camelCase, present-but-null fields.
    let as_json = serde_json::to_value(&read).unwrap();
    assert!(as_json["pendingRequestId"].is_null());
    assert!(as_json["hitlRequests"][0]["denialReason"].is_null());
    assert_eq!(
        as_json["auditLog"][3]["operator"]["displayName"],
        "Operator alice"
    );
}
