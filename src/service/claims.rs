//! Claims: a principal says it is working on a pending request, for a lease, so that
//! nobody else answers, removes or claims it meanwhile (unless a supervisor forces it).
//! Written by the front end's process directly (no command, no job): a claim changes no
//! run state a worker acts on, and the caller needs its answer at once.

use std::time::Duration;

use super::{Entity, Service, ServiceError};
use crate::domain::{ClaimHolder, Operator, RequestId, RunId};
use crate::identity::{Principal, Scope};
use crate::persistence::{self, Claim, ClaimSubject, Tx};

/// The default lease of a claim, and the longest one.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(900);
pub const MAX_LEASE: Duration = Duration::from_secs(86_400);

/// A claim or a release to make.
#[derive(Clone, Debug)]
pub struct ClaimOrder {
    pub request_id: RequestId,
    pub principal: Principal,
    /// Who acts (see `input::acting_operator`).
    pub operator: Operator,
    /// Override another principal's claim (needs `supervise`).
    pub force: bool,
}

/// A request's claim after a claim or a release.
#[derive(Clone, Debug)]
pub struct ClaimState {
    pub run_id: RunId,
    pub request_id: RequestId,
    /// `None`: nobody holds it.
    pub claim: Option<Claim>,
}

impl Service {
    /// Claims the pending request for `lease` (renewing the principal's own claim), or
    /// refuses: 404 no such request, 409 not pending (naming who settled it) or
    /// `claimed` (naming the holder), 403 not an assignee or `force` without `supervise`.
    pub async fn claim(
        &self,
        order: ClaimOrder,
        lease: Duration,
    ) -> Result<ClaimState, ServiceError> {
        let (mut tx, mut subject, holder) = self.claim_subject(&order).await?;
        let claim = persistence::write_claim(&mut tx, &mut subject, &holder, lease).await?;
        tx.commit().await?;
        Ok(ClaimState {
            run_id: subject.run_id().clone(),
            request_id: order.request_id,
            claim: Some(claim),
        })
    }

    /// Releases the claim on the pending request: the holder's own, or anyone's with
    /// `force` and `supervise`. A request nobody holds is released already (no event).
    pub async fn unclaim(&self, order: ClaimOrder) -> Result<ClaimState, ServiceError> {
        let (mut tx, mut subject, holder) = self.claim_subject(&order).await?;
        persistence::write_release(&mut tx, &mut subject, &holder).await?;
        tx.commit().await?;
        Ok(ClaimState {
            run_id: subject.run_id().clone(),
            request_id: order.request_id,
            claim: None,
        })
    }

    /// The checks a claim and a release share, with the request's run locked.
    async fn claim_subject(
        &self,
        order: &ClaimOrder,
    ) -> Result<(Tx<'static>, ClaimSubject, ClaimHolder), ServiceError> {
        if !self.engine.hitl_enabled() {
            return Err(ServiceError::HitlDisabled);
        }
        let supervise = order.principal.scopes.contains(Scope::Supervise);
        if order.force && !supervise {
            return Err(ServiceError::ForceNeedsSupervise);
        }
        let mut tx = self.pool.begin().await?;
        let subject = persistence::lock_claim_subject(&mut tx, &order.request_id)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(Entity::Request, format!("no request {}", order.request_id))
            })?;
        if let Some(refusal) = subject.refusal(&mut tx).await? {
            return Err(ServiceError::Refused(Box::new(refusal)));
        }
        if let Some(assignees) = &subject.assignees
            && !supervise
            && !assignees.admit(
                order.principal.operator.as_ref().map(|o| o.id.as_str()),
                &order.principal.groups,
            )
        {
            return Err(ServiceError::NotAssignee {
                request_id: order.request_id.to_string(),
            });
        }
        let holder = ClaimHolder {
            principal: order.principal.name.to_string(),
            operator: order.operator.clone(),
        };
        if let Some(claim) = &subject.claim
            && !order.force
            && !claim
                .claimed_by
                .is(Some(&holder.principal), &holder.operator)
        {
            let context = crate::domain::RefusalContext {
                run_id: Some(subject.run_id().clone()),
                request_id: Some(order.request_id.clone()),
                request_status: Some(subject.request_status),
                pending_request_id: Some(order.request_id.clone()),
                run_status: Some(crate::domain::RunStatus::AwaitingHitl),
            };
            let refusal = persistence::claimed_refusal(claim, context);
            return Err(ServiceError::Refused(Box::new(refusal)));
        }
        Ok((tx, subject, holder))
    }
}
