//! The engine, called directly: plans run, pause at HITL nodes, follow the operator's
//! answer by the node's policy, and finish; racing advancements write once; the HITL
//! flag resolves nodes by policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::fixtures::{apply, operator, submit};
use chrono::{Duration, Utc};
use hitl_orchestrator::domain::{
    AuditAction, CommandKind, RequestId, ResponseType, RunId, RunStatus,
};
use hitl_orchestrator::engine::capability::{
    BoxFuture, Capability, CapabilityCall, CapabilityOutcome, CapabilityRegistry, Interrupt,
    RunnerStateUpdate, TransientError,
};
use hitl_orchestrator::engine::{AdvanceOutcome, Engine, EngineError};
use hitl_orchestrator::persistence::{
    self, AdvanceBy, BriefInput, ExpireOutcome, NewCommand, NewRun, PendingFilter, RunSnapshot,
};
use serde_json::{Value, json};
use sqlx::PgPool;

fn new_run(plan: Value) -> NewRun {
    NewRun {
        brief: BriefInput::New {
            title: "Launch".into(),
            content: json!({}),
        },
        thread_id: None,
        plan,
        execution_context: json!({ "locale": "en" }),
        runner_metadata: json!({}),
        principal: None,
    }
}

async fn create(engine: &Engine, pool: &PgPool, plan: Value) -> RunId {
    let mut tx = pool.begin().await.unwrap();
    let run = engine.create_run(&mut tx, new_run(plan)).await.unwrap();
    tx.commit().await.unwrap();
    run.run_id
}

async fn snapshot(pool: &PgPool, run: &RunId) -> RunSnapshot {
    persistence::load_snapshot(pool, run)
        .await
        .unwrap()
        .unwrap()
}

/// Answers the pending request of `run` with `responses` and applies it.
async fn answer(pool: &PgPool, run: &RunId, request: &RequestId, responses: Value) {
    let cmd = NewCommand {
        kind: CommandKind::Resume,
        run_id: Some(run.clone()),
        request_id: Some(request.clone()),
        idempotency_key: None,
        payload: json!({ "responses": responses }),
        operator: operator("olivia"),
        note: None,
        trace_context: None,
        principal: None,
        approver: None,
    };
    let id = submit(pool, cmd).await;
    let outcome = apply(pool, &id).await;
    assert!(
        matches!(outcome, persistence::ApplyOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

fn set_hitl_set(review: Value) -> Value {
    let mut hitl = json!({ "id": "review", "type": "hitl", "prompt": "Approve the draft?",
                           "responseTypes": ["approval", "rejection", "option", "freeform"],
                           "options": [ { "id": "short", "label": "Shorten it" } ] });
    hitl.as_object_mut()
        .unwrap()
        .extend(review.as_object().unwrap().clone());
    json!({ "nodes": [
        { "id": "prepare", "type": "task", "capability": "set", "input": { "draft": "v1" } },
        hitl,
        { "id": "publish", "type": "task", "capability": "set", "input": { "published": true } } ] })
}

async fn pause(engine: &Engine, pool: &PgPool, plan: Value) -> (RunId, RequestId) {
    let run = create(engine, pool, plan).await;
    match engine.advance(pool, &run).await.unwrap() {
        AdvanceOutcome::Paused { request_id, .. } => (run, request_id),
        other => panic!("expected a pause, got {other:?}"),
    }
}

#[tokio::test]
async fn set_hitl_set_pauses_then_completes_with_both_values_and_the_answer() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let (run, request) = pause(&engine, &db.pool, set_hitl_set(json!({}))).await;

    let pending = persistence::list_pending(
        &db.pool,
        &PendingFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].pending_request_id.clone(),
            pending[0].pending_node_id.as_str()
        ),
        (request.clone(), "review")
    );
    assert_eq!(
        pending[0].execution_context["draft"], "v1",
        "the first node ran before the pause"
    );
    assert_eq!(pending[0].operator_prompt, "Approve the draft?");
    assert_eq!(
        engine.advance(&db.pool, &run).await.unwrap(),
        AdvanceOutcome::Idle {
            status: RunStatus::AwaitingHitl
        }
    );

    answer(
        &db.pool,
        &run,
        &request,
        json!([ { "responseType": "approval", "approved": true,
                                                "freeformText": "ship it" } ]),
    )
    .await;
    let outcome = engine.advance(&db.pool, &run).await.unwrap();
    assert!(
        matches!(
            outcome,
            AdvanceOutcome::Finished {
                status: RunStatus::Completed,
                ..
            }
        ),
        "{outcome:?}"
    );

    let snap = snapshot(&db.pool, &run).await;
    let ctx = &snap.run.execution_context;
    assert_eq!(ctx["draft"], "v1");
    assert_eq!(ctx["published"], true);
    assert_eq!(ctx["review"]["decision"], "approved");
    assert_eq!(ctx["review"]["responses"][0]["freeformText"], "ship it");
    assert_eq!(ctx["locale"], "en", "the initial context is kept");
    let actions: Vec<_> = snap.audit_log.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            AuditAction::RunCreated,
            AuditAction::RunStarted,
            AuditAction::NodeCompleted,
            AuditAction::HitlRequested,
            AuditAction::Resume,
            AuditAction::NodeCompleted,
            AuditAction::RunCompleted,
        ]
    );
}

#[tokio::test]
async fn a_rejection_follows_on_rejection_fail_continue_or_cancel() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    for (policy, status) in [
        ("fail", RunStatus::Failed),
        ("continue", RunStatus::Completed),
        ("cancel", RunStatus::Cancelled),
    ] {
        let (run, request) = pause(
            &engine,
            &db.pool,
            set_hitl_set(json!({ "onRejection": policy })),
        )
        .await;
        answer(
            &db.pool,
            &run,
            &request,
            json!([ { "responseType": "rejection", "freeformText": "off-brand" } ]),
        )
        .await;
        let outcome = engine.advance(&db.pool, &run).await.unwrap();
        assert!(
            matches!(outcome, AdvanceOutcome::Finished { status: s, .. } if s == status),
            "{policy}: {outcome:?}"
        );
        let snap = snapshot(&db.pool, &run).await;
        assert_eq!(snap.run.status, status, "{policy}");
        assert_eq!(snap.run.execution_context["review"]["decision"], "rejected");
        if status != RunStatus::Completed {
            let reason = snap.run.status_reason.unwrap();
            assert!(
                reason.contains("review") && reason.contains("off-brand"),
                "{policy}: {reason}"
            );
            assert!(
                snap.run.execution_context.get("published").is_none(),
                "{policy}: publish did not run"
            );
        } else {
            assert_eq!(snap.run.execution_context["published"], true);
        }
    }
    // `approved: false` is a rejection too.
    let (run, request) = pause(&engine, &db.pool, set_hitl_set(json!({}))).await;
    answer(
        &db.pool,
        &run,
        &request,
        json!([ { "responseType": "approval", "approved": false } ]),
    )
    .await;
    assert!(matches!(
        engine.advance(&db.pool, &run).await.unwrap(),
        AdvanceOutcome::Finished {
            status: RunStatus::Failed,
            ..
        }
    ));
}

#[tokio::test]
async fn an_option_answer_routed_by_next_skips_to_the_mapped_node() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let plan = json!({ "nodes": [
        { "id": "review", "type": "hitl", "prompt": "Which way?", "responseTypes": ["option"],
          "options": [ { "id": "fast", "label": "Skip the edit" }, { "id": "slow", "label": "Edit first" } ],
          "next": { "fast": "publish" } },
        { "id": "edit", "type": "task", "capability": "set", "input": { "edited": true } },
        { "id": "publish", "type": "task", "capability": "set", "input": { "published": true } } ] });
    let (run, request) = pause(&engine, &db.pool, plan.clone()).await;
    answer(
        &db.pool,
        &run,
        &request,
        json!([ { "responseType": "option", "optionId": "fast" } ]),
    )
    .await;
    engine.advance(&db.pool, &run).await.unwrap();
    let ctx = snapshot(&db.pool, &run).await.run.execution_context;
    assert_eq!(
        (ctx["published"].clone(), ctx.get("edited")),
        (json!(true), None),
        "edit was skipped"
    );
    assert_eq!(ctx["review"]["optionId"], "fast");

    // An option without a mapping goes on in order.
    let (run, request) = pause(&engine, &db.pool, plan).await;
    answer(
        &db.pool,
        &run,
        &request,
        json!([ { "responseType": "option", "optionId": "slow" } ]),
    )
    .await;
    engine.advance(&db.pool, &run).await.unwrap();
    let ctx = snapshot(&db.pool, &run).await.run.execution_context;
    assert_eq!(
        (ctx["edited"].clone(), ctx["published"].clone()),
        (json!(true), json!(true))
    );
}

#[tokio::test]
async fn a_fail_task_fails_the_run_with_its_message() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let run = create(&engine, &db.pool, json!({ "nodes": [
        { "id": "boom", "type": "task", "capability": "fail", "input": { "message": "quota exceeded" } },
        { "id": "after", "type": "task", "capability": "set", "input": { "after": true } } ] })).await;
    let outcome = engine.advance(&db.pool, &run).await.unwrap();
    assert!(matches!(
        outcome,
        AdvanceOutcome::Finished {
            status: RunStatus::Failed,
            ..
        }
    ));
    let snap = snapshot(&db.pool, &run).await;
    assert_eq!(snap.run.status_reason.as_deref(), Some("quota exceeded"));
    assert!(snap.run.execution_context.get("after").is_none());
}

#[tokio::test]
async fn an_invalid_plan_is_refused_with_the_node_named_and_nothing_is_written() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    let cases = [
        (
            json!({ "nodes": [ { "id": "a", "type": "task", "capability": "set" },
                            { "id": "a", "type": "task", "capability": "set" } ] }),
            "a",
            "plan.nodes[1].id",
        ),
        (
            json!({ "nodes": [ { "id": "x", "type": "task", "capability": "teleport" } ] }),
            "x",
            "plan.nodes[0].capability",
        ),
        (
            json!({ "nodes": [ { "id": "r", "type": "hitl", "prompt": "?", "responseTypes": ["option"],
                              "options": [ { "id": "o", "label": "O" } ], "next": { "o": "nowhere" } } ] }),
            "r",
            "plan.nodes[0].next.o",
        ),
        (
            json!({ "nodes": [ { "id": "r", "type": "hitl", "responseTypes": ["approval"] } ] }),
            "r",
            "plan.nodes[0].prompt",
        ),
    ];
    for (plan, node, field) in cases {
        let mut tx = db.pool.begin().await.unwrap();
        let err = engine.create_run(&mut tx, new_run(plan)).await.unwrap_err();
        tx.rollback().await.unwrap();
        let EngineError::InvalidPlan(e) = err else {
            panic!("{err}")
        };
        assert_eq!(
            (e.node.as_deref(), e.field.as_str()),
            (Some(node), field),
            "{e}"
        );
    }
    assert_eq!(
        crate::common::fixtures::table_counts(&db.pool).await,
        vec![0; 6]
    );
}

/// A capability that blocks until released, so two advancements can be made to race.
struct Gate {
    calls: AtomicUsize,
    release: tokio::sync::Semaphore,
}

impl Capability for Gate {
    fn call<'a>(
        &'a self,
        _: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.release.acquire().await.unwrap().forget();
            Ok(CapabilityOutcome::Completed {
                merge: serde_json::Map::new(),
                runner_state: RunnerStateUpdate::Keep,
                notes: None,
            })
        })
    }
}

#[tokio::test]
async fn two_advancements_racing_on_one_run_write_once_and_the_stale_one_writes_nothing() {
    let db = crate::common::fresh_db().await;
    let gate = Arc::new(Gate {
        calls: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let mut registry = CapabilityRegistry::with_builtins();
    registry.register("gate", gate.clone());
    let engine = Engine::new(registry, true);
    let run = create(
        &engine,
        &db.pool,
        json!({ "nodes": [
        { "id": "slow", "type": "task", "capability": "gate" },
        { "id": "done", "type": "task", "capability": "set", "input": { "done": true } } ] }),
    )
    .await;
    // Start the run first so both racers see the same running version.
    let mut tx = db.pool.begin().await.unwrap();
    persistence::start_run(&mut tx, &run, 1).await.unwrap();
    tx.commit().await.unwrap();

    let (a, b) = (engine.clone(), engine.clone());
    let (pa, pb) = (db.pool.clone(), db.pool.clone());
    let (ra, rb) = (run.clone(), run.clone());
    let first = tokio::spawn(async move { a.advance(&pa, &ra).await });
    let second = tokio::spawn(async move { b.advance(&pb, &rb).await });
    while gate.calls.load(Ordering::SeqCst) < 2 {
        crate::common::poll_pause().await;
    }
    gate.release.add_permits(2);
    let outcomes = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    let finished = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                AdvanceOutcome::Finished {
                    status: RunStatus::Completed,
                    ..
                }
            )
        })
        .count();
    let superseded = outcomes
        .iter()
        .filter(|o| **o == AdvanceOutcome::Superseded)
        .count();
    assert_eq!((finished, superseded), (1, 1), "{outcomes:?}");

    let snap = snapshot(&db.pool, &run).await;
    let slow_checkpoints = snap
        .audit_log
        .iter()
        .filter(|e| e.action == AuditAction::NodeCompleted && e.details["nodeId"] == "slow")
        .count();
    assert_eq!(slow_checkpoints, 1, "the stale advancement wrote nothing");
    assert_eq!(snap.audit_log.len() as i64, snap.run.version);
}

#[tokio::test]
async fn with_hitl_disabled_a_hitl_node_resolves_by_its_policy_and_the_audit_says_so() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(false);

    let run = create(
        &engine,
        &db.pool,
        set_hitl_set(json!({ "timeoutSeconds": 60, "onTimeout": "approve" })),
    )
    .await;
    let outcome = engine.advance(&db.pool, &run).await.unwrap();
    assert!(
        matches!(
            outcome,
            AdvanceOutcome::Finished {
                status: RunStatus::Completed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let snap = snapshot(&db.pool, &run).await;
    assert!(snap.hitl_requests.is_empty(), "no request was raised");
    assert!(
        snap.audit_log
            .iter()
            .any(|e| e.action == AuditAction::HitlDisabled && e.details["decision"] == "approved")
    );
    assert_eq!(
        snap.run.execution_context["review"]["status"],
        "hitl_disabled"
    );

    // Without onTimeout a disabled node rejects, and the rejection policy applies.
    let run = create(&engine, &db.pool, set_hitl_set(json!({}))).await;
    let outcome = engine.advance(&db.pool, &run).await.unwrap();
    assert!(
        matches!(
            outcome,
            AdvanceOutcome::Finished {
                status: RunStatus::Failed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let snap = snapshot(&db.pool, &run).await;
    let actions: Vec<_> = snap.audit_log.iter().map(|e| e.action).collect();
    assert_eq!(
        &actions[actions.len() - 2..],
        &[AuditAction::HitlDisabled, AuditAction::RunFailed]
    );
    assert!(snap.run.status_reason.unwrap().contains("HITL is disabled"));
}

#[tokio::test]
async fn an_expired_request_continues_by_on_timeout() {
    let db = crate::common::fresh_db().await;
    let engine = Engine::with_builtins(true);
    for (on_timeout, status) in [
        ("approve", RunStatus::Completed),
        ("reject", RunStatus::Failed),
    ] {
        let (run, request) = pause(
            &engine,
            &db.pool,
            set_hitl_set(json!({ "timeoutSeconds": 30, "onTimeout": on_timeout })),
        )
        .await;
        let snap = snapshot(&db.pool, &run).await;
        let expires = snap.hitl_requests[0].expires_at.unwrap();
        assert!(
            expires > Utc::now() + Duration::seconds(25)
                && expires <= Utc::now() + Duration::seconds(31)
        );
        let mut tx = db.pool.begin().await.unwrap();
        let expired = persistence::expire_request(
            &mut tx,
            &request,
            expires + Duration::seconds(1),
            AdvanceBy::Job,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert!(matches!(expired, ExpireOutcome::Expired { .. }));
        let outcome = engine.advance(&db.pool, &run).await.unwrap();
        assert!(
            matches!(outcome, AdvanceOutcome::Finished { status: s, .. } if s == status),
            "{on_timeout}: {outcome:?}"
        );
        let snap = snapshot(&db.pool, &run).await;
        assert_eq!(snap.run.execution_context["review"]["status"], "expired");
    }
}

/// A capability that interrupts on its first call and completes when called with answers.
struct AskFirst {
    seen: std::sync::Mutex<Vec<(Option<String>, usize)>>,
}

impl Capability for AskFirst {
    fn call<'a>(
        &'a self,
        call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            let answers = call.responses.map_or(0, <[_]>::len);
            self.seen
                .lock()
                .unwrap()
                .push((call.runner_state.map(str::to_owned), answers));
            if answers == 0 {
                return Ok(CapabilityOutcome::Interrupted {
                    request: Interrupt::single(
                        call.node_id,
                        "May I send the email?".into(),
                        vec![ResponseType::Approval],
                        vec![],
                    ),
                    runner_state: RunnerStateUpdate::Set(r#"{"turn": 1}"#.into()),
                });
            }
            let mut merge = serde_json::Map::new();
            merge.insert("sent".into(), json!(true));
            Ok(CapabilityOutcome::Completed {
                merge,
                runner_state: RunnerStateUpdate::Set(r#"{"turn":2}"#.into()),
                notes: Some(json!("sent")),
            })
        })
    }
}

#[tokio::test]
async fn a_capability_that_interrupts_is_called_again_with_the_answers_and_its_runner_state() {
    let db = crate::common::fresh_db().await;
    let agent = Arc::new(AskFirst {
        seen: std::sync::Mutex::new(vec![]),
    });
    let mut registry = CapabilityRegistry::with_builtins();
    registry.register("ask", agent.clone());
    let engine = Engine::new(registry, true);
    let (run, request) = pause(
        &engine,
        &db.pool,
        json!({ "nodes": [ { "id": "mail", "type": "task", "capability": "ask" } ] }),
    )
    .await;
    let snap = snapshot(&db.pool, &run).await;
    assert_eq!(
        snap.hitl_requests[0].operator_prompt,
        "May I send the email?"
    );
    assert_eq!(snap.hitl_requests[0].node_id, "mail");

    answer(
        &db.pool,
        &run,
        &request,
        json!([ { "responseType": "approval", "approved": true } ]),
    )
    .await;
    let outcome = engine.advance(&db.pool, &run).await.unwrap();
    assert!(
        matches!(
            outcome,
            AdvanceOutcome::Finished {
                status: RunStatus::Completed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let seen = agent.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(None, 0), (Some(r#"{"turn": 1}"#.to_owned()), 1)],
        "the state exactly as given"
    );
    let snap = snapshot(&db.pool, &run).await;
    assert_eq!(
        persistence::runner_state(&db.pool, &run, "mail")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"turn":2}"#)
    );
    assert_eq!(snap.run.runner_metadata["agentNotes"]["mail"], "sent");
    assert_eq!(snap.run.execution_context["sent"], true);
}
