//! The run/request state machine as pure code.
//!
//! [`next_status`] decides, from a run's status and its pending request, whether a
//! [`Transition`] is legal and what it leads to. The persistence layer mirrors these
//! rules in SQL (each transition one transaction that bumps the run's `version` and
//! writes one audit event); [`RunModel`] applies them to an in-memory run so property
//! tests can check the invariants the database relies on.

use std::collections::BTreeMap;

use super::ids::RequestId;
use super::status::{AuditAction, RequestStatus, RunStatus, TimeoutAction};

/// Something that happens to a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A worker picks up a queued run: `queued → running`.
    Start,
    /// A node finished and the run moves on: `running → running`.
    Checkpoint,
    /// A HITL node pauses the run: `running → awaiting_hitl`, `request_id` becomes the
    /// pending request.
    RaiseRequest {
        /// The request being raised.
        request_id: RequestId,
    },
    /// An operator answers the pending request: `awaiting_hitl → running`, the request
    /// is resolved (whatever the answer; what a rejection does is a later transition).
    Resume {
        /// Must be the pending request.
        request_id: RequestId,
    },
    /// An operator removes the run: any non-terminal status `→ cancelled`, a pending
    /// request is denied.
    Remove {
        /// When given, must be the pending request.
        request_id: Option<RequestId>,
    },
    /// The pending request's deadline passed: the request expires and the run goes
    /// `awaiting_hitl → running` for `reject`/`approve`, `→ cancelled` for `cancel`.
    Expire {
        /// Must be the pending request.
        request_id: RequestId,
        /// The node's `onTimeout` policy.
        action: TimeoutAction,
    },
    /// The last node finished: `running → completed`.
    Complete,
    /// An error or a rejection policy fails the run: `queued | running → failed`.
    Fail,
    /// The engine cancels the run by policy: `running → cancelled`.
    Cancel,
    /// A worker reloads the run after a restart or sweep: any non-terminal status stays
    /// as it is, the pending request too.
    Rehydrate,
    /// An agent call failed in a way worth retrying and the run starts waiting for the
    /// agent: `running → running` (later attempts of the same outage write no transition).
    AgentUnreachable,
    /// An operator retries a failed run: `failed → running`, at the node that failed.
    /// The one way out of a terminal status; `completed` and `cancelled` never change.
    Retry,
    /// Something is recorded about the pending request that leaves the run waiting on
    /// it: `awaiting_hitl → awaiting_hitl`, the same request pending.
    Note {
        /// Must be the pending request.
        request_id: RequestId,
        /// What is recorded.
        note: RequestNote,
    },
}

/// What a [`Transition::Note`] records about a pending request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestNote {
    /// A principal claimed it (or renewed its claim).
    Claimed,
    /// The claim's holder released it.
    Released,
    /// A supervisor overrode another principal's claim.
    ClaimBroken,
    /// An approval was counted, short of the number needed.
    ApprovalRecorded,
    /// A reminder went out while it is pending.
    Reminded,
    /// An escalation step was applied to it.
    Escalated,
    /// Its deadline is near (a channel's `expiringNoticeSeconds`).
    Expiring,
}

impl RequestNote {
    /// Every note.
    pub const ALL: [RequestNote; 7] = [
        RequestNote::Claimed,
        RequestNote::Released,
        RequestNote::ClaimBroken,
        RequestNote::ApprovalRecorded,
        RequestNote::Reminded,
        RequestNote::Escalated,
        RequestNote::Expiring,
    ];

    /// The audit action the note records.
    pub const fn audit_action(self) -> AuditAction {
        match self {
            RequestNote::Claimed => AuditAction::RequestClaimed,
            RequestNote::Released => AuditAction::RequestReleased,
            RequestNote::ClaimBroken => AuditAction::ClaimBroken,
            RequestNote::ApprovalRecorded => AuditAction::ApprovalRecorded,
            RequestNote::Reminded => AuditAction::Reminded,
            RequestNote::Escalated => AuditAction::Escalated,
            RequestNote::Expiring => AuditAction::Expiring,
        }
    }
}

impl Transition {
    /// A short snake_case name for messages and logs, e.g. `raise_request`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Checkpoint => "checkpoint",
            Self::RaiseRequest { .. } => "raise_request",
            Self::Resume { .. } => "resume",
            Self::Remove { .. } => "remove",
            Self::Expire { .. } => "expire",
            Self::Complete => "complete",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
            Self::Rehydrate => "rehydrate",
            Self::Retry => "retry",
            Self::AgentUnreachable => "agent_unreachable",
            Self::Note { note, .. } => match note {
                RequestNote::Claimed => "claim",
                RequestNote::Released => "release",
                RequestNote::ClaimBroken => "break_claim",
                RequestNote::ApprovalRecorded => "record_approval",
                RequestNote::Reminded => "remind",
                RequestNote::Escalated => "escalate",
                RequestNote::Expiring => "notice_expiring",
            },
        }
    }

    /// The audit action this transition records (exactly one per transition).
    pub const fn audit_action(&self) -> AuditAction {
        match self {
            Self::Start => AuditAction::RunStarted,
            Self::Checkpoint => AuditAction::NodeCompleted,
            Self::RaiseRequest { .. } => AuditAction::HitlRequested,
            Self::Resume { .. } => AuditAction::Resume,
            Self::Remove { .. } => AuditAction::Remove,
            Self::Expire { .. } => AuditAction::Expire,
            Self::Complete => AuditAction::RunCompleted,
            Self::Fail => AuditAction::RunFailed,
            Self::Cancel => AuditAction::RunCancelled,
            Self::Rehydrate => AuditAction::Rehydrate,
            Self::Retry => AuditAction::Retry,
            Self::AgentUnreachable => AuditAction::AgentUnreachable,
            Self::Note { note, .. } => note.audit_action(),
        }
    }
}

/// What a legal transition leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionOutcome {
    /// The run's new status.
    pub status: RunStatus,
    /// The run's new pending request; `Some` exactly when `status` is `awaiting_hitl`.
    pub pending: Option<RequestId>,
    /// The previously pending request and its new status, when the transition settled
    /// it (resolved, denied, expired or cancelled).
    pub previous_request: Option<(RequestId, RequestStatus)>,
    /// The one audit action the transition records.
    pub audit_action: AuditAction,
}

/// Why a transition was refused. A refused transition changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The run is completed, failed or cancelled; terminal statuses never change, but
    /// for a retry of a failed run.
    #[error("the run is {status}, which is terminal")]
    Terminal {
        /// The run's (terminal) status.
        status: RunStatus,
    },
    /// The transition does not apply to the run's current status.
    #[error("cannot {transition} a run that is {from}")]
    IllegalFrom {
        /// The run's current status.
        from: RunStatus,
        /// The refused transition's [`Transition::name`].
        transition: &'static str,
    },
    /// The transition names a request that is not the run's pending request.
    #[error("request {request_id} is not pending on this run ({})", describe_pending(.pending.as_ref()))]
    NotPending {
        /// The request the transition named.
        request_id: RequestId,
        /// The run's actual pending request, if any.
        pending: Option<RequestId>,
    },
    /// A request with this id was already raised on the run (only [`RunModel::apply`]
    /// can tell; in the database the primary key refuses it).
    #[error("request {request_id} was already raised on this run")]
    DuplicateRequest {
        /// The request id raised a second time.
        request_id: RequestId,
    },
}

/// How a `NotPending` error describes the run's actual pending request.
fn describe_pending(pending: Option<&RequestId>) -> String {
    match pending {
        Some(id) => format!("the pending request is {id}"),
        None => "no request is pending".to_owned(),
    }
}

/// Decides where `t` takes a run that is `from` with `pending` as its pending request.
///
/// Expects a consistent snapshot: `pending` is `Some` exactly when `from` is
/// `awaiting_hitl` (the model and the database both keep it so). A pending request the
/// new state no longer carries is settled: resolved by resume, denied by remove,
/// expired by expire, cancelled by anything else (the run ended otherwise).
///
/// Checks in order: terminal status (a retry of a failed run is the one way out), then
/// whether `t` applies to `from`, then whether a named request is the pending one.
pub fn next_status(
    from: RunStatus,
    pending: Option<&RequestId>,
    t: &Transition,
) -> Result<TransitionOutcome, TransitionError> {
    use RunStatus::{AwaitingHitl, Cancelled, Completed, Failed, Queued, Running};

    if from == Failed && *t == Transition::Retry {
        return Ok(TransitionOutcome {
            status: Running,
            pending: None,
            previous_request: None,
            audit_action: t.audit_action(),
        });
    }
    if from.is_terminal() {
        return Err(TransitionError::Terminal { status: from });
    }
    let illegal = || TransitionError::IllegalFrom {
        from,
        transition: t.name(),
    };
    let require_pending = |request_id: &RequestId| {
        if pending == Some(request_id) {
            Ok(())
        } else {
            Err(TransitionError::NotPending {
                request_id: request_id.clone(),
                pending: pending.cloned(),
            })
        }
    };

    // (new status, new pending request, what a left-behind pending request becomes)
    let (status, new_pending, settled_as) = match t {
        Transition::Start if from == Queued => (Running, None, RequestStatus::Cancelled),
        Transition::Checkpoint | Transition::AgentUnreachable if from == Running => {
            (Running, None, RequestStatus::Cancelled)
        }
        Transition::RaiseRequest { request_id } if from == Running => (
            AwaitingHitl,
            Some(request_id.clone()),
            RequestStatus::Cancelled,
        ),
        Transition::Resume { request_id } if from == AwaitingHitl => {
            require_pending(request_id)?;
            (Running, None, RequestStatus::Resolved)
        }
        Transition::Remove { request_id } => {
            if let Some(request_id) = request_id {
                require_pending(request_id)?;
            }
            (Cancelled, None, RequestStatus::Denied)
        }
        Transition::Expire { request_id, action } if from == AwaitingHitl => {
            require_pending(request_id)?;
            let status = match action {
                TimeoutAction::Reject | TimeoutAction::Approve => Running,
                TimeoutAction::Cancel => Cancelled,
            };
            (status, None, RequestStatus::Expired)
        }
        Transition::Complete if from == Running => (Completed, None, RequestStatus::Cancelled),
        Transition::Fail if matches!(from, Queued | Running) => {
            (Failed, None, RequestStatus::Cancelled)
        }
        Transition::Cancel if from == Running => (Cancelled, None, RequestStatus::Cancelled),
        Transition::Rehydrate => (from, pending.cloned(), RequestStatus::Cancelled),
        Transition::Note { request_id, .. } if from == AwaitingHitl => {
            require_pending(request_id)?;
            (AwaitingHitl, pending.cloned(), RequestStatus::Pending)
        }
        _ => return Err(illegal()),
    };

    let previous_request = pending
        .filter(|&previous| new_pending.as_ref() != Some(previous))
        .map(|previous| (previous.clone(), settled_as));

    Ok(TransitionOutcome {
        status,
        pending: new_pending,
        previous_request,
        audit_action: t.audit_action(),
    })
}

/// An in-memory run that applies transitions by the same rules as the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunModel {
    /// The run's status.
    pub status: RunStatus,
    /// The pending request; `Some` exactly when `status` is `awaiting_hitl`.
    pub pending: Option<RequestId>,
    /// Bumped by exactly 1 on every applied transition.
    pub version: i64,
    /// One action per applied transition, after the initial `run_created`.
    pub audit: Vec<AuditAction>,
    /// Every request ever raised on the run and its status.
    pub requests: BTreeMap<RequestId, RequestStatus>,
}

impl RunModel {
    /// The version of a freshly created run.
    pub const INITIAL_VERSION: i64 = 1;

    /// A freshly created run: queued, no requests, version 1, audit `[run_created]`.
    pub fn new() -> Self {
        Self {
            status: RunStatus::Queued,
            pending: None,
            version: Self::INITIAL_VERSION,
            audit: vec![AuditAction::RunCreated],
            requests: BTreeMap::new(),
        }
    }

    /// Applies `t`. On success updates status, pending request and requests, bumps
    /// `version` by 1 and records one audit action; on error changes nothing.
    pub fn apply(&mut self, t: Transition) -> Result<(), TransitionError> {
        let outcome = next_status(self.status, self.pending.as_ref(), &t)?;
        if let Transition::RaiseRequest { request_id } = &t
            && self.requests.contains_key(request_id)
        {
            return Err(TransitionError::DuplicateRequest {
                request_id: request_id.clone(),
            });
        }

        if let Some((previous, settled)) = outcome.previous_request {
            self.requests.insert(previous, settled);
        }
        if let Some(raised) = &outcome.pending {
            self.requests
                .entry(raised.clone())
                .or_insert(RequestStatus::Pending);
        }
        self.status = outcome.status;
        self.pending = outcome.pending;
        self.version += 1;
        self.audit.push(outcome.audit_action);
        Ok(())
    }
}

impl Default for RunModel {
    /// Same as [`RunModel::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
