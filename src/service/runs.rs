//! Runs: creating one from a brief and a plan, and reading one, or one of its requests.

use serde_json::{Value, json};

use super::{Entity, RequestView, RunSnapshot, Service, ServiceError};
use crate::domain::{RequestId, RunId, ThreadId};
use crate::persistence::{self, BriefInput, CreatedRun, NewRun, RunRef};

/// A run to create.
#[derive(Clone, Debug)]
pub struct CreateRun {
    pub brief: BriefInput,
    /// A client-chosen thread id (409 when another run has it); generated when absent.
    pub thread_id: Option<ThreadId>,
    /// A JSON object (see `input::execution_context`).
    pub execution_context: Value,
    /// The plan, validated by the engine here.
    pub plan: Value,
    /// The credential creating it (its name), for the audit.
    pub principal: Option<String>,
}

impl Service {
    /// Validates the plan, then creates the brief (when new) and the run with its first
    /// job in one transaction.
    pub async fn create_run(&self, new: CreateRun) -> Result<CreatedRun, ServiceError> {
        let mut tx = self.pool.begin().await?;
        let created = self
            .engine
            .create_run(
                &mut tx,
                NewRun {
                    brief: new.brief,
                    thread_id: new.thread_id,
                    plan: new.plan,
                    execution_context: new.execution_context,
                    runner_metadata: json!({}),
                    principal: new.principal,
                },
            )
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// The run with its requests, answers and audit log (404 when there is none).
    pub async fn run(&self, run_id: &RunId) -> Result<RunSnapshot, ServiceError> {
        persistence::load_snapshot(&self.pool, run_id)
            .await?
            .ok_or_else(|| ServiceError::not_found(Entity::Run, "no such run"))
    }

    /// One request with its answers and its run's ids and status (404 when there is
    /// none).
    pub async fn request(&self, request_id: &RequestId) -> Result<RequestView, ServiceError> {
        persistence::load_request(&self.pool, request_id)
            .await?
            .ok_or_else(|| ServiceError::not_found(Entity::Request, "no such request"))
    }

    /// The run of `thread`, if any (a thread has at most one).
    pub async fn run_of_thread(
        &self,
        thread: &ThreadId,
    ) -> Result<Option<RunSnapshot>, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let found = persistence::find_run(&mut *conn, &RunRef::Thread(thread.clone())).await?;
        conn.close().await?;
        match found {
            None => Ok(None),
            Some(run) => Ok(persistence::load_snapshot(&self.pool, &run.run_id).await?),
        }
    }
}
