//! The closed sets of values the orchestrator stores as text: run, request and command
//! statuses, response types, node policies and audit actions.
//!
//! Each enum has one spelling (snake_case) used everywhere: `as_str`, `Display`,
//! `FromStr`, serde and sqlx. The database enforces the same sets with CHECK
//! constraints, so renaming a variant's string is a migration, not a refactor.

use std::fmt;
use std::str::FromStr;

/// A string that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}, expected one of: {}", .allowed.join(", "))]
pub struct ParseStatusError {
    /// What was being parsed, e.g. `run status`.
    pub kind: &'static str,
    /// The string that was given.
    pub value: String,
    /// Every accepted value.
    pub allowed: &'static [&'static str],
}

/// Defines a text-backed enum: the variants with their strings, `ALL`, `as_str`,
/// `parse`, `Display`, `FromStr`, serde and sqlx support.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Copy, Clone, Debug, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema,
        )]
        #[serde(rename_all = "snake_case")]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Every value's string, in declaration order.
            pub const ALLOWED: &'static [&'static str] = &[$($text),+];

            /// The stored and serialized spelling of this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Parses the exact (snake_case) spelling of a value.
            pub fn parse(s: &str) -> Result<Self, ParseStatusError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(ParseStatusError {
                        kind: $kind,
                        value: s.to_owned(),
                        allowed: Self::ALLOWED,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStatusError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

text_enum! {
    /// Where a run is in its life (`orchestrator_runs.status`).
    ///
    /// `queued → running → awaiting_hitl ⇄ running → completed | failed`; any
    /// non-terminal status can go to `cancelled`.
    RunStatus, "run status" {
        /// Created, not yet picked up by a worker.
        Queued => "queued",
        /// A worker is advancing it node by node.
        Running => "running",
        /// Paused at a HITL node until an operator resumes or removes it.
        AwaitingHitl => "awaiting_hitl",
        /// Finished every node (terminal).
        Completed => "completed",
        /// Stopped by an error or a rejection policy (terminal).
        Failed => "failed",
        /// Removed by an operator or cancelled by policy (terminal).
        Cancelled => "cancelled",
    }
}

impl RunStatus {
    /// True for `completed`, `failed` and `cancelled`: statuses that never change again.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

text_enum! {
    /// Where a HITL request is in its life (`hitl_requests.status`).
    RequestStatus, "request status" {
        /// Waiting for an operator.
        Pending => "pending",
        /// Answered by a resume, whatever the answer.
        Resolved => "resolved",
        /// Refused by a remove.
        Denied => "denied",
        /// Its deadline passed.
        Expired => "expired",
        /// Its run ended some other way.
        Cancelled => "cancelled",
    }
}

impl RequestStatus {
    /// True only for `pending`; every other status is final.
    pub const fn is_pending(self) -> bool {
        matches!(self, Self::Pending)
    }
}

text_enum! {
    /// The kind of an operator's response (`hitl_responses.response_type`).
    ResponseType, "response type" {
        /// A yes/no answer (`approved`).
        Approval => "approval",
        /// An explicit rejection.
        Rejection => "rejection",
        /// A choice among the request's options (`optionId`).
        Option => "option",
        /// Free text (`freeformText`).
        Freeform => "freeform",
        /// An approval with changed tool arguments (`editedArguments`, a JSON object).
        Edit => "edit",
    }
}

text_enum! {
    /// What an operator command does (`hitl_commands.kind`).
    CommandKind, "command kind" {
        /// Answer the pending request and continue the run.
        Resume => "resume",
        /// Cancel the run, denying its pending request if any.
        Remove => "remove",
        /// Put a failed run back to running at the node that failed.
        Retry => "retry",
    }
}

text_enum! {
    /// Where a submitted command is (`hitl_commands.status`).
    CommandStatus, "command status" {
        /// Stored and enqueued, not yet taken by a worker.
        Queued => "queued",
        /// A worker is applying it.
        Running => "running",
        /// Applied.
        Succeeded => "succeeded",
        /// Refused at apply time (e.g. someone else resumed first); not retried.
        Rejected => "rejected",
        /// Failed for good after its retries.
        Failed => "failed",
    }
}

impl CommandStatus {
    /// True for `succeeded`, `rejected` and `failed`: the command has its outcome.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Rejected | Self::Failed)
    }
}

text_enum! {
    /// What a HITL node does when its deadline passes (the node's `onTimeout`).
    TimeoutAction, "timeout action" {
        /// Treat as a rejection: the node's `onRejection` policy decides.
        Reject => "reject",
        /// Treat as an approval and continue.
        Approve => "approve",
        /// Cancel the run.
        Cancel => "cancel",
    }
}

text_enum! {
    /// What a rejection does to the run (the node's `onRejection`).
    #[derive(Default)]
    RejectionPolicy, "rejection policy" {
        /// Fail the run (the default).
        #[default]
        Fail => "fail",
        /// Cancel the run.
        Cancel => "cancel",
        /// Record the rejection and go on to the next node.
        Continue => "continue",
    }
}

text_enum! {
    /// What an audit event records (`run_audit_events.action`; also a CHECK
    /// constraint in the database, so these strings must not change).
    AuditAction, "audit action" {
        /// The run was created.
        RunCreated => "run_created",
        /// A worker started the run.
        RunStarted => "run_started",
        /// A node finished and the run moved on.
        NodeCompleted => "node_completed",
        /// The run paused and raised a HITL request.
        HitlRequested => "hitl_requested",
        /// An operator resumed the run.
        Resume => "resume",
        /// An operator removed (cancelled) the run.
        Remove => "remove",
        /// A HITL request's deadline passed.
        Expire => "expire",
        /// HITL is switched off, so a HITL node resolved by its timeout policy.
        HitlDisabled => "hitl_disabled",
        /// The run completed.
        RunCompleted => "run_completed",
        /// The run failed.
        RunFailed => "run_failed",
        /// The run was cancelled by policy.
        RunCancelled => "run_cancelled",
        /// A worker rehydrated the run after a restart or sweep.
        Rehydrate => "rehydrate",
        /// An operator retried a failed run.
        Retry => "retry",
        /// An agent call failed in a way worth retrying (the agent is down, busy or
        /// slow): the run keeps running and the call is retried for `HITL_AGENT_RETRY_FOR`.
        AgentUnreachable => "agent_unreachable",
        /// A principal claimed the pending request (or renewed its claim).
        RequestClaimed => "request_claimed",
        /// The claim's holder released it.
        RequestReleased => "request_released",
        /// A supervisor overrode another principal's claim (`force: true`).
        ClaimBroken => "claim_broken",
        /// An approval was counted, short of the number the request needs.
        ApprovalRecorded => "approval_recorded",
        /// A reminder went out: the request is still pending (`remindEverySeconds`).
        Reminded => "reminded",
        /// An escalation step was applied: assignees added, channels told.
        Escalated => "escalated",
        /// The request's deadline is near: channels wanting `request_expiring` are told
        /// their `expiringNoticeSeconds` before it.
        Expiring => "expiring",
    }
}

impl AuditAction {
    /// The name of the live event (SSE, notifications) this audit action is shown as.
    pub const fn event_name(self) -> &'static str {
        match self {
            AuditAction::RunCreated => "run_created",
            AuditAction::RunStarted => "run_started",
            AuditAction::NodeCompleted => "node_completed",
            AuditAction::HitlRequested => "request_raised",
            AuditAction::Resume => "resumed",
            AuditAction::Remove => "removed",
            AuditAction::Expire => "expired",
            AuditAction::HitlDisabled => "hitl_disabled",
            AuditAction::RunCompleted => "run_completed",
            AuditAction::RunFailed => "run_failed",
            AuditAction::RunCancelled => "run_cancelled",
            AuditAction::Rehydrate => "rehydrated",
            AuditAction::Retry => "run_retried",
            AuditAction::AgentUnreachable => "agent_unreachable",
            AuditAction::RequestClaimed => "request_claimed",
            AuditAction::RequestReleased => "request_released",
            AuditAction::ClaimBroken => "claim_broken",
            AuditAction::ApprovalRecorded => "approval_recorded",
            AuditAction::Reminded => "reminded",
            AuditAction::Escalated => "escalated",
            AuditAction::Expiring => "request_expiring",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::{PgArgumentBuffer, Postgres};

    /// Checks that `as_str`, `Display`, `parse`, serde and sqlx all agree for every
    /// value, and that `ALLOWED` lists exactly those strings.
    macro_rules! assert_spellings_agree {
        ($ty:ty) => {{
            assert_eq!(<$ty>::ALL.len(), <$ty>::ALLOWED.len());
            for (value, allowed) in <$ty>::ALL.iter().copied().zip(<$ty>::ALLOWED) {
                let s = value.as_str();
                assert_eq!(s, *allowed);
                assert_eq!(value.to_string(), s);
                assert_eq!(<$ty>::parse(s), Ok(value));
                assert_eq!(s.parse::<$ty>(), Ok(value));
                let json = serde_json::to_string(&value).expect("serialize");
                assert_eq!(json, format!("\"{s}\""));
                assert_eq!(
                    serde_json::from_str::<$ty>(&json).expect("deserialize"),
                    value
                );
                let mut buf = PgArgumentBuffer::default();
                let _ = <$ty as sqlx::Encode<'_, Postgres>>::encode_by_ref(&value, &mut buf)
                    .expect("encode");
                assert_eq!(&buf[..], s.as_bytes(), "sqlx spelling of {value:?}");
            }
            let text = <String as sqlx::Type<Postgres>>::type_info();
            assert!(<$ty as sqlx::Type<Postgres>>::compatible(&text));
        }};
    }

    #[test]
    fn every_enum_has_one_spelling_in_rust_json_and_postgres() {
        assert_spellings_agree!(RunStatus);
        assert_spellings_agree!(RequestStatus);
        assert_spellings_agree!(ResponseType);
        assert_spellings_agree!(CommandKind);
        assert_spellings_agree!(CommandStatus);
        assert_spellings_agree!(TimeoutAction);
        assert_spellings_agree!(RejectionPolicy);
        assert_spellings_agree!(AuditAction);
    }

    #[test]
    fn run_status_values_are_the_documented_ones() {
        assert_eq!(
            RunStatus::ALLOWED,
            [
                "queued",
                "running",
                "awaiting_hitl",
                "completed",
                "failed",
                "cancelled"
            ]
        );
    }

    #[test]
    fn request_status_values_are_the_documented_ones() {
        assert_eq!(
            RequestStatus::ALLOWED,
            ["pending", "resolved", "denied", "expired", "cancelled"]
        );
    }

    #[test]
    fn response_type_values_are_the_documented_ones() {
        assert_eq!(
            ResponseType::ALLOWED,
            ["approval", "rejection", "option", "freeform", "edit"]
        );
    }

    #[test]
    fn command_values_are_the_documented_ones() {
        assert_eq!(CommandKind::ALLOWED, ["resume", "remove", "retry"]);
        assert_eq!(
            CommandStatus::ALLOWED,
            ["queued", "running", "succeeded", "rejected", "failed"]
        );
    }

    #[test]
    fn policy_values_are_the_documented_ones() {
        assert_eq!(TimeoutAction::ALLOWED, ["reject", "approve", "cancel"]);
        assert_eq!(RejectionPolicy::ALLOWED, ["fail", "cancel", "continue"]);
    }

    #[test]
    fn audit_actions_match_the_database_check_constraint() {
        assert_eq!(
            AuditAction::ALLOWED,
            [
                "run_created",
                "run_started",
                "node_completed",
                "hitl_requested",
                "resume",
                "remove",
                "expire",
                "hitl_disabled",
                "run_completed",
                "run_failed",
                "run_cancelled",
                "rehydrate",
                "retry",
                "agent_unreachable",
                "request_claimed",
                "request_released",
                "claim_broken",
                "approval_recorded",
                "reminded",
                "escalated",
                "expiring",
            ]
        );
    }

    #[test]
    fn only_completed_failed_and_cancelled_runs_are_terminal() {
        let terminal: Vec<_> = RunStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .copied()
            .collect();
        assert_eq!(
            terminal,
            [
                RunStatus::Completed,
                RunStatus::Failed,
                RunStatus::Cancelled
            ]
        );
    }

    #[test]
    fn only_pending_requests_are_pending() {
        let pending: Vec<_> = RequestStatus::ALL
            .iter()
            .filter(|s| s.is_pending())
            .copied()
            .collect();
        assert_eq!(pending, [RequestStatus::Pending]);
    }

    #[test]
    fn succeeded_rejected_and_failed_commands_are_final() {
        let done: Vec<_> = CommandStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .copied()
            .collect();
        assert_eq!(
            done,
            [
                CommandStatus::Succeeded,
                CommandStatus::Rejected,
                CommandStatus::Failed
            ]
        );
    }

    #[test]
    fn rejection_policy_defaults_to_fail() {
        assert_eq!(RejectionPolicy::default(), RejectionPolicy::Fail);
    }

    #[test]
    fn parse_rejects_other_spellings() {
        for s in [
            "Running",
            "RUNNING",
            "awaitingHitl",
            "awaiting-hitl",
            " running",
            "",
        ] {
            assert!(RunStatus::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn parse_error_names_the_kind_the_value_and_the_allowed_values() {
        let err = RunStatus::parse("paused").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown run status \"paused\", expected one of: \
             queued, running, awaiting_hitl, completed, failed, cancelled"
        );
    }

    #[test]
    fn deserializing_an_unknown_value_fails() {
        assert!(serde_json::from_str::<TimeoutAction>("\"ignore\"").is_err());
        assert!(serde_json::from_str::<RejectionPolicy>("\"Fail\"").is_err());
    }
}
