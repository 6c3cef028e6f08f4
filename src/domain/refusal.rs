//! Why a command cannot apply: the one typed refusal, decided below the service layer
//! and mapped to HTTP (or any other front end) in one place.
//!
//! A refusal is a normal outcome, not an error: the command that met it ends `rejected`
//! and its `outcome` column holds the refusal as JSON (`{"reason": "conflict", …}`),
//! so a client polling the command later reads the same thing an early check would have
//! answered at once. The JSON shape is the API's `error.details` (less `message`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{CommandId, RequestId, RunId};
use super::status::{AuditAction, RequestStatus, RunStatus};

/// Who acted: an operator, as the runbook's `operator` object gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operator {
    /// Stable operator id.
    pub id: String,
    /// Name to show.
    pub display_name: Option<String>,
    /// Contact address.
    pub email: Option<String>,
}

/// Who holds a claim on a request: the credential (its name) and the operator it acted
/// as. Two claims are the same holder when both agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHolder {
    /// The credential's name (`[[token]] name`, or the JWT's subject).
    pub principal: String,
    /// The operator it acted as.
    pub operator: Operator,
}

impl ClaimHolder {
    /// Whether `principal` acting as `operator` is this holder.
    pub fn is(&self, principal: Option<&str>, operator: &Operator) -> bool {
        principal.is_some_and(|p| p == self.principal) && operator.id == self.operator.id
    }

    /// "operator alice (token alice-laptop)".
    pub fn describe(&self) -> String {
        format!("operator {} ({})", self.operator.id, self.principal)
    }
}

/// Who settled a request or ended a run first: the audit event that did it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Winner {
    /// The command that won (`None`: the system, e.g. a deadline).
    pub command_id: Option<CommandId>,
    /// What it did.
    pub action: AuditAction,
    /// Who submitted it.
    pub operator: Option<Operator>,
    /// When it was applied.
    pub at: DateTime<Utc>,
}

impl Winner {
    /// "command cmd_… of operator alice", or "the system (expire)".
    pub fn describe(&self) -> String {
        match (&self.command_id, &self.operator) {
            (Some(c), Some(o)) => format!("command {c} of operator {}", o.id),
            (Some(c), None) => format!("command {c}"),
            _ => format!("the system ({})", self.action),
        }
    }
}

/// The run (and request) a refusal is about, as they stood when it was decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalContext {
    #[serde(default)]
    pub run_id: Option<RunId>,
    #[serde(default)]
    pub run_status: Option<RunStatus>,
    /// The request the command named.
    #[serde(default)]
    pub request_id: Option<RequestId>,
    #[serde(default)]
    pub request_status: Option<RequestStatus>,
    /// The run's pending request now (`None`: it has none).
    #[serde(default)]
    pub pending_request_id: Option<RequestId>,
}

/// Why a command was (or would be) refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "reason",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Refusal {
    /// Another command (or the deadline) settled the request or ended the run first.
    Conflict {
        message: String,
        winner: Winner,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// The request named is not the pending one (`context.pending_request_id` is).
    NotPending {
        message: String,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// The run ended on its own (a policy, a failure), not by a command.
    RunTerminal {
        message: String,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// A retry of a run that is not `failed`.
    RunNotFailed {
        message: String,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// Another principal holds a claim on the request (until `expires_at`).
    Claimed {
        message: String,
        holder: ClaimHolder,
        expires_at: DateTime<Utc>,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// This approver's approval of the request is already counted.
    AlreadyApproved {
        message: String,
        approver: String,
        #[serde(flatten)]
        context: RefusalContext,
    },
    /// An answer does not fit the request (`field` names it, e.g. `responses[1].optionId`).
    InvalidResponse { message: String, field: String },
    /// The stored command cannot be read as a command of its kind.
    InvalidPayload { message: String },
}

impl Refusal {
    /// The snake_case reason, as stored and as the API's error code.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Conflict { .. } => "conflict",
            Refusal::NotPending { .. } => "not_pending",
            Refusal::RunTerminal { .. } => "run_terminal",
            Refusal::RunNotFailed { .. } => "run_not_failed",
            Refusal::Claimed { .. } => "claimed",
            Refusal::AlreadyApproved { .. } => "already_approved",
            Refusal::InvalidResponse { .. } => "invalid_response",
            Refusal::InvalidPayload { .. } => "invalid_payload",
        }
    }

    /// The human-readable explanation.
    pub fn message(&self) -> &str {
        match self {
            Refusal::Conflict { message, .. }
            | Refusal::NotPending { message, .. }
            | Refusal::RunTerminal { message, .. }
            | Refusal::RunNotFailed { message, .. }
            | Refusal::Claimed { message, .. }
            | Refusal::AlreadyApproved { message, .. }
            | Refusal::InvalidResponse { message, .. }
            | Refusal::InvalidPayload { message } => message,
        }
    }

    /// Whether the state moved on (a conflict of some kind), rather than the command
    /// being malformed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Refusal::Conflict { .. }
                | Refusal::NotPending { .. }
                | Refusal::RunTerminal { .. }
                | Refusal::RunNotFailed { .. }
                | Refusal::Claimed { .. }
                | Refusal::AlreadyApproved { .. }
        )
    }

    /// The refusal as stored in a command's `outcome`.
    pub fn to_json(&self) -> serde_json::Value {
        // A derived Serialize of strings, ids and enums into a Value cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads a stored outcome back; `None` when it is not a refusal this version knows.
    pub fn from_json(outcome: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(outcome.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refusal_round_trips_through_its_stored_shape() {
        let run_id = RunId::new();
        let conflict = Refusal::Conflict {
            message: "request was already settled".into(),
            winner: Winner {
                command_id: Some(CommandId::new()),
                action: AuditAction::Resume,
                operator: Some(Operator {
                    id: "alice".into(),
                    ..Operator::default()
                }),
                at: Utc::now(),
            },
            context: RefusalContext {
                run_id: Some(run_id.clone()),
                run_status: Some(RunStatus::Completed),
                ..RefusalContext::default()
            },
        };
        let stored = conflict.to_json();
        assert_eq!(stored["reason"], "conflict");
        assert_eq!(stored["winner"]["operator"]["id"], "alice");
        assert_eq!(stored["runId"], json!(run_id));
        assert_eq!(stored["runStatus"], "completed");
        assert!(stored["pendingRequestId"].is_null());
        assert_eq!(Refusal::from_json(&stored), Some(conflict));

        let invalid = Refusal::InvalidResponse {
            message: "no such option".into(),
            field: "responses[1].optionId".into(),
        };
        assert_eq!(invalid.to_json()["field"], "responses[1].optionId");
        assert_eq!(Refusal::from_json(&invalid.to_json()), Some(invalid));
    }

    #[test]
    fn outcomes_written_before_the_context_was_stored_still_read() {
        let old = json!({ "reason": "not_pending", "message": "x", "pendingRequestId": null });
        assert!(matches!(
            Refusal::from_json(&old),
            Some(Refusal::NotPending { .. })
        ));
        let old = json!({ "reason": "run_terminal", "message": "x", "status": "failed" });
        assert!(matches!(
            Refusal::from_json(&old),
            Some(Refusal::RunTerminal { .. })
        ));
        assert_eq!(Refusal::from_json(&json!({ "run": {} })), None);
    }
}
