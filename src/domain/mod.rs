//! The orchestrator's vocabulary: typed ids, statuses and the run/request state
//! machine. Pure code: no I/O, no async, no SQL, so every other module can depend on it
//! and its rules can be tested in isolation.

pub mod ids;
pub mod refusal;
pub mod state_machine;
pub mod status;
pub mod storable;

pub use ids::{BriefId, CommandId, IdError, RequestId, ResponseId, RunId, ThreadId};
pub use refusal::{ClaimHolder, Operator, Refusal, RefusalContext, Winner};
pub use state_machine::{
    RequestNote, RunModel, Transition, TransitionError, TransitionOutcome, next_status,
};
pub use status::{
    AuditAction, CommandKind, CommandStatus, ParseStatusError, RejectionPolicy, RequestStatus,
    ResponseType, RunStatus, TimeoutAction,
};
