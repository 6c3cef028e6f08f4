//! Claims on pending requests: who is working on one, for how long, and the notes a
//! request collects while its run keeps waiting (claimed, released, a claim broken, an
//! approval counted).
//!
//! A claim is bookkeeping on the request, not a step of the run: it is written in one
//! transaction under the run's lock (so it orders with the commands a worker applies),
//! bumps the run's version and writes one audit event, like every transition, and leaves
//! the run `awaiting_hitl`. A lease ends by time alone: every reader compares
//! `claim_expires_at` with `now()`, so nothing has to run when it ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jobs::{Escalate, Remind};
use super::requests::{Assignees, FollowUp, claim_sql};
use super::{AuditEntry, LockedRun, PersistenceError, Tx, explain_refusal};
use crate::domain::{
    ClaimHolder, Operator, Refusal, RequestId, RequestNote, RequestStatus, RunId, Transition,
};

/// A claim while its lease lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Who holds it.
    pub claimed_by: ClaimHolder,
    /// When the lease ends.
    pub claim_expires_at: DateTime<Utc>,
}

/// A request and its run, locked for a claim, a release or a follow-up, with the write
/// of the transition started on the run as locked.
pub struct ClaimSubject {
    write: super::TransitionWrite,
    pub request_id: RequestId,
    pub request_status: RequestStatus,
    /// Who may answer the request (`None`: anyone with the operate scope).
    pub assignees: Option<Assignees>,
    /// The claim on it now, if its lease lasts.
    pub claim: Option<Claim>,
    follow_up: Option<FollowUp>,
    /// Its deadline, while it is ahead.
    expires_at: Option<DateTime<Utc>>,
    /// The transaction's `now()`: what a lease counts from, as readers compare with it.
    now: DateTime<Utc>,
}

impl std::fmt::Debug for ClaimSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimSubject")
            .field("run_id", self.run_id())
            .field("request_id", &self.request_id)
            .field("request_status", &self.request_status)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct SubjectRow {
    #[sqlx(flatten)]
    run: LockedRun,
    seen_version: Option<i64>,
    head: Option<Vec<u8>>,
    request_status: RequestStatus,
    assignees: Option<sqlx::types::Json<Assignees>>,
    claimed_by: Option<sqlx::types::Json<ClaimHolder>>,
    claim_expires_at: Option<DateTime<Utc>>,
    follow_up: Option<sqlx::types::Json<FollowUp>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl ClaimSubject {
    /// The run the request belongs to.
    pub fn run_id(&self) -> &RunId {
        self.write.run_id()
    }

    /// Why the request cannot be claimed or released now (it is not the pending request
    /// any more: who settled it, or that the run ended), or `None` when it can.
    pub async fn refusal(&self, tx: &mut Tx<'_>) -> Result<Option<Refusal>, PersistenceError> {
        let t = self.transition(RequestNote::Claimed);
        let run = self.write.run();
        match run.check(&t, None) {
            Ok(_) => Ok(None),
            Err(PersistenceError::Transition { source, .. }) => {
                let mut context = run.context(Some(&self.request_id));
                context.request_status = Some(self.request_status);
                Ok(Some(explain_refusal(tx, context, &source).await?))
            }
            Err(e) => Err(e),
        }
    }

    fn transition(&self, note: RequestNote) -> Transition {
        Transition::Note {
            request_id: self.request_id.clone(),
            note,
        }
    }

    /// Adds `what` about the request to the write, by `by`, with `details`.
    fn note(
        &mut self,
        what: RequestNote,
        by: Option<Actor<'_>>,
        details: Value,
    ) -> Result<i64, PersistenceError> {
        let t = self.transition(what);
        note_in(&mut self.write, &t, &self.request_id, by, details)
    }
}

/// Locks the run of request `request_id` and reads the request, with the run's chain
/// head, in one statement; `None` when there is no such request.
pub async fn lock_claim_subject(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
) -> Result<Option<ClaimSubject>, PersistenceError> {
    // As a command's read: the statement's snapshot is taken before it waits for the
    // lock, so when the run moved meanwhile (its version as locked is not the one the
    // snapshot saw) the request's columns are stale, and are read again under the lock.
    let sql = format!(
        "select o.run_id, o.status, o.pending_request_id, o.version, \
             (select v.version from orchestrator_runs v where v.run_id = o.run_id) \
                 as seen_version, \
             (select e.hash from run_audit_events e where e.run_id = o.run_id \
              order by e.run_version desc limit 1) as head, \
             q.status as request_status, q.assignees, {}, q.follow_up, \
             case when q.expires_at > now() then q.expires_at end as expires_at, now() as now \
         from hitl_requests q join orchestrator_runs o on o.run_id = q.run_id \
         where q.request_id = $1 for no key update of o",
        claim_sql("q")
    );
    let mut row: Option<SubjectRow> = None;
    for _ in 0..2 {
        row = crate::db::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(request_id)
            .fetch_optional(&mut **tx)
            .await?;
        if row
            .as_ref()
            .is_none_or(|r| r.seen_version == Some(r.run.version))
        {
            break;
        }
    }
    Ok(row.map(|r| ClaimSubject {
        write: super::TransitionWrite::new(r.run, r.head),
        request_id: request_id.clone(),
        request_status: r.request_status,
        assignees: r.assignees.map(|a| a.0),
        claim: match (r.claimed_by, r.claim_expires_at) {
            (Some(holder), Some(expires_at)) => Some(Claim {
                claimed_by: holder.0,
                claim_expires_at: expires_at,
            }),
            _ => None,
        },
        follow_up: r.follow_up.map(|f| f.0),
        expires_at: r.expires_at,
        now: r.now,
    }))
}

/// Claims (or renews the claim on) the pending request for `holder`, for `lease`, in one
/// write. When another principal's claim is overridden (the caller checked `force` and
/// `supervise`), the audit says so first (`claim_broken`, naming the holder it broke).
pub async fn write_claim(
    tx: &mut Tx<'_>,
    subject: &mut ClaimSubject,
    holder: &ClaimHolder,
    lease: Duration,
) -> Result<Claim, PersistenceError> {
    if let Some(previous) = subject.claim.take()
        && !previous
            .claimed_by
            .is(Some(&holder.principal), &holder.operator)
    {
        subject.note(
            RequestNote::ClaimBroken,
            Some(holder.into()),
            broken_details(&previous),
        )?;
    }
    let seconds = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
    let expires_at = subject.now + chrono::Duration::seconds(seconds.min(i64::from(i32::MAX)));
    subject.note(
        RequestNote::Claimed,
        Some(holder.into()),
        json!({ "claimExpiresAt": expires_at, "leaseSeconds": seconds }),
    )?;
    let claim = Claim {
        claimed_by: holder.clone(),
        claim_expires_at: expires_at,
    };
    subject.write.set_claim(Some(claim.clone()));
    subject.write.write(tx).await?;
    subject.claim = Some(claim.clone());
    Ok(claim)
}

/// Ends the claim on the pending request: `request_released` by its holder, or
/// `claim_broken` by anyone else (the caller checked `force` and `supervise`), in one
/// write. No claim (or one whose lease is over) writes nothing.
pub async fn write_release(
    tx: &mut Tx<'_>,
    subject: &mut ClaimSubject,
    by: &ClaimHolder,
) -> Result<(), PersistenceError> {
    let Some(previous) = subject.claim.take() else {
        return Ok(());
    };
    if previous.claimed_by.is(Some(&by.principal), &by.operator) {
        subject.note(RequestNote::Released, Some(by.into()), json!({}))?;
    } else {
        subject.note(
            RequestNote::ClaimBroken,
            Some(by.into()),
            broken_details(&previous),
        )?;
    }
    subject.write.set_claim(None);
    subject.write.write(tx).await?;
    Ok(())
}

/// What a `claim_broken` event says of the claim it broke.
fn broken_details(previous: &Claim) -> Value {
    json!({ "holder": previous.claimed_by, "claimExpiresAt": previous.claim_expires_at })
}

/// Breaks a claim another principal holds on the pending request, in `write`: the claim
/// is cleared with its `claim_broken` event.
pub(super) fn break_claim(
    write: &mut super::TransitionWrite,
    request_id: &RequestId,
    previous: &Claim,
    by: Actor<'_>,
) -> Result<(), PersistenceError> {
    let t = Transition::Note {
        request_id: request_id.clone(),
        note: RequestNote::ClaimBroken,
    };
    note_in(write, &t, request_id, Some(by), broken_details(previous))?;
    write.set_claim(None);
    Ok(())
}

/// Who a note is by: a principal acting as an operator, with the command when one
/// carried it.
pub(super) struct Actor<'a> {
    pub principal: Option<&'a str>,
    pub operator: &'a Operator,
    pub command_id: Option<&'a crate::domain::CommandId>,
}

impl<'a> From<&'a ClaimHolder> for Actor<'a> {
    fn from(holder: &'a ClaimHolder) -> Self {
        Actor {
            principal: Some(&holder.principal),
            operator: &holder.operator,
            command_id: None,
        }
    }
}

/// Adds the note `t` about the pending request `request_id` to `write`: the run keeps
/// waiting on it, its version moves on, and one audit event says who did it (`by`).
/// Returns the new version.
pub(super) fn note_in(
    write: &mut super::TransitionWrite,
    t: &Transition,
    request_id: &RequestId,
    by: Option<Actor<'_>>,
    details: Value,
) -> Result<i64, PersistenceError> {
    write.note(
        t,
        AuditEntry {
            request_id: Some(request_id),
            command_id: by.as_ref().and_then(|b| b.command_id),
            operator: by.as_ref().map(|b| b.operator),
            principal: by.as_ref().and_then(|b| b.principal),
            details: Some(details),
            ..AuditEntry::default()
        },
    )
}

/// Pushes the follow-up jobs of a request raised in `write` with it: the first reminder
/// and every escalation step, counted from now.
pub(super) fn follow_up_jobs(
    write: &mut super::TransitionWrite,
    request_id: &RequestId,
    follow_up: &FollowUp,
) {
    let now = Utc::now();
    let after = |secs: u64| now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(0));
    if let Some(every) = follow_up.remind_every_seconds {
        let job = Remind {
            request_id: request_id.clone(),
        };
        write.enqueue_at(&job, after(every));
    }
    for (step, e) in follow_up.escalation.iter().enumerate() {
        let job = Escalate {
            request_id: request_id.clone(),
            step,
        };
        write.enqueue_at(&job, after(e.after_seconds));
    }
}

/// Tells the channels whose notice period is `notice_seconds` that request
/// `request_id`'s deadline is near (an `expiring` event), if it is still pending and its
/// deadline still ahead: one locking read and one write.
pub async fn notice_expiring(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    notice_seconds: i32,
) -> Result<FollowUpOutcome, PersistenceError> {
    let Some(mut subject) = lock_claim_subject(tx, request_id).await? else {
        return Ok(FollowUpOutcome::Settled);
    };
    if subject.refusal(tx).await?.is_some() {
        return Ok(FollowUpOutcome::Settled);
    }
    let Some(expires_at) = subject.expires_at else {
        return Ok(FollowUpOutcome::Settled);
    };
    subject.note(
        RequestNote::Expiring,
        None,
        json!({ "noticeSeconds": notice_seconds, "expiresAt": expires_at }),
    )?;
    subject.write.write(tx).await?;
    Ok(FollowUpOutcome::Applied)
}

/// What a follow-up job found.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowUpOutcome {
    /// Done: a reminder went out (the next is scheduled) or the step was applied.
    Applied,
    /// The request is no longer pending (or has no such follow-up): nothing to do.
    Settled,
}

async fn locked_follow_up(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
) -> Result<Option<(ClaimSubject, FollowUp)>, PersistenceError> {
    let Some(mut subject) = lock_claim_subject(tx, request_id).await? else {
        return Ok(None);
    };
    if subject.refusal(tx).await?.is_some() {
        return Ok(None);
    }
    let follow_up = subject.follow_up.take();
    Ok(follow_up.map(|f| (subject, f)))
}

/// Sends a reminder if request `request_id` is still pending (a `reminded` event, which
/// channels wanting it are told of) and schedules the next one, in one write.
pub async fn remind(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
) -> Result<FollowUpOutcome, PersistenceError> {
    let Some((mut subject, mut follow_up)) = locked_follow_up(tx, request_id).await? else {
        return Ok(FollowUpOutcome::Settled);
    };
    let Some(every) = follow_up.remind_every_seconds else {
        return Ok(FollowUpOutcome::Settled);
    };
    follow_up.reminded += 1;
    subject.note(
        RequestNote::Reminded,
        None,
        json!({ "reminder": follow_up.reminded, "nextInSeconds": every }),
    )?;
    subject.write.set_follow_up(to_json(&follow_up)?, None);
    let next = Utc::now() + chrono::Duration::seconds(i64::try_from(every).unwrap_or(0));
    let job = Remind {
        request_id: request_id.clone(),
    };
    subject.write.enqueue_at(&job, next);
    subject.write.write(tx).await?;
    Ok(FollowUpOutcome::Applied)
}

/// Applies escalation step `step` if request `request_id` is still pending: its
/// `addAssignees` join the assignees (a request anyone may answer stays so), and an
/// `escalated` event tells the step's channels and those wanting such events; one write.
pub async fn escalate(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    step: usize,
) -> Result<FollowUpOutcome, PersistenceError> {
    let Some((mut subject, mut follow_up)) = locked_follow_up(tx, request_id).await? else {
        return Ok(FollowUpOutcome::Settled);
    };
    let Some(e) = follow_up.escalation.get(step).cloned() else {
        return Ok(FollowUpOutcome::Settled);
    };
    if follow_up.escalated.contains(&step) {
        return Ok(FollowUpOutcome::Settled);
    }
    follow_up.escalated.push(step);
    let assignees = match (&subject.assignees, &e.add_assignees) {
        (Some(current), Some(add)) => {
            let mut merged = current.clone();
            for u in &add.users {
                if !merged.users.contains(u) {
                    merged.users.push(u.clone());
                }
            }
            for g in &add.groups {
                if !merged.groups.contains(g) {
                    merged.groups.push(g.clone());
                }
            }
            Some(merged)
        }
        _ => None,
    };
    let added = e.add_assignees.clone().unwrap_or_default();
    subject.note(
        RequestNote::Escalated,
        None,
        json!({ "step": step, "addedUsers": added.users, "addedGroups": added.groups,
                "notify": e.notify, "assignees": assignees }),
    )?;
    subject.write.set_follow_up(
        to_json(&follow_up)?,
        assignees.as_ref().map(to_json).transpose()?,
    );
    subject.write.write(tx).await?;
    Ok(FollowUpOutcome::Applied)
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, PersistenceError> {
    serde_json::to_value(value)
        .map_err(|e| PersistenceError::Database(sqlx::Error::Encode(Box::new(e))))
}
