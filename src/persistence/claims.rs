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
use sqlx::PgConnection;

use super::jobs::{Escalate, ExpiringNotice, Remind};
use super::requests::{Assignees, FollowUp, claim_sql};
use super::{AuditEntry, LockedRun, PersistenceError, Tx, explain_refusal, queue};
use crate::domain::{
    ClaimHolder, Operator, Refusal, RequestId, RequestNote, RequestStatus, RunId, RunStatus,
    Transition,
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

/// A request and its run, locked for a claim or a release.
#[derive(Debug)]
pub struct ClaimSubject {
    run: LockedRun,
    pub request_id: RequestId,
    pub request_status: RequestStatus,
    /// Who may answer the request (`None`: anyone with the operate scope).
    pub assignees: Option<Assignees>,
    /// The claim on it now, if its lease lasts.
    pub claim: Option<Claim>,
}

#[derive(sqlx::FromRow)]
struct SubjectRow {
    run_id: RunId,
    status: RunStatus,
    pending_request_id: Option<RequestId>,
    version: i64,
    request_status: RequestStatus,
    assignees: Option<sqlx::types::Json<Assignees>>,
    claimed_by: Option<sqlx::types::Json<ClaimHolder>>,
    claim_expires_at: Option<DateTime<Utc>>,
}

impl ClaimSubject {
    /// The run the request belongs to.
    pub fn run_id(&self) -> &RunId {
        &self.run.run_id
    }

    /// Why the request cannot be claimed or released now (it is not the pending request
    /// any more: who settled it, or that the run ended), or `None` when it can.
    pub async fn refusal(&self, tx: &mut Tx<'_>) -> Result<Option<Refusal>, PersistenceError> {
        let t = self.note(RequestNote::Claimed);
        match self.run.check(&t, None) {
            Ok(_) => Ok(None),
            Err(PersistenceError::Transition { source, .. }) => {
                let mut context = self.run.context(Some(&self.request_id));
                context.request_status = Some(self.request_status);
                Ok(Some(explain_refusal(tx, context, &source).await?))
            }
            Err(e) => Err(e),
        }
    }

    fn note(&self, note: RequestNote) -> Transition {
        Transition::Note {
            request_id: self.request_id.clone(),
            note,
        }
    }
}

/// Locks the run of request `request_id` and reads the request; `None` when there is no
/// such request.
pub async fn lock_claim_subject(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
) -> Result<Option<ClaimSubject>, PersistenceError> {
    let row: Option<SubjectRow> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select o.run_id, o.status, o.pending_request_id, o.version, q.status as request_status, \
             q.assignees, {} \
         from hitl_requests q join orchestrator_runs o on o.run_id = q.run_id \
         where q.request_id = $1 for no key update of o",
        claim_sql("q")
    )))
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| ClaimSubject {
        run: LockedRun {
            run_id: r.run_id,
            status: r.status,
            pending_request_id: r.pending_request_id,
            version: r.version,
        },
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
    }))
}

/// Claims (or renews the claim on) the pending request for `holder`, for `lease`. When
/// another principal's claim is overridden (the caller checked `force` and `supervise`),
/// the audit says so first (`claim_broken`, naming the holder it broke).
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
        break_claim(
            tx,
            &mut subject.run,
            &subject.request_id,
            &previous,
            holder.into(),
        )
        .await?;
    }
    let t = subject.note(RequestNote::Claimed);
    subject.run.check(&t, None)?;
    let seconds = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
    let expires_at: DateTime<Utc> = crate::db::query_scalar(
        "update hitl_requests set claimed_by = $2, \
             claim_expires_at = now() + make_interval(secs => $3) \
         where request_id = $1 returning claim_expires_at",
    )
    .bind(&subject.request_id)
    .bind(sqlx::types::Json(holder))
    .bind(seconds as f64)
    .fetch_one(&mut **tx)
    .await?;
    note(
        tx,
        &mut subject.run,
        &subject.request_id,
        RequestNote::Claimed,
        Some(holder.into()),
        json!({ "claimExpiresAt": expires_at, "leaseSeconds": seconds }),
    )
    .await?;
    let claim = Claim {
        claimed_by: holder.clone(),
        claim_expires_at: expires_at,
    };
    subject.claim = Some(claim.clone());
    Ok(claim)
}

/// Ends the claim on the pending request: `request_released` by its holder, or
/// `claim_broken` by anyone else (the caller checked `force` and `supervise`). No claim
/// (or one whose lease is over) writes nothing.
pub async fn write_release(
    tx: &mut Tx<'_>,
    subject: &mut ClaimSubject,
    by: &ClaimHolder,
) -> Result<(), PersistenceError> {
    let Some(previous) = subject.claim.take() else {
        return Ok(());
    };
    if previous.claimed_by.is(Some(&by.principal), &by.operator) {
        clear_claim(tx, &subject.request_id).await?;
        note(
            tx,
            &mut subject.run,
            &subject.request_id,
            RequestNote::Released,
            Some(by.into()),
            json!({}),
        )
        .await?;
        Ok(())
    } else {
        break_claim(
            tx,
            &mut subject.run,
            &subject.request_id,
            &previous,
            by.into(),
        )
        .await
    }
}

/// Clears a claim another principal held, with its `claim_broken` event (the run stays
/// locked by the caller).
pub(super) async fn break_claim(
    tx: &mut Tx<'_>,
    run: &mut LockedRun,
    request_id: &RequestId,
    previous: &Claim,
    by: Actor<'_>,
) -> Result<(), PersistenceError> {
    clear_claim(tx, request_id).await?;
    note(
        tx,
        run,
        request_id,
        RequestNote::ClaimBroken,
        Some(by),
        json!({ "holder": previous.claimed_by, "claimExpiresAt": previous.claim_expires_at }),
    )
    .await
    .map(|_| ())
}

pub(super) async fn clear_claim(
    conn: &mut PgConnection,
    request_id: &RequestId,
) -> Result<(), PersistenceError> {
    crate::db::query(
        "update hitl_requests set claimed_by = null, claim_expires_at = null \
         where request_id = $1",
    )
    .bind(request_id)
    .execute(conn)
    .await?;
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

/// Records `what` about the pending request: the run keeps waiting on it, its version
/// moves on, and one audit event says who did it. Returns the new version.
pub(super) async fn note(
    tx: &mut Tx<'_>,
    run: &mut LockedRun,
    request_id: &RequestId,
    what: RequestNote,
    by: Option<Actor<'_>>,
    details: Value,
) -> Result<i64, PersistenceError> {
    let t = Transition::Note {
        request_id: request_id.clone(),
        note: what,
    };
    // The run is locked by the caller: its chain head is this process's last event of it
    // when it wrote that, else read (a wrong guess fails the write's fence, which then
    // reads it).
    let head = match super::audit::remembered_head(&run.run_id, run.version + 1) {
        Some(head) => Some(head),
        None => super::audit::stored_head(tx, &run.run_id).await?,
    };
    let mut write = super::TransitionWrite::new(run.clone(), head);
    let version = write.note(
        &t,
        AuditEntry {
            request_id: Some(request_id),
            command_id: by.as_ref().and_then(|b| b.command_id),
            operator: by.as_ref().map(|b| b.operator),
            principal: by.as_ref().and_then(|b| b.principal),
            details: Some(details),
            ..AuditEntry::default()
        },
    )?;
    write.write(tx).await?;
    run.version = version;
    Ok(version)
}

/// Schedules the follow-up jobs of a request just raised (in the transaction raising it):
/// the first reminder and every escalation step, counted from now.
pub(super) async fn schedule_follow_up(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    follow_up: &FollowUp,
) -> Result<(), PersistenceError> {
    let now = Utc::now();
    let after = |secs: u64| now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(0));
    if let Some(every) = follow_up.remind_every_seconds {
        let job = Remind {
            request_id: request_id.clone(),
        };
        queue::enqueue(tx, &job, Some(after(every))).await?;
    }
    for (step, e) in follow_up.escalation.iter().enumerate() {
        let job = Escalate {
            request_id: request_id.clone(),
            step,
        };
        queue::enqueue(tx, &job, Some(after(e.after_seconds))).await?;
    }
    Ok(())
}

/// Schedules a `request_expiring` notice for each notice period the published channels
/// want of node `node_id`, `period` before the deadline `at` (at once when that is
/// already past).
pub(super) async fn schedule_expiring_notices(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    node_id: &str,
    at: DateTime<Utc>,
) -> Result<(), PersistenceError> {
    let now = Utc::now();
    if at <= now {
        return Ok(());
    }
    for notice_seconds in super::notifications::expiring_notice_periods(tx, node_id).await? {
        let due = (at - chrono::Duration::seconds(i64::from(notice_seconds))).max(now);
        let job = ExpiringNotice {
            request_id: request_id.clone(),
            notice_seconds,
        };
        queue::enqueue(tx, &job, Some(due)).await?;
    }
    Ok(())
}

/// Tells the channels whose notice period is `notice_seconds` that request
/// `request_id`'s deadline is near (an `expiring` event), if it is still pending and its
/// deadline still ahead.
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
    let expires_at: Option<DateTime<Utc>> = crate::db::query_scalar(
        "select expires_at from hitl_requests where request_id = $1 and expires_at > now()",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?
    .flatten();
    let Some(expires_at) = expires_at else {
        return Ok(FollowUpOutcome::Settled);
    };
    note(
        tx,
        &mut subject.run,
        request_id,
        RequestNote::Expiring,
        None,
        json!({ "noticeSeconds": notice_seconds, "expiresAt": expires_at }),
    )
    .await?;
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
    let Some(subject) = lock_claim_subject(tx, request_id).await? else {
        return Ok(None);
    };
    if subject.refusal(tx).await?.is_some() {
        return Ok(None);
    }
    let follow_up: Option<sqlx::types::Json<FollowUp>> =
        crate::db::query_scalar("select follow_up from hitl_requests where request_id = $1")
            .bind(request_id)
            .fetch_one(&mut **tx)
            .await?;
    Ok(follow_up.map(|f| (subject, f.0)))
}

/// Sends a reminder if request `request_id` is still pending (a `reminded` event, which
/// channels wanting it are told of) and schedules the next one.
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
    write_follow_up(tx, request_id, &follow_up, None).await?;
    note(
        tx,
        &mut subject.run,
        request_id,
        RequestNote::Reminded,
        None,
        json!({ "reminder": follow_up.reminded, "nextInSeconds": every }),
    )
    .await?;
    let next = Utc::now() + chrono::Duration::seconds(i64::try_from(every).unwrap_or(0));
    let job = Remind {
        request_id: request_id.clone(),
    };
    queue::enqueue(tx, &job, Some(next)).await?;
    Ok(FollowUpOutcome::Applied)
}

/// Applies escalation step `step` if request `request_id` is still pending: its
/// `addAssignees` join the assignees (a request anyone may answer stays so), and an
/// `escalated` event tells the step's channels and those wanting such events.
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
    write_follow_up(tx, request_id, &follow_up, assignees.as_ref()).await?;
    let added = e.add_assignees.clone().unwrap_or_default();
    note(
        tx,
        &mut subject.run,
        request_id,
        RequestNote::Escalated,
        None,
        json!({ "step": step, "addedUsers": added.users, "addedGroups": added.groups,
                "notify": e.notify, "assignees": assignees }),
    )
    .await?;
    Ok(FollowUpOutcome::Applied)
}

async fn write_follow_up(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    follow_up: &FollowUp,
    assignees: Option<&Assignees>,
) -> Result<(), PersistenceError> {
    crate::db::query(
        "update hitl_requests set follow_up = $2, assignees = coalesce($3, assignees) \
         where request_id = $1",
    )
    .bind(request_id)
    .bind(sqlx::types::Json(follow_up))
    .bind(assignees.map(sqlx::types::Json))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
