//! The operations every front end offers — create a run, list what waits, show a run or
//! a command, submit a resume or a remove, wait for a command's outcome, follow the event
//! stream — each one function taking parsed domain types and returning a typed result or
//! one [`ServiceError`]. The JSON API, the console and the CLI parse their input (with
//! the shared helpers of [`input`]), call one of these, and render what it returns; they
//! hold no rules and open no transaction.
//!
//! Below: `engine` (plans, advancing runs) and `persistence` (all SQL). Above: the front
//! ends and the job handlers.

pub mod audit;
pub mod claims;
pub mod commands;
pub mod events;
mod inbox;
pub mod input;
mod metrics;
pub mod notifications;
mod pending;
mod runs;
mod sessions;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::Refusal;
use crate::engine::plan::PlanError;
use crate::engine::{Engine, EngineError};
use crate::persistence::PersistenceError;

pub use crate::db::NotReady;
pub use crate::persistence::events::StreamEvent;
pub use crate::persistence::{
    AuditRecord, BriefInput, CommandRecord, CreatedRun, PendingItem, RequestRecord, RequestView,
    ResponseInput, ResponseRecord, RunRecord, RunSnapshot,
};
// What the console reads and stores, beside the above.
pub use crate::persistence::{
    Approvals, Assignees, BriefRecord, ItemKind, ItemOption, NewSession, RequestItem,
    SessionRecord, ToolCall,
};
pub use claims::{ClaimOrder, ClaimState};
pub use commands::{CommandInput, CommandState, RunTarget, SubmitCommand, Submitted};
pub use events::{EventFilter, EventHub, EventSettings, EventStream};
pub use inbox::{InboxEntry, InboxPage};
pub use metrics::{refresh_gauges, refresh_loop};
pub use pending::{PendingCursor, PendingPage, PendingQuery};
pub use runs::CreateRun;

/// The service: the database, the engine and this process's event fan-out.
#[derive(Clone)]
pub struct Service {
    pool: PgPool,
    listen_pool: PgPool,
    engine: Engine,
    events: EventHub,
    shutdown: CancellationToken,
}

impl Service {
    /// A service over `pool` with default event settings and a shutdown token of its own.
    pub fn new(pool: PgPool, engine: Engine) -> Self {
        Self {
            events: EventHub::new(pool.clone(), pool.clone(), EventSettings::default()),
            listen_pool: pool.clone(),
            pool,
            engine,
            shutdown: CancellationToken::new(),
        }
    }

    /// The same service with the live event hub configured by `settings`.
    pub fn with_event_settings(mut self, settings: EventSettings) -> Self {
        self.events = EventHub::new(self.pool.clone(), self.listen_pool.clone(), settings);
        self
    }

    /// The same service LISTENing for new events on a connection of `pool` (straight to
    /// PostgreSQL) instead of its own pool's (which may be a pooler's).
    pub fn with_listen_pool(mut self, pool: PgPool) -> Self {
        self.listen_pool = pool;
        let settings = self.events.settings().clone();
        self.events = EventHub::new(self.pool.clone(), self.listen_pool.clone(), settings);
        self
    }

    /// The same service stopping its waits and streams when `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Cancelled at shutdown: waits for a command's outcome return at once, event
    /// streams end.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The settings of the live event hub.
    pub fn event_settings(&self) -> &EventSettings {
        self.events.settings()
    }

    /// Whether HITL pauses (and so resume and remove) are on.
    pub fn hitl_enabled(&self) -> bool {
        self.engine.hitl_enabled()
    }

    /// Whether the database answers and every migration is applied.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        crate::db::check_ready(&self.pool).await
    }

    /// Reads the state gauges (outstanding requests, runs, queue depth) from the database.
    pub async fn refresh_gauges(&self) -> Result<(), ServiceError> {
        Ok(refresh_gauges(&self.pool).await?)
    }
}

/// What a name that names nothing was meant to name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Run,
    Request,
    Brief,
    Command,
    Delivery,
}

impl Entity {
    /// The error code of "no such …".
    pub const fn not_found_code(self) -> &'static str {
        match self {
            Entity::Run => "run_not_found",
            Entity::Request => "request_not_found",
            Entity::Brief => "brief_not_found",
            Entity::Command => "command_not_found",
            Entity::Delivery => "delivery_not_found",
        }
    }
}

/// Why an operation did not happen. A refused operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field of the input is invalid; `field` is its path (`operator.id`,
    /// `responses[1].optionId`, `Idempotency-Key`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The plan does not validate.
    #[error("{}: {}", .0.field, .0.message)]
    InvalidPlan(PlanError),
    /// The run, request, brief or command named does not exist.
    #[error("{message}")]
    NotFound { entity: Entity, message: String },
    /// The command cannot apply: the request is settled, the run ended, another won.
    #[error("{}", .0.message())]
    Refused(Box<Refusal>),
    /// Someone else moved the run on while this operation ran.
    #[error("{0}")]
    Conflict(String),
    /// The client's thread id is already used by another run.
    #[error("thread id {0} is already used by another run")]
    ThreadTaken(String),
    /// The idempotency key was used before with a different submission.
    #[error("Idempotency-Key: this key was already used for a different request")]
    IdempotencyKeyReused,
    /// The request names who may answer it, and this credential is not among them.
    #[error(
        "request {request_id} is assigned to other operators; this credential may not answer or remove it"
    )]
    NotAssignee { request_id: String },
    /// `force: true` from a credential without the `supervise` scope.
    #[error("force overrides another principal's claim and needs the supervise scope")]
    ForceNeedsSupervise,
    /// The credential is bound to an operator and the body names another.
    #[error("this credential acts as operator {bound}; the body names another operator")]
    OperatorMismatch { bound: String },
    /// HITL is switched off (`HITL_ENABLED=false`): resume and remove are off.
    #[error("HITL is disabled (HITL_ENABLED=false): resume and remove are off")]
    HitlDisabled,
    /// The database could not be reached.
    #[error("the database is unavailable; retry later")]
    Unavailable,
    /// A fault of ours; the cause is for the log, never for the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// 422-style refusal of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// "No such `entity`".
    pub fn not_found(entity: Entity, message: impl Into<String>) -> Self {
        ServiceError::NotFound {
            entity,
            message: message.into(),
        }
    }
}

impl From<PersistenceError> for ServiceError {
    fn from(e: PersistenceError) -> Self {
        if e.is_unavailable() {
            return ServiceError::Unavailable;
        }
        match e {
            PersistenceError::NotFound { entity, id } => {
                let entity = match entity {
                    "request" => Entity::Request,
                    "brief" => Entity::Brief,
                    "command" => Entity::Command,
                    _ => Entity::Run,
                };
                ServiceError::not_found(entity, format!("{} {id} not found", e_name(entity)))
            }
            PersistenceError::ThreadTaken(thread) => ServiceError::ThreadTaken(thread),
            PersistenceError::IdempotencyKeyReused(_) => ServiceError::IdempotencyKeyReused,
            PersistenceError::InvalidResponse(problem) => {
                ServiceError::invalid(problem.field, problem.message)
            }
            e @ (PersistenceError::StaleVersion { .. } | PersistenceError::Transition { .. }) => {
                ServiceError::Conflict(e.to_string())
            }
            e @ PersistenceError::Database(_) => ServiceError::Internal(e.to_string()),
        }
    }
}

fn e_name(entity: Entity) -> &'static str {
    match entity {
        Entity::Run => "run",
        Entity::Request => "request",
        Entity::Brief => "brief",
        Entity::Command => "command",
        Entity::Delivery => "delivery",
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        PersistenceError::from(e).into()
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidPlan(plan) => ServiceError::InvalidPlan(plan),
            EngineError::Persistence(e) => e.into(),
            EngineError::RunNotFound(run) => {
                ServiceError::not_found(Entity::Run, format!("run {run} not found"))
            }
            e @ (EngineError::Transient { .. } | EngineError::Corrupt { .. }) => {
                ServiceError::Internal(e.to_string())
            }
        }
    }
}
