//! Plan execution: a run advances node by node from its cursor, checkpointing through
//! `persistence` after every node, until it pauses at a HITL node, completes, fails or
//! is cancelled.
//!
//! [`Engine::advance`] moves a run, a transaction per node; the queue's advancement job
//! calls it. [`Engine::advance_written`] does the same through local nodes only, adding
//! each step to the caller's transition write (the worker applying a resume, a retry or
//! an expiry calls it, so the answer and what it unlocks are one statement and one
//! commit). Both are safe to call at any time and any number of
//! times: every write is fenced by the run's `version`, so a call that raced with another
//! (or with an operator's remove) writes nothing once it falls behind.

mod advance;
pub mod capability;
pub mod plan;
pub mod webhook;
pub use webhook::check_allowed_url;

use std::sync::Arc;
use std::time::Duration;

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
    /// A capability failed in a way worth retrying; nothing was written. The run was
    /// at `version` when the call was made.
    #[error("node {node_id} failed transiently: {message}")]
    Transient {
        node_id: String,
        message: String,
        retry_after: Option<std::time::Duration>,
        version: i64,
    },
    /// The stored run is not something this engine can execute (a broken invariant).
    #[error("run {run_id} cannot be executed: {message}")]
    Corrupt { run_id: RunId, message: String },
    /// The database refused or failed.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
}

/// The plan executor: the capabilities it can call, whether HITL pauses are on, and how
/// long a node's transient failures are retried.
#[derive(Clone)]
pub struct Engine {
    registry: Arc<CapabilityRegistry>,
    hitl_enabled: bool,
    retry: RetryPolicy,
}

/// How a node whose call fails transiently (an agent that is down, busy or slow) is
/// retried: capped exponential backoff with jitter, honouring `Retry-After`, for a
/// window counted from the outage's first failure (`HITL_AGENT_RETRY_FOR`,
/// `HITL_AGENT_BACKOFF`, `HITL_AGENT_BACKOFF_MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long after the first failure the node fails for good.
    pub retry_for: Duration,
    /// The delay after the first failure; doubles with each further one.
    pub backoff: Duration,
    /// The longest delay between two attempts (a `Retry-After` may ask for more).
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(3600),
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failure: `Retry-After` when the callee sent it,
    /// else backoff × 2^(attempts − 1), capped, with jitter between half and all of it
    /// (spreading the retries of runs that failed together when an agent went down).
    pub fn delay(&self, attempts: i64, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked;
        }
        let exp = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let capped = self
            .backoff
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max);
        let noise = (uuid::Uuid::now_v7().as_u128() % 501) as f64 / 1000.0;
        capped.mul_f64(0.5 + noise)
    }
}

impl Engine {
    /// An engine calling `registry`'s capabilities. With `hitl_enabled` off (the
    /// `HITL_ENABLED` flag), HITL nodes do not pause: they resolve by their `onTimeout`
    /// policy (`reject` when they have none) and the audit says `hitl_disabled`.
    pub fn new(registry: CapabilityRegistry, hitl_enabled: bool) -> Self {
        Self {
            registry: Arc::new(registry),
            hitl_enabled,
            retry: RetryPolicy::default(),
        }
    }

    /// This engine, retrying transient node failures by `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How transient node failures are retried.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
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
    /// Fails when the agent TLS settings cannot be used (an unreadable `HITL_AGENT_CA_FILE`).
    pub fn for_service(common: &crate::config::CommonArgs) -> Result<Self, String> {
        let mut registry = CapabilityRegistry::with_builtins();
        let settings = webhook::WebhookSettings {
            allowed_urls: common.agent_allowed_urls.clone(),
            timeout: common.agent_timeout.0,
            max_response: common.agent_max_response.0,
            ca_file: common.agent_ca_file.clone(),
            signing_secret: common.agent_signing_secret.clone(),
        };
        let webhook = webhook::AgentWebhook::new(settings).map_err(|e| e.to_string())?;
        registry.register("agent.webhook", Arc::new(webhook));
        Ok(
            Self::new(registry, common.hitl_enabled).with_retry(RetryPolicy {
                retry_for: common.agent_retry_for.0,
                backoff: common.agent_backoff.0,
                backoff_max: common.agent_backoff_max.0,
            }),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_cap_and_retry_after_wins() {
        let policy = RetryPolicy {
            retry_for: Duration::from_secs(3600),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        for (attempts, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = policy.delay(attempts, None);
            let full = Duration::from_millis(full);
            assert!(d >= full / 2 && d <= full, "attempt {attempts}: {d:?}");
        }
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }
}
