//! Commands: resume and remove applied exactly once in effect, idempotent submission,
//! races between operators, and answers checked before anything is written.

use crate::common::fixtures::{apply, operator, parked_run, remove, resume, submit, table_counts};
use hitl_orchestrator::domain::{
    AuditAction, CommandKind, CommandStatus, RequestId, RequestStatus, ResponseType, RunStatus,
};
use hitl_orchestrator::persistence::{
    self, AdvanceBy, ApplyOutcome, PersistenceError, RequestShape, ResponseInput, RunRef,
};
use serde_json::json;

#[tokio::test]
async fn a_resume_stores_every_answer_resolves_the_request_and_records_who_and_why() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, version) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request_id, "alice")).await;
    let ApplyOutcome::Applied {
        command,
        run_status,
        version: v,
    } = apply(&db.pool, &id).await
    else {
        panic!("applied")
    };
    assert_eq!((run_status, v), (RunStatus::Running, version + 1));
    assert_eq!(command.status, CommandStatus::Succeeded);
    let outcome = command.outcome.unwrap();
    assert_eq!(outcome["run"]["status"], "running");
    assert!(outcome["run"]["pendingRequestId"].is_null());

    let snap = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.pending_request_id, None);
    let req = &snap.hitl_requests[0];
    assert_eq!(req.status, RequestStatus::Resolved);
    assert_eq!(req.resolved_by.as_deref(), Some("alice"));
    let r = &req.responses[0];
    assert_eq!(
        (r.response_type, r.approved),
        (ResponseType::Approval, Some(true))
    );
    assert_eq!(r.freeform_text.as_deref(), Some("Looks good"));
    assert_eq!(r.responder_id.as_deref(), Some("alice"));
    assert_eq!(r.command_id.as_ref(), Some(&id));
    let audit = snap.audit_log.last().unwrap();
    assert_eq!(audit.action, AuditAction::Resume);
    assert_eq!(audit.command_id.as_ref(), Some(&id));
    assert_eq!(audit.operator.as_ref().unwrap().id, "alice");
    assert_eq!(audit.note.as_deref(), Some("Approved after review"));
}

#[tokio::test]
async fn applying_the_same_command_twice_changes_nothing_the_second_time() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request_id, "alice")).await;
    let ApplyOutcome::Applied { command: first, .. } = apply(&db.pool, &id).await else {
        panic!()
    };
    let snap = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    let counts = table_counts(&db.pool).await;

    let ApplyOutcome::AlreadyFinal { command: second } = apply(&db.pool, &id).await else {
        panic!("a redelivery is a no-op")
    };
    assert_eq!(second, first, "the stored outcome is returned unchanged");
    assert_eq!(table_counts(&db.pool).await, counts);
    assert_eq!(
        persistence::load_snapshot(&db.pool, &run_id)
            .await
            .unwrap()
            .unwrap(),
        snap
    );
}

#[tokio::test]
async fn one_invalid_answer_among_valid_ones_writes_nothing() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let mut cmd = resume(&run_id, &request_id, "alice");
    cmd.payload = json!({ "responses": [
        { "responseType": "approval", "approved": true },
        { "responseType": "option", "optionId": "not-offered" },
        { "responseType": "freeform", "freeformText": "fine" } ] });
    let id = submit(&db.pool, cmd).await;
    let before = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    let ApplyOutcome::Rejected { command } = apply(&db.pool, &id).await else {
        panic!("rejected")
    };
    let outcome = command.outcome.unwrap();
    assert_eq!(outcome["reason"], "invalid_response");
    assert_eq!(outcome["field"], "responses[1].optionId");
    assert_eq!(
        persistence::load_snapshot(&db.pool, &run_id)
            .await
            .unwrap()
            .unwrap(),
        before
    );
    let responses: i64 = sqlx::query_scalar("select count(*) from hitl_responses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(responses, 0);
}

fn answer(kind: ResponseType) -> ResponseInput {
    ResponseInput {
        request_id: None,
        item_id: None,
        response_type: kind,
        edited_arguments: None,
        approved: None,
        option_id: None,
        freeform_text: None,
        responder_id: None,
        responder_display_name: None,
    }
}

#[test]
fn answers_are_checked_against_the_request_they_answer() {
    let request_id = RequestId::new();
    let items = vec![persistence::RequestItem {
        item_id: "review".into(),
        kind: persistence::ItemKind::Question,
        title: "Review".into(),
        tool: None,
        response_types: vec![
            ResponseType::Approval,
            ResponseType::Option,
            ResponseType::Freeform,
        ],
        options: vec![persistence::ItemOption {
            id: "a".into(),
            label: "A".into(),
        }],
    }];
    let shape = RequestShape {
        request_id: &request_id,
        items: &items,
        approvals_required: None,
    };
    let field = |responses: Vec<ResponseInput>| {
        persistence::validate_responses(&shape, &responses)
            .err()
            .map(|p| p.field)
    };

    assert_eq!(field(vec![]), Some("responses".into()));
    assert_eq!(
        field(vec![answer(ResponseType::Rejection)]),
        Some("responses[0].responseType".into())
    );
    assert_eq!(
        field(vec![answer(ResponseType::Approval)]),
        Some("responses[0].approved".into())
    );
    assert_eq!(
        field(vec![answer(ResponseType::Option)]),
        Some("responses[0].optionId".into())
    );
    let mut unknown = answer(ResponseType::Option);
    unknown.option_id = Some("z".into());
    assert_eq!(field(vec![unknown]), Some("responses[0].optionId".into()));
    let mut blank = answer(ResponseType::Freeform);
    blank.freeform_text = Some("  ".into());
    assert_eq!(field(vec![blank]), Some("responses[0].freeformText".into()));
    let mut elsewhere = answer(ResponseType::Approval);
    elsewhere.approved = Some(true);
    elsewhere.request_id = Some(RequestId::new().to_string());
    assert_eq!(
        field(vec![elsewhere]),
        Some("responses[0].requestId".into())
    );

    let mut ok = answer(ResponseType::Approval);
    ok.approved = Some(false);
    ok.request_id = Some(request_id.to_string());
    let mut pick = answer(ResponseType::Option);
    pick.option_id = Some("a".into());
    assert_eq!(field(vec![ok, pick]), None);
}

#[tokio::test]
async fn removing_a_parked_run_denies_the_request_with_the_reason_and_cancels_the_run() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, remove(&run_id, None, "carol")).await;
    let ApplyOutcome::Applied {
        command,
        run_status,
        ..
    } = apply(&db.pool, &id).await
    else {
        panic!()
    };
    assert_eq!(run_status, RunStatus::Cancelled);
    assert_eq!(
        command.request_id.as_ref(),
        Some(&request_id),
        "the command names the request it denied"
    );
    let snap = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.run.status, RunStatus::Cancelled);
    assert_eq!(snap.run.status_reason.as_deref(), Some("Duplicate request"));
    let req = &snap.hitl_requests[0];
    assert_eq!(req.status, RequestStatus::Denied);
    assert_eq!(req.denial_reason.as_deref(), Some("Duplicate request"));
    let audit = snap.audit_log.last().unwrap();
    assert_eq!(
        (audit.action, audit.operator.as_ref().unwrap().id.as_str()),
        (AuditAction::Remove, "carol")
    );
}

#[tokio::test]
async fn a_running_run_can_be_removed_and_its_engine_then_cannot_write() {
    let db = crate::common::fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let run = persistence::create_run(&mut tx, crate::common::fixtures::new_run(None))
        .await
        .unwrap();
    let v = persistence::start_run(&mut tx, &run.run_id, 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = submit(&db.pool, remove(&run.run_id, None, "carol")).await;
    assert!(matches!(
        apply(&db.pool, &id).await,
        ApplyOutcome::Applied {
            run_status: RunStatus::Cancelled,
            ..
        }
    ));

    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::checkpoint(
        &mut tx,
        &run.run_id,
        v,
        persistence::Checkpoint {
            node_id: "n",
            state: &crate::common::fixtures::state(1),
            action: AuditAction::NodeCompleted,
            details: json!({}),
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PersistenceError::StaleVersion { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn commands_naming_a_request_that_is_no_longer_pending_are_rejected_naming_who_settled_it() {
    let db = crate::common::fresh_db().await;
    let (run_id, first, _) = parked_run(&db.pool).await;
    let winner = submit(&db.pool, resume(&run_id, &first, "alice")).await;
    apply(&db.pool, &winner).await;
    let h = persistence::find_run(&db.pool, &RunRef::Id(run_id.clone()))
        .await
        .unwrap()
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let (second, _) = persistence::raise_request(
        &mut tx,
        &run_id,
        h.version,
        &crate::common::fixtures::new_request("next", None),
        &crate::common::fixtures::state(2),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let before = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();

    for cmd in [
        resume(&run_id, &first, "bob"),
        remove(&run_id, Some(&first), "bob"),
    ] {
        let id = submit(&db.pool, cmd).await;
        let ApplyOutcome::Rejected { command } = apply(&db.pool, &id).await else {
            panic!("rejected")
        };
        let outcome = command.outcome.unwrap();
        assert_eq!(outcome["reason"], "conflict", "{outcome}");
        assert_eq!(outcome["winner"]["commandId"], json!(winner));
        assert_eq!(outcome["winner"]["operator"]["id"], "alice");
    }
    let after = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.run, before.run,
        "the run and its pending request are untouched"
    );
    assert_eq!(after.run.pending_request_id, Some(second));
}

#[tokio::test]
async fn a_request_of_another_run_cannot_be_named() {
    let db = crate::common::fresh_db().await;
    let (run_id, _, _) = parked_run(&db.pool).await;
    let (_, other_request, _) = parked_run(&db.pool).await;
    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::record_command(&mut tx, remove(&run_id, Some(&other_request), "dave"))
        .await
        .unwrap_err();
    assert!(matches!(err, PersistenceError::Database(_)), "{err}");
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_command_even_after_it_applied() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let mut cmd = resume(&run_id, &request_id, "alice");
    cmd.idempotency_key = Some("key-1".into());

    let mut tx = db.pool.begin().await.unwrap();
    let first = persistence::record_command(&mut tx, cmd.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(first.created);
    let mut tx = db.pool.begin().await.unwrap();
    let retry = persistence::record_command(&mut tx, cmd.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!retry.created);
    assert_eq!(retry.command.command_id, first.command.command_id);

    apply(&db.pool, &first.command.command_id).await;
    let mut tx = db.pool.begin().await.unwrap();
    let late = persistence::record_command(&mut tx, cmd.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(late.command.command_id, first.command.command_id);
    assert_eq!(late.command.status, CommandStatus::Succeeded);
    let found =
        persistence::find_command_by_idempotency_key(&db.pool, CommandKind::Resume, "key-1")
            .await
            .unwrap();
    assert_eq!(
        found.map(|c| c.command_id),
        Some(first.command.command_id.clone())
    );

    let before = table_counts(&db.pool).await;
    let mut different = cmd.clone();
    different.payload = json!({ "responses": [ { "responseType": "rejection" } ] });
    let mut tx = db.pool.begin().await.unwrap();
    let err = persistence::record_command(&mut tx, different)
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    assert!(
        matches!(err, PersistenceError::IdempotencyKeyReused(ref k) if k == "key-1"),
        "{err}"
    );
    assert_eq!(table_counts(&db.pool).await, before);
}

#[tokio::test]
async fn a_failed_command_is_marked_failed_once_and_an_ended_one_is_left_alone() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request_id, "alice")).await;
    let mut tx = db.pool.begin().await.unwrap();
    let failed = persistence::fail_command(&mut tx, &id, "gave up after 5 attempts")
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (CommandStatus::Failed, Some("gave up after 5 attempts"))
    );
    assert!(matches!(
        apply(&db.pool, &id).await,
        ApplyOutcome::AlreadyFinal { .. }
    ));
    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        persistence::fail_command(&mut tx, &id, "again")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn sixteen_operators_racing_on_one_request_apply_exactly_one_command_fifty_times_over() {
    let db = crate::common::fresh_db().await;
    for round in 0..50 {
        let (run_id, request_id, version) = parked_run(&db.pool).await;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let pool = db.pool.clone();
            let who = format!("op-{round}-{i}");
            let cmd = if i % 2 == 0 {
                resume(&run_id, &request_id, &who)
            } else {
                remove(&run_id, Some(&request_id), &who)
            };
            tasks.push(tokio::spawn(async move {
                let mut tx = pool.begin().await?;
                let recorded = persistence::record_command(&mut tx, cmd).await?;
                tx.commit().await?;
                let mut tx = pool.begin().await?;
                let outcome = persistence::apply_command(
                    &mut tx,
                    &recorded.command.command_id,
                    AdvanceBy::Job,
                )
                .await?;
                tx.commit().await?;
                Ok::<_, PersistenceError>(outcome)
            }));
        }
        let mut applied = Vec::new();
        let mut rejected = Vec::new();
        for t in tasks {
            match t
                .await
                .unwrap()
                .expect("no database error reaches the caller")
            {
                ApplyOutcome::Applied { command, .. } => applied.push(command),
                ApplyOutcome::Rejected { command } => rejected.push(command),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(applied.len(), 1, "round {round}: exactly one applies");
        let winner = &applied[0];
        assert_eq!(rejected.len(), 15);
        for r in &rejected {
            let outcome = r.outcome.as_ref().unwrap();
            assert_eq!(outcome["reason"], "conflict", "round {round}: {outcome}");
            assert_eq!(
                outcome["winner"]["commandId"],
                json!(winner.command_id),
                "names the winner"
            );
            assert_eq!(
                outcome["winner"]["operator"]["id"],
                json!(winner.operator.id)
            );
        }
        let header = persistence::find_run(&db.pool, &RunRef::Id(run_id.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header.version, version + 1, "one transition");
        let events: i64 = sqlx::query_scalar(
            "select count(*) from run_audit_events where run_id = $1 and action in ('resume', 'remove')",
        )
        .bind(&run_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(events, 1);
    }
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn random_sequences_of_transitions_keep_the_invariants_in_the_database() {
    let db = crate::common::fresh_db().await;
    let mut rng = Lcg(0x5eed);
    let (mut applied, mut terminal_runs) = (0, 0);
    for _ in 0..20 {
        let mut tx = db.pool.begin().await.unwrap();
        let run = persistence::create_run(&mut tx, crate::common::fixtures::new_run(None))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut last_version = 1;
        let mut ended: Option<RunStatus> = None;
        for step in 0..12 {
            let h = persistence::find_run(&db.pool, &RunRef::Id(run.run_id.clone()))
                .await
                .unwrap()
                .unwrap();
            let mut tx = db.pool.begin().await.unwrap();
            let pending = h.pending_request_id.clone().unwrap_or_else(RequestId::new);
            // Any call may be refused; a refusal must write nothing.
            let result: Result<(), PersistenceError> = match rng.below(7) {
                0 => persistence::start_run(&mut tx, &h.run_id, h.version)
                    .await
                    .map(drop),
                1 => persistence::checkpoint(
                    &mut tx,
                    &h.run_id,
                    h.version,
                    persistence::Checkpoint {
                        node_id: "n",
                        state: &crate::common::fixtures::state(step),
                        action: AuditAction::NodeCompleted,
                        details: json!({}),
                    },
                )
                .await
                .map(drop),
                2 => persistence::raise_request(
                    &mut tx,
                    &h.run_id,
                    h.version,
                    &crate::common::fixtures::new_request("n", None),
                    &crate::common::fixtures::state(step),
                )
                .await
                .map(drop),
                3 | 4 => {
                    let cmd = if rng.below(2) == 0 {
                        resume(&h.run_id, &pending, "op")
                    } else {
                        remove(&h.run_id, None, "op")
                    };
                    match persistence::record_command(&mut tx, cmd).await {
                        Ok(c) => persistence::apply_command(
                            &mut tx,
                            &c.command.command_id,
                            AdvanceBy::Job,
                        )
                        .await
                        .map(drop),
                        Err(e) => Err(e),
                    }
                }
                5 => persistence::finish_run(
                    &mut tx,
                    &h.run_id,
                    h.version,
                    &persistence::Finish {
                        status: [
                            RunStatus::Completed,
                            RunStatus::Failed,
                            RunStatus::Cancelled,
                        ][rng.below(3) as usize],
                        reason: None,
                        node_id: None,
                        state: None,
                    },
                )
                .await
                .map(drop),
                _ => persistence::start_run(&mut tx, &h.run_id, h.version - 1)
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    tx.commit().await.unwrap();
                    applied += 1;
                }
                Err(_) => tx.rollback().await.unwrap(),
            }
            let snap = persistence::load_snapshot(&db.pool, &run.run_id)
                .await
                .unwrap()
                .unwrap();
            assert!(snap.run.version >= last_version, "version never goes back");
            last_version = snap.run.version;
            assert_eq!(
                snap.audit_log.len() as i64,
                snap.run.version,
                "one audit event per version"
            );
            assert!(
                snap.audit_log
                    .iter()
                    .zip(1..)
                    .all(|(e, v)| e.run_version == v)
            );
            let pending: Vec<_> = snap
                .hitl_requests
                .iter()
                .filter(|r| r.status == RequestStatus::Pending)
                .collect();
            assert!(pending.len() <= 1);
            assert_eq!(
                snap.run.status == RunStatus::AwaitingHitl,
                pending.len() == 1
            );
            if let Some(status) = ended {
                assert_eq!(snap.run.status, status, "terminal states never change");
            } else if snap.run.status.is_terminal() {
                ended = Some(snap.run.status);
                terminal_runs += 1;
            }
        }
    }
    // The sequences must exercise the machine, not only its refusals.
    assert!(applied >= 40, "only {applied} calls applied");
    assert!(terminal_runs >= 5, "only {terminal_runs} runs ended");
}

#[tokio::test]
async fn an_operator_object_round_trips_with_the_command() {
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request_id, "erin")).await;
    let found = persistence::find_command(&db.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.operator, operator("erin"));
    assert_eq!(found.status, CommandStatus::Queued);
    assert_eq!(found.kind, CommandKind::Resume);
}

/// A transition committed while a command waits for its run's lock is seen by the
/// command once it has the lock, though the command's locking read began before: here
/// another transaction holds the run and claims the request for alice meanwhile, and
/// bob's resume, which found no claim when it started waiting, is refused as claimed.
#[tokio::test]
async fn a_claim_committed_while_a_resume_waits_for_its_run_refuses_the_resume() {
    let db = crate::common::fresh_db().await;
    let (run_id, request, _) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request, "bob")).await;
    // As a claim does: the run's row is locked and its version bumped, the request
    // claimed, in one transaction.
    let mut other = db.pool.begin().await.unwrap();
    sqlx::query("update orchestrator_runs set version = version + 1 where run_id = $1")
        .bind(&run_id)
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query(
        "update hitl_requests set claimed_by = $2, \
             claim_expires_at = now() + interval '1 hour' where request_id = $1",
    )
    .bind(&request)
    .bind(json!({ "principal": "alice-laptop", "operator": { "id": "alice" } }))
    .execute(&mut *other)
    .await
    .unwrap();
    let pool = db.pool.clone();
    let applying = tokio::spawn(async move { apply(&pool, &id).await });
    crate::common::queue_support::wait_for_count(
        &db.pool,
        "select count(*) from pg_stat_activity \
         where datname = current_database() and wait_event_type = 'Lock'",
        1,
        std::time::Duration::from_secs(10),
    )
    .await;
    other.commit().await.unwrap();
    let ApplyOutcome::Rejected { command } = applying.await.unwrap() else {
        panic!("the resume is refused")
    };
    let outcome = command.outcome.unwrap();
    assert_eq!(outcome["reason"], "claimed", "{outcome}");
    let answers: i64 = sqlx::query_scalar("select count(*) from hitl_responses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(answers, 0);
}

/// A resume's one write completes its job only while the job's claim is the applying
/// worker's: a worker whose claim was handed to another (its lease lapsed, the job was
/// requeued and claimed again) learns it from the write, and rolls back — nothing of the
/// resume stays — while the claim's holder applies it once.
#[tokio::test]
async fn a_resume_written_under_a_lost_claim_reports_it_and_rolls_back_to_nothing() {
    use hitl_orchestrator::persistence::jobs::{ApplyResume, JobPayload};
    use hitl_orchestrator::persistence::queue;
    let db = crate::common::fresh_db().await;
    let (run_id, request_id, version) = parked_run(&db.pool).await;
    let id = submit(&db.pool, resume(&run_id, &request_id, "alice")).await;
    queue::register_worker(&db.pool, "w-lost").await.unwrap();
    queue::register_worker(&db.pool, "w-holder").await.unwrap();
    let claimed = queue::claim(&db.pool, "w-lost", &[ApplyResume::KIND], 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let job_id = claimed[0].id.clone();
    // The claim passes to another worker, as a requeue and a new claim would leave it.
    sqlx::query("update apalis.jobs set lock_by = 'w-holder' where id = $1")
        .bind(&job_id)
        .execute(&db.pool)
        .await
        .unwrap();

    let apply_as = |worker: &'static str| {
        let pool = db.pool.clone();
        let id = id.clone();
        let job_id = job_id.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let (outcome, applying) = persistence::apply_command_for_job(
                &mut tx,
                &id,
                persistence::JobClaim {
                    job_id: &job_id,
                    worker_id: worker,
                },
            )
            .await
            .unwrap();
            assert!(
                matches!(outcome, ApplyOutcome::Applied { .. }),
                "{outcome:?}"
            );
            let persistence::Applying::Unwritten(mut unwritten) = applying else {
                panic!("a resume is returned unwritten")
            };
            let written = unwritten.write.write(&mut tx).await.unwrap();
            (tx, written)
        }
    };
    let (tx, written) = apply_as("w-lost").await;
    assert!(!written.job_completed, "the write saw the claim was lost");
    assert_eq!(written.version, version + 1);
    tx.rollback().await.unwrap();
    let (status, responses, events): (String, i64, i64) = sqlx::query_as(
        "select (select status from hitl_commands where command_id = $1), \
             (select count(*) from hitl_responses where command_id = $1), \
             (select count(*) from run_audit_events where command_id = $1)",
    )
    .bind(&id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), responses, events), ("queued", 0, 0));
    let run = persistence::load_snapshot(&db.pool, &run_id)
        .await
        .unwrap()
        .unwrap()
        .run;
    assert_eq!(
        (run.status, run.version),
        (RunStatus::AwaitingHitl, version)
    );

    let (tx, written) = apply_as("w-holder").await;
    assert!(written.job_completed);
    tx.commit().await.unwrap();
    let (status, responses, job): (String, i64, String) = sqlx::query_as(
        "select (select status from hitl_commands where command_id = $1), \
             (select count(*) from hitl_responses where command_id = $1), \
             (select status from apalis.jobs where id = $2)",
    )
    .bind(&id)
    .bind(&job_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), responses, job.as_str()),
        ("succeeded", 1, "Done")
    );
}
