//! `POST /api/hitl/claim` and `POST /api/hitl/unclaim`: a principal says it is working on
//! a pending request (for a lease), or that it no longer is. Answered at once with the
//! request's claim; the run keeps waiting either way.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::auth::{Authorized, Operate};
use super::commands::{OperatorIn, acting};
use super::extract::ApiJson;
use super::openapi::{AuthErrors, BodyErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::domain::{ClaimHolder, RequestId, RunId};
use crate::service::claims::{DEFAULT_LEASE, MAX_LEASE};
use crate::service::input;
use crate::service::{ClaimOrder, ClaimState};

/// The body of `POST /api/hitl/claim`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimIn {
    #[serde(default)]
    request_id: Option<String>,
    /// How long the claim lasts, 1 to 86400 seconds (default 900); claiming again renews it.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    lease_seconds: Option<serde_json::Number>,
    /// Take the claim from another principal (needs the `supervise` scope; audited
    /// `claim_broken`).
    #[serde(default)]
    force: bool,
    /// As in a resume.
    #[serde(default)]
    operator: Option<OperatorIn>,
}

/// The body of `POST /api/hitl/unclaim`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnclaimIn {
    #[serde(default)]
    request_id: Option<String>,
    /// End another principal's claim (needs the `supervise` scope; audited `claim_broken`).
    #[serde(default)]
    force: bool,
    /// As in a resume.
    #[serde(default)]
    operator: Option<OperatorIn>,
}

/// A request's claim, as a claim or a release leaves it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    request_id: RequestId,
    run_id: RunId,
    /// Who holds it (`null`: nobody).
    claimed_by: Option<ClaimHolder>,
    /// When the lease ends.
    claim_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ClaimState> for ClaimView {
    fn from(state: ClaimState) -> Self {
        let (claimed_by, claim_expires_at) = match state.claim {
            Some(c) => (Some(c.claimed_by), Some(c.claim_expires_at)),
            None => (None, None),
        };
        Self {
            request_id: state.request_id,
            run_id: state.run_id,
            claimed_by,
            claim_expires_at,
        }
    }
}

/// `POST /api/hitl/claim`.
#[utoipa::path(post, path = "/api/hitl/claim", tag = "hitl", security(("bearer" = [])),
    request_body = ClaimIn,
    responses(
        (status = 200, description = "claimed (or renewed) by this principal", body = ClaimView),
        (status = 404, description = "unknown request", body = ErrorBody),
        (status = 409, description = "`claimed` by another principal (named in details.holder), or the request is not pending (`not_pending`, `conflict` naming who settled it)", body = ErrorBody),
        BodyErrors,
        AuthErrors))]
pub async fn claim(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ClaimIn>,
) -> Result<Json<ClaimView>, ApiError> {
    let request_id = required_request(body.request_id.as_deref())?;
    // `60.0` is the whole number 60 to JSON Schema, and so to `/openapi.json`.
    let whole = |n: &serde_json::Number| {
        n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
    };
    let lease = match body.lease_seconds.as_ref().map(whole) {
        None => DEFAULT_LEASE,
        Some(Some(s)) if (1..=MAX_LEASE.as_secs()).contains(&s) => {
            std::time::Duration::from_secs(s)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "leaseSeconds",
                format!("must be 1 to {} seconds", MAX_LEASE.as_secs()),
            ));
        }
    };
    let order = order(request_id, principal, body.operator.as_ref(), body.force)?;
    let claimed = state.service.claim(order, lease).await?;
    tracing::info!(
        name: "hitl_claim_api",
        event = "hitl_claim_api",
        run_id = %claimed.run_id,
        request_id = %claimed.request_id,
        "request claimed"
    );
    Ok(Json(claimed.into()))
}

/// `POST /api/hitl/unclaim`.
#[utoipa::path(post, path = "/api/hitl/unclaim", tag = "hitl", security(("bearer" = [])),
    request_body = UnclaimIn,
    responses(
        (status = 200, description = "released (a request nobody held is released already)", body = ClaimView),
        (status = 404, description = "unknown request", body = ErrorBody),
        (status = 409, description = "`claimed` by another principal (named in details.holder), or the request is not pending", body = ErrorBody),
        BodyErrors,
        AuthErrors))]
pub async fn unclaim(
    Authorized { principal, .. }: Authorized<Operate>,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UnclaimIn>,
) -> Result<Json<ClaimView>, ApiError> {
    let request_id = required_request(body.request_id.as_deref())?;
    let order = order(request_id, principal, body.operator.as_ref(), body.force)?;
    let released = state.service.unclaim(order).await?;
    tracing::info!(
        name: "hitl_unclaim_api",
        event = "hitl_unclaim_api",
        run_id = %released.run_id,
        request_id = %released.request_id,
        "request released"
    );
    Ok(Json(released.into()))
}

/// The claim or release `principal` asks for, acting as its operator (or the body's).
fn order(
    request_id: RequestId,
    principal: super::auth::Principal,
    operator: Option<&OperatorIn>,
    force: bool,
) -> Result<ClaimOrder, ApiError> {
    let operator = acting(&principal, operator)?;
    Ok(ClaimOrder {
        request_id,
        principal,
        operator,
        force,
    })
}

fn required_request(raw: Option<&str>) -> Result<RequestId, ApiError> {
    input::request_id("requestId", raw)?
        .ok_or_else(|| ApiError::invalid("requestId", "is required: the pending request"))
}
