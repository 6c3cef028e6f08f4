//! Tests of the run/request state machine: every transition from every status, the
//! model, and property tests over random sequences of transitions.

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::domain::status::{AuditAction as A, RequestStatus as Rq, RunStatus as S};

/// A deterministic request id, distinct for each `n`.
fn req(n: u128) -> RequestId {
    RequestId::from_uuid(Uuid::from_u128(n))
}

/// The pending request in the matrix tests.
fn p() -> RequestId {
    req(1)
}

/// A request that is not pending anywhere in the matrix tests.
fn other() -> RequestId {
    req(2)
}

/// A request being raised in the matrix tests.
fn raised() -> RequestId {
    req(3)
}

/// Every shape of transition, naming the pending, another and a new request.
fn every_transition() -> Vec<Transition> {
    let mut all = vec![
        Transition::Start,
        Transition::Checkpoint,
        Transition::RaiseRequest {
            request_id: raised(),
        },
        Transition::Resume { request_id: p() },
        Transition::Resume {
            request_id: other(),
        },
        Transition::Remove { request_id: None },
        Transition::Remove {
            request_id: Some(p()),
        },
        Transition::Remove {
            request_id: Some(other()),
        },
        Transition::Complete,
        Transition::Fail,
        Transition::Cancel,
        Transition::Rehydrate,
        Transition::Retry,
        Transition::AgentUnreachable,
    ];
    for note in RequestNote::ALL {
        all.push(Transition::Note {
            request_id: p(),
            note,
        });
        all.push(Transition::Note {
            request_id: other(),
            note,
        });
    }
    for action in TimeoutAction::ALL.iter().copied() {
        all.push(Transition::Expire {
            request_id: p(),
            action,
        });
        all.push(Transition::Expire {
            request_id: other(),
            action,
        });
    }
    all
}

fn ok(
    status: RunStatus,
    pending: Option<RequestId>,
    previous_request: Option<(RequestId, RequestStatus)>,
    audit_action: AuditAction,
) -> Result<TransitionOutcome, TransitionError> {
    Ok(TransitionOutcome {
        status,
        pending,
        previous_request,
        audit_action,
    })
}

fn illegal(from: RunStatus, t: &Transition) -> Result<TransitionOutcome, TransitionError> {
    Err(TransitionError::IllegalFrom {
        from,
        transition: t.name(),
    })
}

fn not_pending(
    request_id: &RequestId,
    pending: Option<RequestId>,
) -> Result<TransitionOutcome, TransitionError> {
    Err(TransitionError::NotPending {
        request_id: request_id.clone(),
        pending,
    })
}

#[test]
fn a_queued_run_can_only_start_fail_be_removed_or_rehydrate() {
    for t in every_transition() {
        let want = match &t {
            Transition::Start => ok(S::Running, None, None, A::RunStarted),
            Transition::Fail => ok(S::Failed, None, None, A::RunFailed),
            Transition::Remove { request_id: None } => ok(S::Cancelled, None, None, A::Remove),
            Transition::Remove {
                request_id: Some(id),
            } => not_pending(id, None),
            Transition::Rehydrate => ok(S::Queued, None, None, A::Rehydrate),
            Transition::Checkpoint
            | Transition::RaiseRequest { .. }
            | Transition::Resume { .. }
            | Transition::Expire { .. }
            | Transition::Complete
            | Transition::Cancel
            | Transition::Retry
            | Transition::AgentUnreachable
            | Transition::Note { .. } => illegal(S::Queued, &t),
        };
        assert_eq!(next_status(S::Queued, None, &t), want, "{t:?}");
    }
}

#[test]
fn a_running_run_can_checkpoint_pause_finish_be_cancelled_or_rehydrate() {
    for t in every_transition() {
        let want = match &t {
            Transition::Checkpoint => ok(S::Running, None, None, A::NodeCompleted),
            Transition::RaiseRequest { request_id } => ok(
                S::AwaitingHitl,
                Some(request_id.clone()),
                None,
                A::HitlRequested,
            ),
            Transition::Remove { request_id: None } => ok(S::Cancelled, None, None, A::Remove),
            Transition::Remove {
                request_id: Some(id),
            } => not_pending(id, None),
            Transition::Complete => ok(S::Completed, None, None, A::RunCompleted),
            Transition::Fail => ok(S::Failed, None, None, A::RunFailed),
            Transition::Cancel => ok(S::Cancelled, None, None, A::RunCancelled),
            Transition::Rehydrate => ok(S::Running, None, None, A::Rehydrate),
            Transition::AgentUnreachable => ok(S::Running, None, None, A::AgentUnreachable),
            Transition::Start
            | Transition::Resume { .. }
            | Transition::Expire { .. }
            | Transition::Retry
            | Transition::Note { .. } => illegal(S::Running, &t),
        };
        assert_eq!(next_status(S::Running, None, &t), want, "{t:?}");
    }
}

#[test]
fn an_awaiting_run_can_only_resume_be_removed_expire_or_rehydrate() {
    for t in every_transition() {
        let want = match &t {
            Transition::Resume { request_id } if *request_id == p() => {
                ok(S::Running, None, Some((p(), Rq::Resolved)), A::Resume)
            }
            Transition::Remove { request_id }
                if request_id.as_ref().is_none_or(|id| *id == p()) =>
            {
                ok(S::Cancelled, None, Some((p(), Rq::Denied)), A::Remove)
            }
            Transition::Expire { request_id, action } if *request_id == p() => {
                let status = match action {
                    TimeoutAction::Reject | TimeoutAction::Approve => S::Running,
                    TimeoutAction::Cancel => S::Cancelled,
                };
                ok(status, None, Some((p(), Rq::Expired)), A::Expire)
            }
            Transition::Note { request_id, note } if *request_id == p() => {
                ok(S::AwaitingHitl, Some(p()), None, note.audit_action())
            }
            Transition::Note { request_id, .. } => not_pending(request_id, Some(p())),
            Transition::Resume { request_id }
            | Transition::Remove {
                request_id: Some(request_id),
            }
            | Transition::Expire { request_id, .. } => not_pending(request_id, Some(p())),
            Transition::Remove { request_id: None } => unreachable!("handled above"),
            Transition::Rehydrate => ok(S::AwaitingHitl, Some(p()), None, A::Rehydrate),
            Transition::Start
            | Transition::Checkpoint
            | Transition::RaiseRequest { .. }
            | Transition::Complete
            | Transition::Fail
            | Transition::Cancel
            | Transition::Retry
            | Transition::AgentUnreachable => illegal(S::AwaitingHitl, &t),
        };
        assert_eq!(next_status(S::AwaitingHitl, Some(&p()), &t), want, "{t:?}");
    }
}

#[test]
fn a_terminal_run_refuses_every_transition_but_a_retry_of_a_failed_one() {
    for status in [S::Completed, S::Failed, S::Cancelled] {
        for t in every_transition() {
            let want = if status == S::Failed && t == Transition::Retry {
                ok(S::Running, None, None, A::Retry)
            } else {
                Err(TransitionError::Terminal { status })
            };
            assert_eq!(next_status(status, None, &t), want, "{status} {t:?}");
        }
    }
}

#[test]
fn each_transition_records_its_own_audit_action() {
    let expected = [
        (Transition::Start, A::RunStarted),
        (Transition::Checkpoint, A::NodeCompleted),
        (Transition::AgentUnreachable, A::AgentUnreachable),
        (
            Transition::RaiseRequest { request_id: p() },
            A::HitlRequested,
        ),
        (Transition::Resume { request_id: p() }, A::Resume),
        (Transition::Remove { request_id: None }, A::Remove),
        (
            Transition::Expire {
                request_id: p(),
                action: TimeoutAction::Approve,
            },
            A::Expire,
        ),
        (Transition::Complete, A::RunCompleted),
        (Transition::Fail, A::RunFailed),
        (Transition::Cancel, A::RunCancelled),
        (Transition::Rehydrate, A::Rehydrate),
        (Transition::Retry, A::Retry),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::Claimed,
            },
            A::RequestClaimed,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::Released,
            },
            A::RequestReleased,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::ClaimBroken,
            },
            A::ClaimBroken,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::ApprovalRecorded,
            },
            A::ApprovalRecorded,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::Reminded,
            },
            A::Reminded,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::Escalated,
            },
            A::Escalated,
        ),
        (
            Transition::Note {
                request_id: p(),
                note: RequestNote::Expiring,
            },
            A::Expiring,
        ),
    ];
    for (t, action) in expected {
        assert_eq!(t.audit_action(), action, "{t:?}");
    }
}

#[test]
fn transition_errors_read_as_sentences() {
    let terminal = next_status(S::Completed, None, &Transition::Start).unwrap_err();
    assert_eq!(
        terminal.to_string(),
        "the run is completed, which is terminal"
    );

    let illegal = next_status(S::Queued, None, &Transition::Complete).unwrap_err();
    assert_eq!(illegal.to_string(), "cannot complete a run that is queued");

    let stale = next_status(
        S::AwaitingHitl,
        Some(&p()),
        &Transition::Resume {
            request_id: other(),
        },
    )
    .unwrap_err();
    assert_eq!(
        stale.to_string(),
        format!(
            "request {} is not pending on this run (the pending request is {})",
            other(),
            p()
        )
    );

    let nothing = next_status(
        S::Running,
        None,
        &Transition::Remove {
            request_id: Some(other()),
        },
    )
    .unwrap_err();
    assert!(
        nothing.to_string().ends_with("(no request is pending)"),
        "{nothing}"
    );
}

#[test]
fn a_new_run_model_is_queued_at_version_1_with_a_run_created_audit() {
    let run = RunModel::new();
    assert_eq!(run.status, S::Queued);
    assert_eq!(run.pending, None);
    assert_eq!(run.version, 1);
    assert_eq!(run.audit, [A::RunCreated]);
    assert!(run.requests.is_empty());
    assert_eq!(RunModel::default(), run);
}

#[test]
fn a_run_pauses_resumes_and_completes_with_one_version_and_audit_per_step() {
    let mut run = RunModel::new();
    run.apply(Transition::Start).unwrap();
    run.apply(Transition::Checkpoint).unwrap();
    run.apply(Transition::RaiseRequest { request_id: p() })
        .unwrap();
    // The API example: a run paused at its first HITL node is at version 4.
    assert_eq!(run.version, 4);
    assert_eq!(run.status, S::AwaitingHitl);
    assert_eq!(run.pending, Some(p()));
    assert_eq!(run.requests.get(&p()), Some(&Rq::Pending));

    run.apply(Transition::Resume { request_id: p() }).unwrap();
    assert_eq!(run.status, S::Running);
    assert_eq!(run.pending, None);
    assert_eq!(run.requests.get(&p()), Some(&Rq::Resolved));

    run.apply(Transition::Complete).unwrap();
    assert_eq!(run.status, S::Completed);
    assert_eq!(run.version, 6);
    assert_eq!(
        run.audit,
        [
            A::RunCreated,
            A::RunStarted,
            A::NodeCompleted,
            A::HitlRequested,
            A::Resume,
            A::RunCompleted
        ]
    );
}

#[test]
fn removing_an_awaiting_run_denies_its_request() {
    let mut run = RunModel::new();
    run.apply(Transition::Start).unwrap();
    run.apply(Transition::RaiseRequest { request_id: p() })
        .unwrap();
    run.apply(Transition::Remove { request_id: None }).unwrap();
    assert_eq!(run.status, S::Cancelled);
    assert_eq!(run.pending, None);
    assert_eq!(run.requests.get(&p()), Some(&Rq::Denied));
}

#[test]
fn an_expired_request_with_cancel_cancels_the_run() {
    let mut run = RunModel::new();
    run.apply(Transition::Start).unwrap();
    run.apply(Transition::RaiseRequest { request_id: p() })
        .unwrap();
    run.apply(Transition::Expire {
        request_id: p(),
        action: TimeoutAction::Cancel,
    })
    .unwrap();
    assert_eq!(run.status, S::Cancelled);
    assert_eq!(run.requests.get(&p()), Some(&Rq::Expired));
    assert_eq!(run.audit.last(), Some(&A::Expire));
}

#[test]
fn the_model_refuses_to_raise_the_same_request_twice() {
    let mut run = RunModel::new();
    run.apply(Transition::Start).unwrap();
    run.apply(Transition::RaiseRequest { request_id: p() })
        .unwrap();
    run.apply(Transition::Resume { request_id: p() }).unwrap();
    let before = run.clone();
    let err = run
        .apply(Transition::RaiseRequest { request_id: p() })
        .unwrap_err();
    assert_eq!(err, TransitionError::DuplicateRequest { request_id: p() });
    assert_eq!(run, before);
}

#[test]
fn a_refused_transition_changes_nothing_in_the_model() {
    let mut run = RunModel::new();
    run.apply(Transition::Start).unwrap();
    run.apply(Transition::RaiseRequest { request_id: p() })
        .unwrap();
    let before = run.clone();
    assert!(
        run.apply(Transition::Resume {
            request_id: other()
        })
        .is_err()
    );
    assert!(run.apply(Transition::Complete).is_err());
    assert_eq!(run, before);
}

#[test]
fn a_pending_request_left_by_an_inconsistent_snapshot_is_cancelled_when_the_run_ends() {
    let outcome = next_status(S::Running, Some(&p()), &Transition::Complete).unwrap();
    assert_eq!(outcome.previous_request, Some((p(), Rq::Cancelled)));
    assert_eq!(outcome.pending, None);
}

// ---- property tests ----

/// Which request a generated transition names, resolved against the model at apply
/// time so that sequences hit the pending request often.
#[derive(Clone, Debug)]
enum Req {
    /// The model's pending request (a fixed id when none is pending).
    Pending,
    /// One of a few fixed ids, so raises sometimes reuse an id.
    Pool(u8),
    /// An id nothing has seen.
    Unknown(u128),
}

/// A transition as generated, before its request ids are resolved.
#[derive(Clone, Debug)]
enum Step {
    Start,
    Checkpoint,
    Raise(Req),
    Resume(Req),
    Remove(Option<Req>),
    Expire(Req, TimeoutAction),
    Complete,
    Fail,
    Cancel,
    Rehydrate,
    Retry,
    Note(Req, RequestNote),
}

fn arb_req() -> impl Strategy<Value = Req> {
    prop_oneof![
        6 => Just(Req::Pending),
        2 => (0u8..6).prop_map(Req::Pool),
        1 => any::<u128>().prop_map(Req::Unknown),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Weighted towards the steps that keep a run alive, so sequences spend time
        // pausing and resuming before something ends them.
        4 => Just(Step::Start),
        4 => Just(Step::Checkpoint),
        4 => (0u8..3).prop_map(|n| Step::Raise(Req::Pool(n))),
        3 => any::<u128>().prop_map(|n| Step::Raise(Req::Unknown(n))),
        6 => arb_req().prop_map(Step::Resume),
        1 => proptest::option::of(arb_req()).prop_map(Step::Remove),
        3 => (arb_req(), proptest::sample::select(TimeoutAction::ALL))
            .prop_map(|(r, a)| Step::Expire(r, a)),
        1 => Just(Step::Complete),
        1 => Just(Step::Fail),
        1 => Just(Step::Cancel),
        2 => Just(Step::Rehydrate),
        1 => Just(Step::Retry),
        2 => (arb_req(), proptest::sample::select(RequestNote::ALL.to_vec()))
            .prop_map(|(r, n)| Step::Note(r, n)),
    ]
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(arb_step(), 0..40)
}

fn resolve(r: &Req, model: &RunModel) -> RequestId {
    match r {
        Req::Pending => model.pending.clone().unwrap_or_else(|| req(1000)),
        Req::Pool(n) => req(u128::from(*n) + 100),
        // Keep clear of the pool and the fallback above.
        Req::Unknown(n) => req(n.saturating_add(1 << 64)),
    }
}

fn to_transition(step: &Step, model: &RunModel) -> Transition {
    match step {
        Step::Start => Transition::Start,
        Step::Checkpoint => Transition::Checkpoint,
        Step::Raise(r) => Transition::RaiseRequest {
            request_id: resolve(r, model),
        },
        Step::Resume(r) => Transition::Resume {
            request_id: resolve(r, model),
        },
        Step::Remove(r) => Transition::Remove {
            request_id: r.as_ref().map(|r| resolve(r, model)),
        },
        Step::Expire(r, action) => Transition::Expire {
            request_id: resolve(r, model),
            action: *action,
        },
        Step::Complete => Transition::Complete,
        Step::Fail => Transition::Fail,
        Step::Cancel => Transition::Cancel,
        Step::Rehydrate => Transition::Rehydrate,
        Step::Retry => Transition::Retry,
        Step::Note(r, note) => Transition::Note {
            request_id: resolve(r, model),
            note: *note,
        },
    }
}

/// One applied (or refused) transition: the model before and after, and the result.
struct Applied {
    before: RunModel,
    transition: Transition,
    result: Result<(), TransitionError>,
    after: RunModel,
}

/// Runs `steps` against a fresh model and records every step.
fn run(steps: &[Step]) -> Vec<Applied> {
    let mut model = RunModel::new();
    steps
        .iter()
        .map(|step| {
            let before = model.clone();
            let transition = to_transition(step, &model);
            let result = model.apply(transition.clone());
            Applied {
                before,
                transition,
                result,
                after: model.clone(),
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn terminal_states_never_change_once_reached_but_failed_by_a_retry(steps in arb_steps()) {
        let mut reached: Option<RunStatus> = None;
        for a in run(&steps) {
            match reached {
                Some(RunStatus::Failed) if a.transition == Transition::Retry => {
                    prop_assert_eq!(&a.result, &Ok(()));
                    prop_assert_eq!(a.after.status, RunStatus::Running);
                    prop_assert_eq!(a.after.version, a.before.version + 1);
                }
                Some(status) => {
                    prop_assert_eq!(&a.result, &Err(TransitionError::Terminal { status }));
                    prop_assert_eq!(&a.after, &a.before);
                }
                None => {}
            }
            reached = a.after.status.is_terminal().then_some(a.after.status);
        }
    }

    #[test]
    fn only_a_failed_run_can_be_retried(steps in arb_steps()) {
        for a in run(&steps) {
            if a.transition == Transition::Retry {
                prop_assert_eq!(a.result.is_ok(), a.before.status == RunStatus::Failed);
            }
        }
    }

    #[test]
    fn there_is_at_most_one_pending_request_and_only_while_awaiting_hitl(steps in arb_steps()) {
        for a in run(&steps) {
            let m = &a.after;
            prop_assert_eq!(m.status == RunStatus::AwaitingHitl, m.pending.is_some());
            let pending: Vec<&RequestId> = m
                .requests
                .iter()
                .filter(|(_, status)| status.is_pending())
                .map(|(id, _)| id)
                .collect();
            prop_assert_eq!(pending, m.pending.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn version_increases_by_one_per_applied_transition_and_never_on_a_refused_one(
        steps in arb_steps()
    ) {
        for a in run(&steps) {
            match &a.result {
                Ok(()) => prop_assert_eq!(a.after.version, a.before.version + 1),
                Err(_) => prop_assert_eq!(&a.after, &a.before),
            }
        }
    }

    #[test]
    fn every_applied_transition_adds_exactly_its_one_audit_action(steps in arb_steps()) {
        for a in run(&steps) {
            let n = a.before.audit.len();
            if a.result.is_ok() {
                prop_assert_eq!(a.after.audit.len(), n + 1);
                prop_assert_eq!(&a.after.audit[..n], &a.before.audit[..]);
                prop_assert_eq!(a.after.audit[n], a.transition.audit_action());
            } else {
                prop_assert_eq!(&a.after.audit, &a.before.audit);
            }
        }
    }

    #[test]
    fn a_request_once_out_of_pending_never_changes_again(steps in arb_steps()) {
        for a in run(&steps) {
            for (id, status) in &a.before.requests {
                let now = a.after.requests.get(id);
                prop_assert!(now.is_some(), "request {} disappeared", id);
                if !status.is_pending() {
                    prop_assert_eq!(now, Some(status));
                }
            }
        }
    }

    #[test]
    fn the_model_applies_exactly_what_next_status_decides(steps in arb_steps()) {
        for a in run(&steps) {
            let decided = next_status(a.before.status, a.before.pending.as_ref(), &a.transition);
            match (&decided, &a.result) {
                (Ok(outcome), Ok(())) => {
                    prop_assert_eq!(a.after.status, outcome.status);
                    prop_assert_eq!(&a.after.pending, &outcome.pending);
                }
                (Ok(_), Err(e)) => {
                    let duplicate = matches!(e, TransitionError::DuplicateRequest { .. });
                    prop_assert!(duplicate, "model refused what next_status allowed: {}", e);
                }
                (Err(want), Err(got)) => prop_assert_eq!(want, got),
                (Err(e), Ok(())) => prop_assert!(false, "model applied a refused transition: {}", e),
            }
        }
    }
}
