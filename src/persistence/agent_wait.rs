//! A run waiting for its agent: the transitions of an agent outage. While a node's call
//! fails in a way worth retrying, the run stays `running` and carries `agent_retry`
//! (what went wrong, how often, when the next attempt is due); the first failure of an
//! outage is one `agent_unreachable` transition, later ones only update the column, and
//! the window running out fails the run. Also the failure of a run whose advancement job
//! died, so a run never waits on a job that will not come.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AuditEntry, PersistenceError, Tx, append_audit, lock_run};
use crate::domain::{AuditAction, RunId, RunStatus, Transition};

/// A run's agent outage, as `GET /api/runs/{runId}` shows it (`agentRetry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRetry {
    /// The node whose agent call is being retried.
    pub node_id: String,
    /// When the first failed attempt of this outage happened.
    pub since: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// What the last attempt ran into (`HTTP 503`, `timed out`, a connection error).
    pub last_error: String,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
}

/// What [`note_agent_unreachable`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentWait {
    /// Try again at this time; the run shows the outage meanwhile.
    RetryAt(DateTime<Utc>),
    /// The window ran out: the run is now `failed` with the reason.
    GaveUp,
    /// The run moved on or ended meanwhile (an operator removed it): nothing written.
    Moved,
}

/// One failed attempt at `node_id`'s agent call of `run_id` (the engine read it at
/// `expected_version`): records it, and either schedules the next attempt — after
/// `delay(attempts)`, never past `window` since the outage began — or, once `window` has
/// passed, fails the run naming the cause.
pub async fn note_agent_unreachable(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    expected_version: i64,
    node_id: &str,
    error: &str,
    window: Duration,
    delay: impl Fn(i64) -> Duration,
) -> Result<AgentWait, PersistenceError> {
    let run = lock_run(tx, run_id).await?;
    match run.check(&Transition::AgentUnreachable, Some(expected_version)) {
        Ok(_) => {}
        Err(PersistenceError::StaleVersion { .. } | PersistenceError::Transition { .. }) => {
            return Ok(AgentWait::Moved);
        }
        Err(e) => return Err(e),
    }
    let previous: Option<sqlx::types::Json<AgentRetry>> =
        crate::db::query_scalar("select agent_retry from orchestrator_runs where run_id = $1")
            .bind(run_id)
            .fetch_one(&mut **tx)
            .await?;
    let previous = previous.map(|p| p.0).filter(|p| p.node_id == node_id);
    let now = Utc::now();
    let since = previous.as_ref().map_or(now, |p| p.since);
    let attempts = previous.as_ref().map_or(1, |p| p.attempts + 1);
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let give_up_at = since
        .checked_add_signed(window)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= give_up_at {
        let reason = format!(
            "node {node_id}: the agent could not be reached for {} ({attempts} attempts); last error: {error}",
            humantime_secs(window)
        );
        let details =
            json!({ "nodeId": node_id, "agentRetry": { "attempts": attempts, "since": since } });
        fail(tx, run_id, run.status, &reason, details).await?;
        return Ok(AgentWait::GaveUp);
    }
    let wait = chrono::Duration::from_std(delay(attempts)).unwrap_or(chrono::Duration::MAX);
    let next_attempt_at = now
        .checked_add_signed(wait)
        .unwrap_or(give_up_at)
        .min(give_up_at);
    let retry = AgentRetry {
        node_id: node_id.to_owned(),
        since,
        attempts,
        last_error: error.to_owned(),
        next_attempt_at,
    };
    let retry_json = sqlx::types::Json(&retry);
    if previous.is_some() {
        // A later attempt of a known outage: not a transition, no event.
        crate::db::query("update orchestrator_runs set agent_retry = $2 where run_id = $1")
            .bind(run_id)
            .bind(retry_json)
            .execute(&mut **tx)
            .await?;
    } else {
        let version: i64 = crate::db::query_scalar(
            "update orchestrator_runs set agent_retry = $2, version = version + 1, updated_at = now() \
             where run_id = $1 returning version",
        )
        .bind(run_id)
        .bind(retry_json)
        .fetch_one(&mut **tx)
        .await?;
        append_audit(
            tx,
            run_id,
            AuditEntry {
                run_version: version,
                action: Some(AuditAction::AgentUnreachable),
                from_status: Some(run.status),
                to_status: Some(run.status),
                details: Some(json!({ "nodeId": node_id, "lastError": error,
                                      "nextAttemptAt": next_attempt_at })),
                ..AuditEntry::default()
            },
        )
        .await?;
    }
    Ok(AgentWait::RetryAt(next_attempt_at))
}

/// Fails a queued or running run whose advancement job died (its attempts spent, or it
/// can never succeed), with `cause` as the reason, so the run does not stay `running`
/// with nothing to move it and the sweep does not queue the same failure again. Returns
/// false when the run had already moved to another status.
pub async fn fail_abandoned_run(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    cause: &str,
) -> Result<bool, PersistenceError> {
    let run = match lock_run(tx, run_id).await {
        Ok(run) => run,
        Err(PersistenceError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    if run.check(&Transition::Fail, None).is_err() {
        return Ok(false);
    }
    let reason = format!("the run could not be advanced: {cause}");
    let details = json!({ "cause": "advancement_job_dead" });
    fail(tx, run_id, run.status, &reason, details).await?;
    Ok(true)
}

/// `queued | running → failed` with `reason`, under the run's lock (the caller checked the
/// transition), audited `run_failed` with `details`.
async fn fail(
    tx: &mut Tx<'_>,
    run_id: &RunId,
    from: RunStatus,
    reason: &str,
    details: serde_json::Value,
) -> Result<(), PersistenceError> {
    let version: i64 = crate::db::query_scalar(
        "update orchestrator_runs set status = 'failed', status_reason = $2, finished_at = now(), \
             agent_retry = null, version = version + 1, updated_at = now() \
         where run_id = $1 returning version",
    )
    .bind(run_id)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?;
    append_audit(
        tx,
        run_id,
        AuditEntry {
            run_version: version,
            action: Some(AuditAction::RunFailed),
            note: Some(reason),
            from_status: Some(from),
            to_status: Some(RunStatus::Failed),
            details: Some(details),
            ..AuditEntry::default()
        },
    )
    .await?;
    Ok(())
}

/// `1h`, `90s`: a window as the settings spell it.
fn humantime_secs(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs > 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else if secs > 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", d.num_milliseconds())
    }
}
