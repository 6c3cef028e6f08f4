//! The job kinds that transitions enqueue, each a payload type naming its kind.
//!
//! A kind is a stable snake_case name (the row's `job_type`, also the apalis queue) and a
//! payload stored as JSON in the row. Kinds whose jobs a transition here enqueues (inside
//! its transaction) are declared in this file, because `persistence` cannot see the
//! handlers above it; a kind that only a handler enqueues may declare its payload in the
//! handler's own file. The handlers are `jobs::*`, one file per kind.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{CommandId, CommandKind, RequestId, RunId};

/// A job kind's payload: what is stored in the row, under the kind's stable name.
pub trait JobPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's stable snake_case name, stored in every row of the kind.
    const KIND: &'static str;

    /// What the job acts on, as apalis metadata (`run_id` or `request_id`, indexed over
    /// live jobs for the rehydration and sweep checks).
    fn metadata(&self) -> Option<(&'static str, String)> {
        None
    }
}

/// The payload of a command's job: it names the command to apply.
pub trait CommandJob: JobPayload {
    /// The kind of command its jobs apply.
    const COMMAND: CommandKind;
    /// The command to apply.
    fn command_id(&self) -> &CommandId;
}

/// `hitl_resume`: apply a resume command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyResume {
    pub command_id: CommandId,
}

impl CommandJob for ApplyResume {
    const COMMAND: CommandKind = CommandKind::Resume;

    fn command_id(&self) -> &CommandId {
        &self.command_id
    }
}

impl JobPayload for ApplyResume {
    const KIND: &'static str = "hitl_resume";
}

/// `hitl_remove`: apply a remove command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRemove {
    pub command_id: CommandId,
}

impl CommandJob for ApplyRemove {
    const COMMAND: CommandKind = CommandKind::Remove;

    fn command_id(&self) -> &CommandId {
        &self.command_id
    }
}

impl JobPayload for ApplyRemove {
    const KIND: &'static str = "hitl_remove";
}

/// `hitl_retry`: apply a retry command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRetry {
    pub command_id: CommandId,
}

impl CommandJob for ApplyRetry {
    const COMMAND: CommandKind = CommandKind::Retry;

    fn command_id(&self) -> &CommandId {
        &self.command_id
    }
}

impl JobPayload for ApplyRetry {
    const KIND: &'static str = "hitl_retry";
}

/// `hitl_advance`: advance a run as far as it can go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Advance {
    pub run_id: RunId,
}

impl JobPayload for Advance {
    const KIND: &'static str = "hitl_advance";

    fn metadata(&self) -> Option<(&'static str, String)> {
        Some(("run_id", self.run_id.to_string()))
    }
}

/// `hitl_expire`: expire a request whose deadline passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expire {
    pub request_id: RequestId,
}

impl JobPayload for Expire {
    const KIND: &'static str = "hitl_expire";

    fn metadata(&self) -> Option<(&'static str, String)> {
        Some(("request_id", self.request_id.to_string()))
    }
}

/// `hitl_cleanup`: delete finished job rows; reschedules itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cleanup {}

impl JobPayload for Cleanup {
    const KIND: &'static str = "hitl_cleanup";
}

/// `hitl_rescan`: page through unfinished runs (after this run id) and enqueue
/// rehydration pages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rescan {
    #[serde(default)]
    pub after: Option<RunId>,
}

impl JobPayload for Rescan {
    const KIND: &'static str = "hitl_rescan";
}

/// `hitl_rehydrate`: check and repair one page of runs after a start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rehydrate {
    pub run_ids: Vec<RunId>,
}

impl JobPayload for Rehydrate {
    const KIND: &'static str = "hitl_rehydrate";
}

/// `hitl_remind`: remind while request `request_id` is pending, then schedule the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Remind {
    pub request_id: RequestId,
}

impl JobPayload for Remind {
    const KIND: &'static str = "hitl_remind";

    fn metadata(&self) -> Option<(&'static str, String)> {
        Some(("request_id", self.request_id.to_string()))
    }
}

/// `hitl_escalate`: apply escalation step `step` if request `request_id` is pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Escalate {
    pub request_id: RequestId,
    pub step: usize,
}

impl JobPayload for Escalate {
    const KIND: &'static str = "hitl_escalate";

    fn metadata(&self) -> Option<(&'static str, String)> {
        Some(("request_id", self.request_id.to_string()))
    }
}

/// `hitl_expiring`: tell the channels whose notice is `notice_seconds` that request
/// `request_id`'s deadline is near, if it is still pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpiringNotice {
    pub request_id: RequestId,
    pub notice_seconds: i32,
}

impl JobPayload for ExpiringNotice {
    const KIND: &'static str = "hitl_expiring";

    fn metadata(&self) -> Option<(&'static str, String)> {
        Some(("request_id", self.request_id.to_string()))
    }
}

/// `hitl_notify`: deliver one notification (an event to one channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    pub delivery_id: uuid::Uuid,
}

impl JobPayload for Notify {
    const KIND: &'static str = "hitl_notify";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_keep_the_shapes_rows_already_hold() {
        let run_id = RunId::new();
        assert_eq!(
            serde_json::to_value(Advance {
                run_id: run_id.clone()
            })
            .unwrap(),
            json!({ "runId": run_id })
        );
        assert_eq!(serde_json::to_value(Cleanup {}).unwrap(), json!({}));
        assert_eq!(
            serde_json::to_value(Rescan::default()).unwrap(),
            json!({ "after": null })
        );
        assert!(serde_json::from_value::<Rescan>(json!({})).is_ok());
        assert!(serde_json::from_value::<Advance>(json!({ "runId": 1 })).is_err());
    }
}
