//! Advancing one run: execute nodes from the cursor, write a checkpoint after each, and
//! stop at a pause or the end of the run.
//!
//! The cursor, the request a node waits on, each node's attempt counter and agents' notes
//! live in the run's `runner_metadata`:
//! `{"cursor": "<node id>", "awaitingRequestId": "hitl_req_…", "nodeAttempts": {"<node>": 2},
//!   "agentNotes": {"<node>": …}}` (other keys are kept as they are). A capability's
//! runner state is stored beside it as the exact text its agent sent
//! (`persistence::runner_state`), read only before a node that calls out.
//!
//! A node's attempt counter (1 when absent) makes the attempt key an agent can
//! deduplicate by. It moves on when an attempt ends with an outcome the engine writes (the
//! node completed or interrupted: calling it again is a new attempt) and when an operator
//! retries the run at it; nothing else writes it, so every delivery of one attempt — a
//! retried call, a worker killed mid-call, a sweep's repair — carries the same key.
//! A node's outcome and the checkpoint that moves the cursor past it are one transaction,
//! so a crash between nodes repeats at most the node that was running.
//!
//! Two ways to advance, one loop:
//! - [`Engine::advance`], the advancement job: every node's checkpoint commits on its own,
//!   so a node that calls out (an agent) never runs inside a transaction;
//! - [`Engine::advance_written`], inline: every step joins the caller's transition write
//!   (`persistence::TransitionWrite`: the resume, remove, retry or expiry being applied,
//!   under the run's lock), and the loop stops before the first node whose capability is
//!   not local, leaving it to a job. A resume that leads through local nodes to the next
//!   pause or the end is then one statement and one commit.

use std::collections::HashMap;

use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::capability::{CapabilityCall, CapabilityOutcome, Interrupt, RunnerStateUpdate};
use super::plan::{HitlNode, NodeKind, Plan, TaskNode};
use super::{Engine, EngineError};
use crate::domain::{
    AuditAction, RejectionPolicy, RequestId, RequestStatus, ResponseId, ResponseType, RunId,
    RunStatus, TimeoutAction,
};
use crate::persistence::{
    self, AnsweredRequest, Checkpoint, Finish, NewRequest, NodeRunnerState, PersistenceError,
    ResponseRecord, RunState, StepState, TransitionWrite,
};
use tracing::Instrument;

/// What one call to [`Engine::advance`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdvanceOutcome {
    /// The run paused at a HITL request.
    Paused { request_id: RequestId, version: i64 },
    /// The run ended.
    Finished { status: RunStatus, version: i64 },
    /// Nothing to do: the run waits on an operator or had already ended.
    Idle { status: RunStatus },
    /// Someone else moved the run on first (a racing advancement, an operator's remove);
    /// this call stopped without writing anything more.
    Superseded,
    /// Inline only: the next node calls out (its capability is not local), so the run
    /// stopped before it, still `running`; an advancement job must continue it.
    Deferred { version: i64 },
}

/// Where an advancement's writes go: every step joins a `TransitionWrite`.
enum Store<'a> {
    /// The advancement job's own: the steps since the run was read (without its lock)
    /// gather in `write`, fenced on the run as read, and are made in one transaction
    /// before a node that calls out (no call runs inside a transaction) and at the end,
    /// where the job's completion, `job`, joins them.
    Pool {
        pool: &'a PgPool,
        write: Box<TransitionWrite>,
        job: Option<persistence::JobClaim<'a>>,
        /// Whether the last write completed the job (fenced on its claim).
        job_completed: bool,
        /// Each node's runner state, as read with the run and kept by the steps since.
        runner_states: HashMap<String, String>,
    },
    /// The caller's transition, written in one statement with it: checkpoints, a raised
    /// request and the run's end join it.
    Batch(&'a mut TransitionWrite),
}

impl Store<'_> {
    /// The runner state of `node_id` the advancement job knows (none in a batch: only
    /// the job calls out).
    fn runner_state(&self, node_id: &str) -> Option<String> {
        match self {
            Store::Pool { runner_states, .. } => runner_states.get(node_id).cloned(),
            Store::Batch(..) => None,
        }
    }

    /// Remembers a runner state a step keeps, for a later call of the same node.
    fn keep_runner_state(&mut self, kept: Option<&NodeRunnerState>) {
        if let (Store::Pool { runner_states, .. }, Some(kept)) = (self, kept) {
            match &kept.state {
                Some(state) => runner_states.insert(kept.node_id.clone(), state.clone()),
                None => runner_states.remove(&kept.node_id),
            };
        }
    }

    fn write(&mut self) -> &mut TransitionWrite {
        match self {
            Store::Pool { write, .. } => write,
            Store::Batch(write) => write,
        }
    }

    /// The advancement job's steps so far, made in one transaction (nothing when there
    /// are none), before a node that calls out; a new write then goes on from them.
    async fn flush(&mut self) -> Result<(), PersistenceError> {
        let Store::Pool { pool, write, .. } = self else {
            return Ok(());
        };
        if write.is_empty() {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        write.write(&mut tx).await?;
        tx.commit().await?;
        if let Some(next) = write.next() {
            **write = next;
        }
        Ok(())
    }

    /// Raises `request` in the write, its deadline's and follow-ups' jobs with it.
    fn raise(
        &mut self,
        version: i64,
        request: &NewRequest,
        state: &StepState,
    ) -> Result<(RequestId, i64), PersistenceError> {
        persistence::raise_into(self.write(), version, request, state)
    }

    /// The last write of an advancement (the run paused or ended) in the job's store, in
    /// one transaction with the job's completion; a lost claim rolls it back. Nothing for
    /// the caller's store, whose caller makes the write.
    async fn write_last(&mut self) -> Result<(), PersistenceError> {
        let Store::Pool {
            pool,
            write,
            job,
            job_completed,
            ..
        } = self
        else {
            return Ok(());
        };
        let mut tx = pool.begin().await?;
        if let Some(j) = job {
            write.complete_job(j.job_id, j.worker_id);
        }
        let written = write.write(&mut tx).await?;
        if job.is_some() && !written.job_completed {
            tx.rollback().await?;
            return Ok(());
        }
        tx.commit().await?;
        *job_completed = job.is_some();
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnerMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    awaiting_request_id: Option<RequestId>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    node_attempts: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    agent_notes: Map<String, Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// How an operator's (or a policy's) answer reads for the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Approved,
    Rejected,
    Option(String),
    Answered,
    Cancel,
}

impl Decision {
    fn name(&self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::Option(_) => "option",
            Decision::Answered => "answered",
            Decision::Cancel => "cancel",
        }
    }
}

/// What the current node leads to.
enum Step {
    /// Move on to node `to` (`None`: the run is complete).
    Next {
        to: Option<usize>,
        action: AuditAction,
        details: Value,
    },
    /// Pause on a request.
    Pause(Box<NewRequest>),
    /// End the run.
    End {
        status: RunStatus,
        reason: String,
        /// Audit `hitl_disabled` first (a disabled HITL node decided this).
        disabled: Option<Value>,
    },
}

/// Where the loop is: the run as loaded, the plan, the current node and the version the
/// next write must find.
struct At<'a> {
    snap: &'a RunState,
    plan: &'a Plan,
    index: usize,
    version: i64,
}

impl At<'_> {
    fn node_id(&self) -> &str {
        &self.plan.nodes[self.index].id
    }

    /// The next node in plan order, if there is one.
    fn in_order(&self) -> Option<usize> {
        (self.index + 1 < self.plan.nodes.len()).then_some(self.index + 1)
    }
}

/// What the loop carries from node to node: the runner metadata and the execution
/// context, written with each checkpoint, and the runner state the current node's call
/// left (written with its outcome).
struct Working {
    meta: RunnerMeta,
    ctx: Map<String, Value>,
    runner_state: Option<NodeRunnerState>,
}

impl RunnerMeta {
    /// The current attempt at `node` (1 until it first completes or interrupts).
    fn attempt(&self, node: &str) -> u64 {
        self.node_attempts.get(node).copied().unwrap_or(1)
    }

    /// The node's attempt ended with an outcome: calling it again is a new attempt.
    fn next_attempt(&mut self, node: &str) {
        let next = self.attempt(node) + 1;
        self.node_attempts.insert(node.to_owned(), next);
    }
}

/// Maps a fencing refusal to "stop, someone else moved on"; other errors propagate.
fn fenced<T>(result: Result<T, PersistenceError>) -> Result<Option<T>, EngineError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(PersistenceError::StaleVersion { .. } | PersistenceError::Transition { .. }) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl Engine {
    /// Advances `run_id` as far as it can go now: one read of the run, then its steps in
    /// one write before each node that calls out and one at the end. See the module docs
    /// of `engine`.
    pub async fn advance(
        &self,
        pool: &PgPool,
        run_id: &RunId,
    ) -> Result<AdvanceOutcome, EngineError> {
        Ok(self.advance_job(pool, run_id, None).await?.0)
    }

    /// [`Engine::advance`] for the job `job`, whose completion (fenced on its claim)
    /// joins the last write; also returns whether it did (`false`: nothing was written
    /// last, or the claim was lost and the last write rolled back).
    pub async fn advance_job(
        &self,
        pool: &PgPool,
        run_id: &RunId,
        job: Option<persistence::JobClaim<'_>>,
    ) -> Result<(AdvanceOutcome, bool), EngineError> {
        let span = tracing::info_span!("advance", run.id = %run_id, advance.inline = false);
        async {
            let read = persistence::read_for_advance(pool, run_id)
                .await?
                .ok_or_else(|| EngineError::RunNotFound(run_id.clone()))?;
            let state = read.state;
            let mut store = Store::Pool {
                pool,
                write: Box::new(read.write),
                job,
                job_completed: false,
                runner_states: read.runner_states,
            };
            let outcome = self.advance_state(&mut store, state).await?;
            let completed = matches!(
                store,
                Store::Pool {
                    job_completed: true,
                    ..
                }
            );
            Ok((outcome, completed))
        }
        .instrument(span)
        .await
    }

    /// Advances the run that `write` (a command or an expiry applied in memory) moves,
    /// from `state` (the run as the write leaves it), through local nodes only, to the
    /// next pause, the end, or [`AdvanceOutcome::Deferred`] before a node that calls out:
    /// checkpoints, a raised request and the run's end join `write`, so a resume that
    /// leads to the run's end or its next pause is one statement (a deadline's and
    /// follow-ups' jobs with it). Nothing is written here; the caller makes the write. What
    /// `write` holds before a refusal (a broken plan) is a consistent checkpoint; after a
    /// failed write the caller's transaction is lost and must be retried (see
    /// `jobs::continue_written`).
    pub async fn advance_written(
        &self,
        write: &mut TransitionWrite,
        state: RunState,
    ) -> Result<AdvanceOutcome, EngineError> {
        let span =
            tracing::info_span!("advance", run.id = %state.run.run_id, advance.inline = true);
        self.advance_state(&mut Store::Batch(write), state)
            .instrument(span)
            .await
    }

    /// Advances the run `snap` describes (see [`Engine::advance`]).
    async fn advance_state(
        &self,
        store: &mut Store<'_>,
        snap: RunState,
    ) -> Result<AdvanceOutcome, EngineError> {
        let run_id = &snap.run.run_id.clone();
        let inline = matches!(store, Store::Batch(..));
        let status = snap.run.status;
        if status.is_terminal() || status == RunStatus::AwaitingHitl {
            return Ok(AdvanceOutcome::Idle { status });
        }
        let corrupt = |message: String| EngineError::Corrupt {
            run_id: run_id.clone(),
            message,
        };
        // Only `nodes` is the plan proper; other keys are artifacts kept beside it.
        let plan = Plan::parse(&json!({ "nodes": snap.run.plan["nodes"] }), &|n| {
            self.registry.contains(n)
        })
        .map_err(|e| corrupt(format!("stored plan: {e}")))?;
        let meta: RunnerMeta = serde_json::from_value(snap.run.runner_metadata.clone())
            .map_err(|e| corrupt(format!("runner metadata: {e}")))?;
        let ctx = snap
            .run
            .execution_context
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut work = Working {
            meta,
            ctx,
            runner_state: None,
        };
        let mut version = snap.run.version;

        if status == RunStatus::Queued {
            let Some(v) = fenced(store.write().start(version))? else {
                return Ok(AdvanceOutcome::Superseded);
            };
            version = v;
        }

        let mut index = match &work.meta.cursor {
            None => 0,
            Some(id) => plan
                .position(id)
                .ok_or_else(|| corrupt(format!("cursor names no node: {id}")))?,
        };
        loop {
            let node = &plan.nodes[index];
            if inline
                && let NodeKind::Task(t) = &node.kind
                && !self.is_local(t)
            {
                return Ok(AdvanceOutcome::Deferred { version });
            }
            let at = At {
                snap: &snap,
                plan: &plan,
                index,
                version,
            };
            let step = match &node.kind {
                NodeKind::Hitl(h) => self.hitl_step(&at, h, &mut work)?,
                NodeKind::Task(t) => {
                    // Only a node that calls out is an agent's; the inline loop never gets
                    // here. The steps before it are made first: no call runs inside a
                    // transaction, and its outcome is written on them.
                    let remote = matches!(store, Store::Pool { .. }) && !self.is_local(t);
                    let state = if remote {
                        if fenced(store.flush().await)?.is_none() {
                            return Ok(AdvanceOutcome::Superseded);
                        }
                        store.runner_state(&node.id)
                    } else {
                        None
                    };
                    let step = self.task_step(&at, t, &mut work, state.as_deref()).await?;
                    store.keep_runner_state(work.runner_state.as_ref());
                    step
                }
            };
            match step {
                Step::Next {
                    to,
                    action,
                    details,
                } => {
                    work.meta.cursor = to.map(|i| plan.nodes[i].id.clone());
                    let state = step_state(run_id, &work)?;
                    let Some(i) = to else {
                        let finish = Finish {
                            status: RunStatus::Completed,
                            reason: None,
                            node_id: Some(node.id.clone()),
                            state: Some(state),
                        };
                        let finished = fenced(store.write().finish(version, &finish))?;
                        let Some(v) = finished else {
                            return Ok(AdvanceOutcome::Superseded);
                        };
                        if fenced(store.write_last().await)?.is_none() {
                            return Ok(AdvanceOutcome::Superseded);
                        }
                        return Ok(AdvanceOutcome::Finished {
                            status: RunStatus::Completed,
                            version: v,
                        });
                    };
                    let step = Checkpoint {
                        node_id: &node.id,
                        state: &state,
                        action,
                        details,
                    };
                    let Some(v) = fenced(store.write().checkpoint(version, step))? else {
                        return Ok(AdvanceOutcome::Superseded);
                    };
                    version = v;
                    index = i;
                    work.runner_state = None;
                }
                Step::Pause(request) => {
                    work.meta.cursor = Some(node.id.clone());
                    work.meta.awaiting_request_id = Some(request.request_id.clone());
                    let state = step_state(run_id, &work)?;
                    let raised = fenced(store.raise(version, &request, &state))?;
                    let Some((request_id, v)) = raised else {
                        return Ok(AdvanceOutcome::Superseded);
                    };
                    if fenced(store.write_last().await)?.is_none() {
                        return Ok(AdvanceOutcome::Superseded);
                    }
                    return Ok(AdvanceOutcome::Paused {
                        request_id,
                        version: v,
                    });
                }
                Step::End {
                    status,
                    reason,
                    disabled,
                } => {
                    // A retry enters the node that ended the run again.
                    work.meta.cursor = Some(node.id.clone());
                    let state = step_state(run_id, &work)?;
                    let finish = Finish {
                        status,
                        reason: Some(reason),
                        node_id: Some(node.id.clone()),
                        state: Some(state.clone()),
                    };
                    let ended =
                        end_in(store.write(), version, disabled, &node.id, &state, &finish)?;
                    let Some(v) = ended else {
                        return Ok(AdvanceOutcome::Superseded);
                    };
                    if fenced(store.write_last().await)?.is_none() {
                        return Ok(AdvanceOutcome::Superseded);
                    }
                    return Ok(AdvanceOutcome::Finished { status, version: v });
                }
            }
        }
    }

    fn hitl_step(
        &self,
        at: &At<'_>,
        h: &HitlNode,
        work: &mut Working,
    ) -> Result<Step, EngineError> {
        let node_id = at.node_id().to_owned();
        if let Some(request_id) = work.meta.awaiting_request_id.take() {
            let request = awaited(at.snap, &request_id)?;
            let decision = match request.status {
                RequestStatus::Resolved => decide(request),
                RequestStatus::Expired => match request.on_timeout {
                    Some(TimeoutAction::Approve) => Decision::Approved,
                    _ => Decision::Rejected,
                },
                other => {
                    return Err(EngineError::Corrupt {
                        run_id: at.snap.run.run_id.clone(),
                        message: format!("running, but request {request_id} is {other}"),
                    });
                }
            };
            work.ctx.insert(node_id, answer_record(request, &decision));
            let details = json!({ "requestId": request_id, "decision": decision.name() });
            return Ok(follow(at, h, decision, request, details));
        }
        if !self.hitl_enabled {
            let action = h.on_timeout.unwrap_or(TimeoutAction::Reject);
            let decision = match action {
                TimeoutAction::Approve => Decision::Approved,
                TimeoutAction::Reject => Decision::Rejected,
                TimeoutAction::Cancel => Decision::Cancel,
            };
            work.ctx.insert(
                node_id,
                json!({ "requestId": null, "status": "hitl_disabled", "decision": decision.name(),
                        "optionId": null, "responses": [] }),
            );
            let details = json!({ "onTimeout": action, "decision": decision.name() });
            let step = follow_policy(at, h, decision, "HITL is disabled".into());
            return Ok(match step {
                Step::Next { to, .. } => Step::Next {
                    to,
                    action: AuditAction::HitlDisabled,
                    details,
                },
                Step::End { status, reason, .. } => Step::End {
                    status,
                    reason,
                    disabled: Some(details),
                },
                pause @ Step::Pause(_) => pause,
            });
        }
        let mut ask = Interrupt::single(
            &node_id,
            h.prompt.clone(),
            h.response_types.clone(),
            h.options.clone(),
        );
        ask.contract = h.contract.clone();
        ask.deadline = h
            .timeout_seconds
            .map(|s| (s, h.on_timeout.unwrap_or(TimeoutAction::Reject)));
        ask.assignees = h.assignees.clone();
        ask.approvals = h.approvals;
        ask.follow_up = h.follow_up.clone();
        Ok(Step::Pause(Box::new(interrupt_request(&node_id, ask))))
    }

    fn is_local(&self, t: &TaskNode) -> bool {
        self.registry
            .get(&t.capability)
            .is_some_and(|c| c.is_local())
    }

    async fn task_step(
        &self,
        at: &At<'_>,
        t: &TaskNode,
        work: &mut Working,
        runner_state: Option<&str>,
    ) -> Result<Step, EngineError> {
        let snap = at.snap;
        let node_id = at.node_id();
        let capability = self
            .registry
            .get(&t.capability)
            .ok_or_else(|| EngineError::Corrupt {
                run_id: snap.run.run_id.clone(),
                message: format!("unknown capability {}", t.capability),
            })?;
        let resumed = match work.meta.awaiting_request_id.take() {
            Some(id) => Some(awaited(snap, &id)?),
            None => None,
        };
        let timed_out = resumed
            .filter(|r| r.status == RequestStatus::Expired)
            .map(timeout_answers);
        let context = Value::Object(work.ctx.clone());
        let attempt_key = format!(
            "{}:{node_id}:{}",
            snap.run.run_id,
            work.meta.attempt(node_id)
        );
        let call = CapabilityCall {
            run_id: &snap.run.run_id,
            thread_id: &snap.run.thread_id,
            node_id,
            input: &t.input,
            config: &t.config,
            execution_context: &context,
            runner_state,
            responses: timed_out
                .as_deref()
                .or(resumed.map(|r| r.responses.as_slice())),
            attempt_key: &attempt_key,
        };
        let outcome = capability
            .call(call)
            .await
            .map_err(|e| EngineError::Transient {
                node_id: node_id.to_owned(),
                message: e.message,
                retry_after: e.retry_after,
                version: at.version,
            })?;
        let mut keep_state = |update: RunnerStateUpdate| {
            let state = match update {
                RunnerStateUpdate::Keep => return,
                RunnerStateUpdate::Clear => None,
                RunnerStateUpdate::Set(text) => Some(text),
            };
            work.runner_state = Some(NodeRunnerState {
                node_id: node_id.to_owned(),
                state,
            });
        };
        Ok(match outcome {
            CapabilityOutcome::Completed {
                merge,
                runner_state,
                notes,
            } => {
                keep_state(runner_state);
                work.ctx.extend(merge);
                work.meta.next_attempt(node_id);
                if let Some(notes) = notes {
                    work.meta.agent_notes.insert(node_id.to_owned(), notes);
                }
                Step::Next {
                    to: at.in_order(),
                    action: AuditAction::NodeCompleted,
                    details: json!({ "capability": t.capability }),
                }
            }
            CapabilityOutcome::Failed { message } => Step::End {
                status: RunStatus::Failed,
                reason: message,
                disabled: None,
            },
            CapabilityOutcome::Interrupted {
                request,
                runner_state,
            } => {
                keep_state(runner_state);
                work.meta.next_attempt(node_id);
                Step::Pause(Box::new(interrupt_request(node_id, request)))
            }
        })
    }
}

/// The steps that end a run at `version`, added to `write`: a disabled HITL node's step
/// first when `disabled` says so, then `finish`. The new version, or `None` when the run
/// is no longer at `version` (fencing).
fn end_in(
    write: &mut TransitionWrite,
    version: i64,
    disabled: Option<Value>,
    node_id: &str,
    state: &StepState,
    finish: &Finish,
) -> Result<Option<i64>, EngineError> {
    let mut expected = version;
    if let Some(details) = disabled {
        let step = Checkpoint {
            node_id,
            state,
            action: AuditAction::HitlDisabled,
            details,
        };
        let Some(v) = fenced(write.checkpoint(expected, step))? else {
            return Ok(None);
        };
        expected = v;
    }
    fenced(write.finish(expected, finish))
}

fn awaited<'s>(snap: &'s RunState, id: &RequestId) -> Result<&'s AnsweredRequest, EngineError> {
    snap.requests
        .iter()
        .find(|r| &r.request_id == id)
        .ok_or_else(|| EngineError::Corrupt {
            run_id: snap.run.run_id.clone(),
            message: format!("awaited request {id} does not exist"),
        })
}

fn step_state(run_id: &RunId, work: &Working) -> Result<StepState, EngineError> {
    // Serialising maps and strings cannot fail; should it, no retry would fix it.
    let runner_metadata = serde_json::to_value(&work.meta).map_err(|e| EngineError::Corrupt {
        run_id: run_id.clone(),
        message: format!("runner metadata cannot be written: {e}"),
    })?;
    Ok(StepState {
        execution_context: Value::Object(work.ctx.clone()),
        runner_metadata,
        plan: None,
        runner_state: work.runner_state.clone(),
    })
}

/// A rejection (a `rejection` answer, or `approved: false`) wins over everything; else an
/// option answer; else an approval, else a freeform-only answer.
fn decide(request: &AnsweredRequest) -> Decision {
    let rs = &request.responses;
    if rs
        .iter()
        .any(|r| r.response_type == ResponseType::Rejection || r.approved == Some(false))
    {
        return Decision::Rejected;
    }
    if let Some(option) = rs.iter().find_map(|r| {
        r.option_id
            .clone()
            .filter(|_| r.response_type == ResponseType::Option)
    }) {
        return Decision::Option(option);
    }
    if rs.iter().any(|r| r.response_type == ResponseType::Approval) {
        return Decision::Approved;
    }
    Decision::Answered
}

/// What later nodes see of a HITL node's answer, under the node's id.
fn answer_record(request: &AnsweredRequest, decision: &Decision) -> Value {
    let option = match decision {
        Decision::Option(id) => Some(id.clone()),
        _ => None,
    };
    let responses: Vec<Value> = request
        .responses
        .iter()
        .map(|r| {
            json!({ "responseType": r.response_type, "approved": r.approved, "optionId": r.option_id,
                    "freeformText": r.freeform_text, "responderId": r.responder_id,
                    "responderDisplayName": r.responder_display_name })
        })
        .collect();
    json!({ "requestId": request.request_id, "status": request.status, "decision": decision.name(),
            "optionId": option, "responses": responses })
}

/// Where an answered request leads; the audit event of moving on carries `details`.
fn follow(
    at: &At<'_>,
    h: &HitlNode,
    decision: Decision,
    request: &AnsweredRequest,
    details: Value,
) -> Step {
    let why = request
        .responses
        .iter()
        .filter_map(|r| r.freeform_text.as_deref())
        .collect::<Vec<_>>()
        .join("; ");
    let who = if request.status == RequestStatus::Expired {
        "its deadline passed".to_owned()
    } else if why.is_empty() {
        "rejected by the operator".to_owned()
    } else {
        format!("rejected by the operator: {why}")
    };
    match follow_policy(at, h, decision, who) {
        Step::Next { to, .. } => Step::Next {
            to,
            action: AuditAction::NodeCompleted,
            details,
        },
        other => other,
    }
}

/// Applies the node's policy to a decision: `onRejection` for a rejection, `next` for an
/// option, else the next node in order.
fn follow_policy(at: &At<'_>, h: &HitlNode, decision: Decision, why: String) -> Step {
    let node_id = at.node_id();
    let in_order = at.in_order();
    let next = |to| Step::Next {
        to,
        action: AuditAction::NodeCompleted,
        details: json!({}),
    };
    match decision {
        Decision::Rejected => match h.on_rejection {
            RejectionPolicy::Fail => Step::End {
                status: RunStatus::Failed,
                reason: format!("node {node_id}: {why}"),
                disabled: None,
            },
            RejectionPolicy::Cancel => Step::End {
                status: RunStatus::Cancelled,
                reason: format!("node {node_id}: {why}"),
                disabled: None,
            },
            RejectionPolicy::Continue => next(in_order),
        },
        Decision::Cancel => Step::End {
            status: RunStatus::Cancelled,
            reason: format!("node {node_id}: {why}"),
            disabled: None,
        },
        Decision::Option(option) => {
            match h
                .next
                .get(&option)
                .and_then(|target| at.plan.position(target))
            {
                Some(target) => next(Some(target)),
                None => next(in_order),
            }
        }
        Decision::Approved | Decision::Answered => next(in_order),
    }
}

fn interrupt_request(node_id: &str, i: Interrupt) -> NewRequest {
    // The request-level answer types and options are the one item's; with several items
    // each has its own, and these stay empty.
    let (response_types, options) = match i.items.as_slice() {
        [only] => (
            only.response_types.clone(),
            Value::Array(
                only.options
                    .iter()
                    .map(|o| json!({ "id": o.id, "label": o.label }))
                    .collect(),
            ),
        ),
        _ => (Vec::new(), json!([])),
    };
    NewRequest {
        request_id: RequestId::new(),
        node_id: node_id.to_owned(),
        operator_prompt: i.prompt,
        response_types,
        options,
        items: i.items,
        assignees: i.assignees,
        approvals_required: i.approvals,
        follow_up: i.follow_up,
        contract_summary: json!({ "facets": i.contract.facets,
                                  "capabilityContract": i.contract.capability_contract }),
        deadline: i.deadline.map(|(secs, action)| {
            let secs = i64::try_from(secs).unwrap_or(i64::MAX / 1000);
            (Utc::now() + Duration::seconds(secs), action)
        }),
    }
}

/// What an agent is told when its request's deadline passed unanswered: every item
/// approved or rejected by the request's `onTimeout` (a `cancel` ended the run instead).
fn timeout_answers(request: &AnsweredRequest) -> Vec<ResponseRecord> {
    let approve = request.on_timeout == Some(TimeoutAction::Approve);
    let at = request.resolved_at.unwrap_or_else(Utc::now);
    request
        .items
        .iter()
        .map(|item| ResponseRecord {
            response_id: ResponseId::new(),
            request_id: request.request_id.clone(),
            item_id: Some(item.item_id.clone()),
            response_type: if approve {
                ResponseType::Approval
            } else {
                ResponseType::Rejection
            },
            edited_arguments: None,
            approved: Some(approve),
            option_id: None,
            freeform_text: (!approve)
                .then(|| "the request's deadline passed without an answer".to_owned()),
            responder_id: None,
            responder_display_name: None,
            command_id: None,
            created_at: at,
        })
        .collect()
}
