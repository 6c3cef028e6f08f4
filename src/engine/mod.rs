//! Plan execution: a run advances node by node from its cursor, checkpointing through
//! `persistence` after every node, until it pauses at a HITL node, completes, fails or
//! is cancelled.
//!
//! [`Engine::advance`] moves a run, a transaction per node; the queue's advancement job
//! calls it. [`Engine::advance_in`] does the same inside the caller's transaction through
//! local nodes only (the worker applying a resume or an expiry calls it, so the answer and
//! what it unlocks commit together). Both are safe to call at any time and any number of
//! times: every write is fenced by the run's `version`, so a call that raced with another
//! (or with an operator's remove) writes nothing once it falls behind.

mod advance;
pub mod capability;
pub mod plan;
pub mod webhook;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::domain::RunId;
use crate::persistence::{self, CreatedRun, NewRun, PersistenceError, Tx};
pub use advance::AdvanceOutcome;
use capability::CapabilityRegistry;
use plan::{Plan, PlanError};

/// Why the engine could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The plan does not validate.
    #[error("invalid plan: {0}")]
    InvalidPlan(#[from] PlanError),
    /// The run does not exist.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// A capability failed in a way worth retrying; nothing was written.
    #[error("node {node_id} failed transiently: {message}")]
    Transient { node_id: String, message: String },
    /// The stored run is not something this engine can execute (a broken invariant).
    #[error("run {run_id} cannot be executed: {message}")]
    Corrupt { run_id: RunId, message: String },
    /// The database refused or failed.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
}

/// The plan executor: the capabilities it can call and whether HITL pauses are on.
#[derive(Clone)]
pub struct Engine {
    registry: Arc<CapabilityRegistry>,
    hitl_enabled: bool,
}

impl Engine {
    /// An engine calling `registry`'s capabilities. With `hitl_enabled` off (the
    /// `HITL_ENABLED` flag), HITL nodes do not pause: they resolve by their `onTimeout`
    /// policy (`reject` when they have none) and the audit says `hitl_disabled`.
    pub fn new(registry: CapabilityRegistry, hitl_enabled: bool) -> Self {
        Self {
            registry: Arc::new(registry),
            hitl_enabled,
        }
    }

    /// An engine with the built-in capabilities only.
    pub fn with_builtins(hitl_enabled: bool) -> Self {
        Self::new(CapabilityRegistry::with_builtins(), hitl_enabled)
    }

    /// Whether HITL nodes pause for operators.
    pub fn hitl_enabled(&self) -> bool {
        self.hitl_enabled
    }

    /// An engine for the service: the built-ins and `agent.webhook`, configured by
    /// the `HITL_AGENT_*` settings.
    pub fn for_service(common: &crate::config::CommonArgs) -> Self {
        let mut registry = CapabilityRegistry::with_builtins();
        let settings = webhook::WebhookSettings {
            allowed_urls: common.agent_allowed_urls.clone(),
            timeout: common.agent_timeout.0,
            max_attempts: common.agent_max_attempts,
            backoff: common.agent_backoff.0,
            signing_secret: common.agent_signing_secret.clone(),
        };
        registry.register(
            "agent.webhook",
            Arc::new(webhook::AgentWebhook::new(settings)),
        );
        Self::new(registry, common.hitl_enabled)
    }

    /// Validates a client's plan against this engine's capabilities, including each
    /// task node's `config` as its capability requires.
    pub fn validate_plan(&self, plan: &Value) -> Result<Plan, PlanError> {
        let parsed = Plan::parse(plan, &|name| self.registry.contains(name))?;
        for (i, node) in parsed.nodes.iter().enumerate() {
            if let plan::NodeKind::Task(task) = &node.kind
                && let Some(capability) = self.registry.get(&task.capability)
                && let Err((field, message)) = capability.validate(&task.config)
            {
                return Err(PlanError {
                    node: Some(node.id.clone()),
                    field: format!("plan.nodes[{i}].config.{field}"),
                    message,
                });
            }
        }
        Ok(parsed)
    }

    /// Validates the plan and creates the run (queued) with the plan in canonical form,
    /// in the caller's transaction.
    pub async fn create_run(
        &self,
        tx: &mut Tx<'_>,
        mut new: NewRun,
    ) -> Result<CreatedRun, EngineError> {
        let plan = self.validate_plan(&new.plan)?;
        new.plan = plan.to_json();
        if !new.execution_context.is_object() {
            new.execution_context = json!({});
        }
        if !new.runner_metadata.is_object() {
            new.runner_metadata = json!({});
        }
        Ok(persistence::create_run(tx, new).await?)
    }
}
