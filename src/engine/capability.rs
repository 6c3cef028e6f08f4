//! Capabilities: what a `task` node runs. A registry maps names to implementations; the
//! built-ins need no network (`set`, `fail`), and the agent webhook plugs in the same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::plan::{Contract, HitlOption};
use crate::domain::{ResponseType, RunId, ThreadId, TimeoutAction};
use crate::persistence::{Assignees, ItemKind, ItemOption, RequestItem, ResponseRecord};

/// A boxed future, so capabilities can be stored as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a capability is given for one call.
#[derive(Clone, Copy, Debug)]
pub struct CapabilityCall<'a> {
    pub run_id: &'a RunId,
    pub thread_id: &'a ThreadId,
    pub node_id: &'a str,
    /// The node's `input`.
    pub input: &'a Map<String, Value>,
    /// The node's `config`.
    pub config: &'a Map<String, Value>,
    /// The run's execution context as it is before this node.
    pub execution_context: &'a Value,
    /// The runner state this node returned last time (after an interruption), as the
    /// exact JSON text it was sent as.
    pub runner_state: Option<&'a str>,
    /// The operator's answers, when this call resumes the node after it interrupted.
    pub responses: Option<&'a [ResponseRecord]>,
    /// Stable for one attempt at the node — the same for every delivery of it (a retry
    /// after a failed call, a worker killed mid-call and taken over, a sweep's repair),
    /// new when the node is entered again on purpose (a resume after an interruption, an
    /// operator's retry, a plan that loops back): `<run>:<node>:<attempt>`.
    pub attempt_key: &'a str,
}

/// What a call does to its node's stored runner state.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RunnerStateUpdate {
    /// Keep what is stored (the reply had no `runnerState`).
    #[default]
    Keep,
    /// Clear it (`runnerState: null`).
    Clear,
    /// Store this exact JSON text.
    Set(String),
}

/// A HITL request a capability raises of its own (an agent's tool approvals).
#[derive(Clone, Debug, PartialEq)]
pub struct Interrupt {
    pub prompt: String,
    /// Each decision asked for, answered on its own (at least one).
    pub items: Vec<RequestItem>,
    pub contract: Contract,
    /// A deadline, in seconds from now, and what it does to every item when it passes.
    pub deadline: Option<(u64, TimeoutAction)>,
    /// Who may answer; `None`: anyone with the operate scope.
    pub assignees: Option<Assignees>,
    /// Distinct approvals needed before the request resolves (`None`: one answer).
    pub approvals: Option<u32>,
    /// Reminders and escalation while it is pending.
    pub follow_up: Option<Box<crate::persistence::FollowUp>>,
}

impl Interrupt {
    /// A one-item request, as a `hitl` node asks: the item's id is the node's.
    pub fn single(
        node_id: &str,
        prompt: String,
        response_types: Vec<ResponseType>,
        options: Vec<HitlOption>,
    ) -> Self {
        Self {
            items: vec![RequestItem {
                item_id: node_id.to_owned(),
                kind: ItemKind::Question,
                title: prompt.clone(),
                tool: None,
                response_types,
                options: options
                    .into_iter()
                    .map(|o| ItemOption {
                        id: o.id,
                        label: o.label,
                    })
                    .collect(),
            }],
            prompt,
            contract: Contract::default(),
            deadline: None,
            assignees: None,
            approvals: None,
            follow_up: None,
        }
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub enum CapabilityOutcome {
    /// Done: `merge` is merged into the execution context (top-level keys replaced);
    /// `runner_state` and `notes` are kept in the runner metadata under the node id.
    Completed {
        merge: Map<String, Value>,
        runner_state: RunnerStateUpdate,
        notes: Option<Value>,
    },
    /// Paused: the run waits on `request`; on resume the node is called again with the
    /// answers and this `runner_state`.
    Interrupted {
        request: Interrupt,
        runner_state: RunnerStateUpdate,
    },
    /// The node failed for good; the run fails with `message`.
    Failed { message: String },
}

/// A failure worth retrying (network, timeout, 408, 429, 5xx): the node's outcome is not
/// written, and the call is tried again later, for as long as the engine's
/// [`RetryPolicy`](super::RetryPolicy) allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransientError {
    /// What went wrong, for the run's `agentRetry.lastError` (no secrets, no bodies).
    pub message: String,
    /// How long the callee asked us to wait (`Retry-After`), if it did.
    pub retry_after: Option<std::time::Duration>,
}

/// What a task node can run.
pub trait Capability: Send + Sync {
    /// Checks a node's `config` when a plan is created; `Err((field, message))` names
    /// the field under `config`. Most capabilities accept any config.
    fn validate(&self, _config: &Map<String, Value>) -> Result<(), (String, String)> {
        Ok(())
    }

    /// Whether a call is local: no I/O, returns at once, and the same answer again for
    /// the same input. Local nodes may run inside the transaction that resumed the run
    /// (holding its lock); any other node runs in an advancement job, outside one.
    fn is_local(&self) -> bool {
        false
    }

    /// Runs the capability once.
    fn call<'a>(
        &'a self,
        call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>>;
}

/// The capabilities by name.
#[derive(Clone, Default)]
pub struct CapabilityRegistry {
    by_name: BTreeMap<String, Arc<dyn Capability>>,
}

impl CapabilityRegistry {
    /// A registry with the built-in capabilities `set` and `fail`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        registry.register("set", Arc::new(Set));
        registry.register("fail", Arc::new(Fail));
        registry
    }

    /// Adds (or replaces) a capability.
    pub fn register(&mut self, name: impl Into<String>, capability: Arc<dyn Capability>) {
        self.by_name.insert(name.into(), capability);
    }

    /// The capability called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Capability>> {
        self.by_name.get(name)
    }

    /// Whether `name` is registered (plans naming others are refused).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// `set`: merges the node's `input` into the execution context.
struct Set;

impl Capability for Set {
    fn is_local(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            Ok(CapabilityOutcome::Completed {
                merge: call.input.clone(),
                runner_state: RunnerStateUpdate::Keep,
                notes: None,
            })
        })
    }
}

/// `fail`: fails the node with `input.message`, to exercise failure paths.
struct Fail;

impl Capability for Fail {
    fn is_local(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            let message = call
                .input
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the node failed (capability `fail`)")
                .to_owned();
            Ok(CapabilityOutcome::Failed { message })
        })
    }
}
