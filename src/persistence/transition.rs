//! One transition's writes kept in memory and made in one statement.
//!
//! A resume that leads through local nodes to the run's end is several steps in the
//! state machine — the resume, a checkpoint per node, the end — each with its audit
//! event. A [`TransitionWrite`] checks each step against the state machine as it is
//! added (on the run as the steps before it leave it, under the run's lock taken by the
//! read that started the transition), chains and signs each event in Rust, and then
//! [`TransitionWrite::write`] makes them all in one data-modifying statement: the run's
//! final state, the answers, the request's resolution, the command's success, the job's
//! completion fenced on its claim, the events and the notification deliveries they
//! lead to, with their jobs. Every list is bound as an array and unnested, so the
//! statement's text is the same whatever the number of answers or steps.
//!
//! The run's update is fenced on the run as locked and on the audit chain's head as
//! read: the rest of the statement hangs off that update's row, so a fence that fails
//! writes nothing.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::audit::{ChainFields, event_hash, signature_of};
use super::{AuditEntry, Checkpoint, Finish, LockedRun, NodeRunnerState, PersistenceError};
use crate::domain::{AuditAction, CommandId, RequestId, RunId, RunStatus, Transition};

/// How a transition settles the run's pending request: a resume resolves it with its
/// answers, a remove denies it, a deadline expires it; with the command (if any) and the
/// job that end with it.
pub(super) struct Settle {
    /// The request settled (a remove of a run waiting on none settles none, nor does a
    /// retry, which waits on no request; `request_status` is then unused).
    pub request_id: Option<RequestId>,
    /// `resolved`, `denied` or `expired`.
    pub request_status: crate::domain::RequestStatus,
    /// The command applied (none for an expiry).
    pub command_id: Option<CommandId>,
    pub resolved_by: String,
    /// A resume's answers (none for a remove or an expiry).
    pub answers: super::commands::Answers,
    /// A remove's reason: the request is denied with it, and the run ends with it.
    pub denial_reason: Option<String>,
    /// The command's outcome.
    pub outcome: Option<Value>,
    /// The job applying it: (job id, worker id).
    pub job: Option<(String, String)>,
    /// When the command ended (to the microsecond, as stored).
    pub finished_at: DateTime<Utc>,
}

/// A request raised by the transition, as its row is inserted.
struct Raise {
    request_id: RequestId,
    node_id: String,
    operator_prompt: String,
    response_types: Vec<&'static str>,
    options: Value,
    contract_summary: Value,
    expires_at: Option<DateTime<Utc>>,
    on_timeout: Option<crate::domain::TimeoutAction>,
    items: Value,
    assignees: Option<Value>,
    approvals_required: Option<i32>,
    follow_up: Option<Value>,
}

/// One event, hashed once the chain head before it is known.
struct Event {
    fields: ChainFields,
    /// The name notifications know it by.
    name: &'static str,
    /// The node it names when it is about no request (what a channel's node filter sees).
    node_id: Option<String>,
    /// The channels it names (an escalation step's `notify`), as a JSON array.
    named: Value,
    /// A deadline notice's period: the channels whose notice it is.
    notice_seconds: Option<i32>,
}

/// The writes of one transition of one run, not yet made (see the module docs).
pub struct TransitionWrite {
    /// The run as locked: the write is fenced on it.
    fence: LockedRun,
    /// The run as the steps so far leave it.
    now: LockedRun,
    /// The hash of the run's latest stored event, as read under the run's lock.
    head: Option<Vec<u8>>,
    settle: Option<Settle>,
    raise: Option<Raise>,
    events: Vec<Event>,
    execution_context: Option<Value>,
    runner_metadata: Option<Value>,
    plan: Option<Value>,
    status_reason: Option<String>,
    /// Whether the run's `status_reason` is cleared (a retry) before `status_reason`.
    clear_reason: bool,
    runner_states: Vec<NodeRunnerState>,
    /// The jobs to push with the write (the advancement that takes the run on from
    /// here, a raised request's expiry and follow-ups, the next reminder), each with
    /// when it is due (`None`: now).
    jobs: Vec<(super::queue::JobRow, Option<DateTime<Utc>>)>,
    /// The pending request's claim as the transition leaves it: `Some(None)` cleared.
    claim: Option<Option<super::Claim>>,
    /// The pending request's follow-up bookkeeping and assignees, when they change.
    follow_up: Option<Value>,
    assignees: Option<Value>,
    /// An approval of the pending request counted by the command.
    approval: Option<ApprovalRow>,
    /// A job completed with the write, fenced on its claim, when no command's settle
    /// names it (the advancement job's own): (job id, worker id).
    job_claim: Option<(String, String)>,
    /// Fenced on a run read without its lock (the advancement job's read): a fence that
    /// fails means someone else moved the run on (`StaleVersion`), not a broken lock.
    optimistic: bool,
    /// The hash of the last event written, once written.
    head_after: Option<Vec<u8>>,
    /// Set once written: (the run's version, whether the job was completed).
    written: Option<Written>,
}

/// An approval counted towards the pending request's number, as its row is inserted.
pub(super) struct ApprovalRow {
    pub approver: String,
    pub principal: Option<String>,
    pub operator: Value,
    pub at: DateTime<Utc>,
}

/// What [`TransitionWrite::write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The run's version after the transition.
    pub version: i64,
    /// Whether the job it was given was completed (fenced on its claim).
    pub job_completed: bool,
}

impl TransitionWrite {
    /// A transition of the run `fence` describes (locked by the caller), whose chain
    /// head is `head`.
    pub(super) fn new(fence: LockedRun, head: Option<Vec<u8>>) -> Self {
        TransitionWrite {
            now: fence.clone(),
            fence,
            head,
            settle: None,
            raise: None,
            events: Vec::new(),
            execution_context: None,
            runner_metadata: None,
            plan: None,
            status_reason: None,
            clear_reason: false,
            runner_states: Vec::new(),
            jobs: Vec::new(),
            claim: None,
            follow_up: None,
            assignees: None,
            approval: None,
            job_claim: None,
            optimistic: false,
            head_after: None,
            written: None,
        }
    }

    /// A transition of the run `fence` describes as read without its lock (no statement
    /// waits for it): the write's fence is the only check that nobody moved the run
    /// since, and when it fails the write returns `StaleVersion`.
    pub(super) fn optimistic(fence: LockedRun, head: Option<Vec<u8>>) -> Self {
        TransitionWrite {
            optimistic: true,
            ..Self::new(fence, head)
        }
    }

    /// Once written: a new write, fenced on the run as this one left it and chained on its
    /// last event (the advancement job goes on after a node that called out).
    pub fn next(&self) -> Option<Self> {
        self.written?;
        Some(TransitionWrite {
            optimistic: self.optimistic,
            ..Self::new(self.now.clone(), self.head_after.clone())
        })
    }

    /// Whether no step has been added.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Completes the job `job_id` held by `worker_id` with the write (fenced on that
    /// claim: [`Written::job_completed`] says whether it held).
    pub fn complete_job(&mut self, job_id: &str, worker_id: &str) {
        self.job_claim = Some((job_id.to_owned(), worker_id.to_owned()));
    }

    /// The run's id.
    pub fn run_id(&self) -> &RunId {
        &self.now.run_id
    }

    /// The run as the steps so far leave it.
    pub(super) fn run(&self) -> &LockedRun {
        &self.now
    }

    /// A step to `status` recorded by `entry` (its version is set here).
    fn push(&mut self, status: RunStatus, entry: AuditEntry<'_>, created_at: DateTime<Utc>) {
        debug_assert!(self.written.is_none(), "a step added after the write");
        let version = self.now.version + 1;
        let entry = AuditEntry {
            run_version: version,
            ..entry
        };
        let action = entry.action.unwrap_or(AuditAction::NodeCompleted);
        // The previous hash is set when the chain is hashed, in `write`.
        let fields = super::audit::chain_fields(&self.now.run_id, &entry, None, created_at);
        let facets = super::notifications::EventFacets::of(&fields.details);
        let (node_id, named, notice_seconds) = (
            facets.node_id.map(str::to_owned),
            json!(facets.named),
            facets.notice_seconds,
        );
        self.events.push(Event {
            fields,
            name: action.event_name(),
            node_id,
            named,
            notice_seconds,
        });
        self.now.status = status;
        self.now.version = version;
    }

    /// A resume or a remove: the run moves to `status` with its pending request settled.
    pub(super) fn settle(&mut self, settle: Settle, status: RunStatus, entry: AuditEntry<'_>) {
        self.push(status, entry, settle.finished_at);
        self.now.pending_request_id = None;
        if let Some(reason) = &settle.denial_reason {
            self.status_reason = Some(reason.clone());
        }
        self.settle = Some(settle);
    }

    /// Checks `transition` on the run as the steps so far leave it, at `expected_version`.
    fn check(
        &self,
        transition: &Transition,
        expected_version: i64,
    ) -> Result<crate::domain::TransitionOutcome, PersistenceError> {
        self.now.check(transition, Some(expected_version))
    }

    fn keep_state(&mut self, state: Option<&super::StepState>) {
        if let Some(s) = state {
            self.execution_context = Some(s.execution_context.clone());
            self.runner_metadata = Some(s.runner_metadata.clone());
            if let Some(plan) = &s.plan {
                self.plan = Some(plan.clone());
            }
            if let Some(r) = &s.runner_state {
                // One statement cannot write a row twice: a node's last state wins.
                self.runner_states.retain(|kept| kept.node_id != r.node_id);
                self.runner_states.push(r.clone());
            }
        }
    }

    /// Pushes `job` (due now) with the write, which is not made yet.
    pub fn enqueue<P: super::jobs::JobPayload>(&mut self, job: &P) {
        self.push_job(job, None);
    }

    /// Pushes `job` with the write, due at `at`.
    pub(super) fn enqueue_at<P: super::jobs::JobPayload>(&mut self, job: &P, at: DateTime<Utc>) {
        // The queue is read in whole seconds (as `queue::enqueue` rounds): up, so the
        // job never runs before its time.
        let up = i64::from(at.timestamp_subsec_nanos() > 0);
        self.push_job(job, DateTime::from_timestamp(at.timestamp() + up, 0));
    }

    fn push_job<P: super::jobs::JobPayload>(&mut self, job: &P, at: Option<DateTime<Utc>>) {
        // Every caller pushes before the write; one pushed after it would be lost.
        debug_assert!(self.written.is_none(), "a job pushed after the write");
        self.jobs.push((super::queue::job_row(job), at));
    }

    /// The command's success and its job's completion, in a transition that settles no
    /// request (a note: an approval short of the number needed).
    pub(super) fn complete(&mut self, settle: Settle) {
        debug_assert!(settle.request_id.is_none() && settle.answers.ids.is_empty());
        self.settle = Some(settle);
    }

    /// The pending request's claim becomes `claim` (`None`: cleared).
    pub(super) fn set_claim(&mut self, claim: Option<super::Claim>) {
        self.claim = Some(claim);
    }

    /// The pending request's follow-up bookkeeping becomes `follow_up`, and its assignees
    /// `assignees` when given.
    pub(super) fn set_follow_up(&mut self, follow_up: Value, assignees: Option<Value>) {
        self.follow_up = Some(follow_up);
        self.assignees = assignees;
    }

    /// Counts `approval` towards the pending request's number (its command is the
    /// settle's).
    pub(super) fn count_approval(&mut self, approval: ApprovalRow) {
        self.approval = Some(approval);
    }

    /// A retry of a failed run: its failure reason is cleared and its runner metadata is
    /// `meta` (the failed node's attempt counter moved on).
    pub(super) fn retry(&mut self, meta: Value) {
        self.runner_metadata = Some(meta);
        self.clear_reason = true;
    }

    /// The run ends with `reason` (kept in its `status_reason`).
    pub(super) fn end_because(&mut self, reason: &str) {
        self.status_reason = Some(reason.to_owned());
    }

    /// A note on the run's pending request (`transition` is a `Transition::Note`: a claim,
    /// an approval short of the number needed, a reminder, an escalation, a deadline
    /// notice): the run's version moves on, its status stays, with the event `entry`
    /// (its action, version and statuses are set here). The new version.
    pub(super) fn note(
        &mut self,
        transition: &Transition,
        entry: AuditEntry<'_>,
    ) -> Result<i64, PersistenceError> {
        let outcome = self.now.check(transition, None)?;
        let entry = AuditEntry {
            action: Some(outcome.audit_action),
            from_status: Some(self.now.status),
            to_status: Some(outcome.status),
            ..entry
        };
        self.push(outcome.status, entry, now());
        Ok(self.now.version)
    }

    /// [`super::checkpoint`], added to the write: the new version.
    pub fn checkpoint(
        &mut self,
        expected_version: i64,
        step: Checkpoint<'_>,
    ) -> Result<i64, PersistenceError> {
        let outcome = self.check(&Transition::Checkpoint, expected_version)?;
        let details = super::runs::checkpoint_details(&step);
        let entry = AuditEntry {
            action: Some(step.action),
            from_status: Some(self.now.status),
            to_status: Some(outcome.status),
            details: Some(details),
            ..AuditEntry::default()
        };
        self.keep_state(Some(step.state));
        self.push(outcome.status, entry, now());
        Ok(self.now.version)
    }

    /// `queued → running` ([`super::start_run`]), added to the write: the new version.
    pub fn start(&mut self, expected_version: i64) -> Result<i64, PersistenceError> {
        let outcome = self.check(&Transition::Start, expected_version)?;
        let entry = AuditEntry {
            action: Some(outcome.audit_action),
            from_status: Some(self.now.status),
            to_status: Some(outcome.status),
            ..AuditEntry::default()
        };
        self.push(outcome.status, entry, now());
        Ok(self.now.version)
    }

    /// [`super::raise_request`]'s row, pause and event, added to the write: the new
    /// version. (A transition raises at most one request: the run then waits on it.)
    pub(super) fn raise(
        &mut self,
        expected_version: i64,
        request: &super::NewRequest,
        state: &super::StepState,
    ) -> Result<i64, PersistenceError> {
        let outcome = self.check(
            &Transition::RaiseRequest {
                request_id: request.request_id.clone(),
            },
            expected_version,
        )?;
        let raise = Raise {
            request_id: request.request_id.clone(),
            node_id: request.node_id.clone(),
            operator_prompt: request.operator_prompt.clone(),
            response_types: request.response_types.iter().map(|t| t.as_str()).collect(),
            options: request.options.clone(),
            contract_summary: request.contract_summary.clone(),
            expires_at: request.deadline.map(|(at, _)| at),
            on_timeout: request.deadline.map(|(_, action)| action),
            items: to_json(&request.items)?,
            assignees: request.assignees.as_ref().map(to_json).transpose()?,
            approvals_required: request
                .approvals_required
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            follow_up: request.follow_up.as_ref().map(to_json).transpose()?,
        };
        let details = super::runs::raise_details(request);
        let entry = AuditEntry {
            action: Some(outcome.audit_action),
            request_id: Some(&request.request_id),
            from_status: Some(self.now.status),
            to_status: Some(outcome.status),
            details: Some(details),
            ..AuditEntry::default()
        };
        self.keep_state(Some(state));
        self.push(outcome.status, entry, now());
        self.now.pending_request_id = Some(request.request_id.clone());
        self.raise = Some(raise);
        Ok(self.now.version)
    }

    /// [`super::finish_run`], added to the write: the new version.
    pub fn finish(
        &mut self,
        expected_version: i64,
        finish: &Finish,
    ) -> Result<i64, PersistenceError> {
        let transition = super::runs::finish_transition(&self.now.run_id, finish.status)?;
        let outcome = self.check(&transition, expected_version)?;
        let entry = AuditEntry {
            action: Some(outcome.audit_action),
            note: finish.reason.as_deref(),
            from_status: Some(self.now.status),
            to_status: Some(outcome.status),
            details: Some(json!({ "nodeId": finish.node_id })),
            ..AuditEntry::default()
        };
        self.keep_state(finish.state.as_ref());
        if let Some(reason) = &finish.reason {
            self.status_reason = Some(reason.clone());
        }
        self.push(outcome.status, entry, now());
        Ok(self.now.version)
    }

    /// Makes the writes (once: later calls return what the first did). Fails when the
    /// run or its chain is not as locked, which the caller's lock rules out.
    pub async fn write(&mut self, conn: &mut PgConnection) -> Result<Written, PersistenceError> {
        if let Some(w) = self.written {
            return Ok(w);
        }
        let mut written = self.try_write(conn).await?;
        if written.is_none() && self.optimistic {
            let actual: Option<i64> =
                crate::db::query_scalar("select version from orchestrator_runs where run_id = $1")
                    .bind(&self.fence.run_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if actual != Some(self.fence.version) {
                return Err(PersistenceError::StaleVersion {
                    run_id: self.fence.run_id.clone(),
                    expected: self.fence.version,
                    actual: actual.unwrap_or(-1),
                });
            }
        }
        if written.is_none() {
            // The head read with the lock was older than the stored one (a transition
            // committed while the read waited for the lock): hash over the stored head.
            self.head = super::audit::stored_head(conn, &self.fence.run_id).await?;
            written = self.try_write(conn).await?;
        }
        let written = written.ok_or_else(|| {
            PersistenceError::Database(sqlx::Error::Protocol(format!(
                "run {} is not as locked",
                self.fence.run_id
            )))
        })?;
        self.runner_states.clear();
        self.written = Some(written);
        Ok(written)
    }

    async fn try_write(
        &mut self,
        conn: &mut PgConnection,
    ) -> Result<Option<Written>, PersistenceError> {
        let n = self.events.len();
        let mut prev = self.head.clone();
        let mut versions = Vec::with_capacity(n);
        let mut actions = Vec::with_capacity(n);
        let mut request_ids = Vec::with_capacity(n);
        let mut command_ids = Vec::with_capacity(n);
        let mut operator_ids = Vec::with_capacity(n);
        let mut operator_names = Vec::with_capacity(n);
        let mut operator_emails = Vec::with_capacity(n);
        let mut notes = Vec::with_capacity(n);
        let mut from_statuses = Vec::with_capacity(n);
        let mut to_statuses = Vec::with_capacity(n);
        let mut details = Vec::with_capacity(n);
        let mut principals = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut traces = Vec::with_capacity(n);
        let mut prev_hashes = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut signatures = Vec::with_capacity(n);
        let mut key_ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        let mut named = Vec::with_capacity(n);
        let mut notices = Vec::with_capacity(n);
        for e in &mut self.events {
            e.fields.prev_hash = prev.take();
            let hash = event_hash(&e.fields);
            let (signature, key_id) = signature_of(&hash);
            let f = &e.fields;
            versions.push(f.run_version);
            actions.push(f.action.clone());
            request_ids.push(f.request_id.clone());
            command_ids.push(f.command_id.clone());
            operator_ids.push(f.operator_id.clone());
            operator_names.push(f.operator_display_name.clone());
            operator_emails.push(f.operator_email.clone());
            notes.push(f.note.clone());
            from_statuses.push(f.from_status.clone());
            to_statuses.push(f.to_status.clone());
            details.push(f.details.clone());
            principals.push(f.principal.clone());
            created.push(f.created_at);
            traces.push(f.trace_id.clone());
            prev_hashes.push(f.prev_hash.clone());
            hashes.push(hash.to_vec());
            signatures.push(signature);
            key_ids.push(key_id);
            names.push(e.name);
            nodes.push(e.node_id.clone());
            named.push(e.named.clone());
            notices.push(e.notice_seconds);
            prev = Some(hash.to_vec());
        }
        let r = self.settle.as_ref();
        let a = r.map(|r| &r.answers);
        let empty = super::commands::Answers::default();
        let a = a.unwrap_or(&empty);
        let trace = crate::telemetry::current_trace_context().map(|c| json!({ "trace": c }));
        let q = self.raise.as_ref();
        let claim = self.claim.as_ref().and_then(Option::as_ref);
        let p = self.approval.as_ref();
        let job = r.and_then(|r| r.job.as_ref()).or(self.job_claim.as_ref());
        let jobs = &self.jobs;
        let (job_ids, job_kinds): (Vec<&str>, Vec<&str>) =
            jobs.iter().map(|(j, _)| (j.id.as_str(), j.kind)).unzip();
        let (job_payloads, job_attempts): (Vec<&[u8]>, Vec<i32>) = jobs
            .iter()
            .map(|(j, _)| (j.job.as_slice(), j.max_attempts))
            .unzip();
        let job_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|(_, at)| *at).collect();
        let (job_meta_keys, job_meta_values): (Vec<Option<&str>>, Vec<Option<&str>>) = jobs
            .iter()
            .map(|(j, _)| (j.meta_key, j.meta_value.as_deref()))
            .unzip();
        let (state_nodes, states): (Vec<&str>, Vec<Option<&str>>) = self
            .runner_states
            .iter()
            .map(|r| (r.node_id.as_str(), r.state.as_deref()))
            .unzip();
        let row: Option<(i64, bool)> = crate::db::query_as(sqlx::AssertSqlSafe(write_sql()))
            .bind(&self.fence.run_id)
            .bind(self.now.status)
            .bind(self.now.pending_request_id != self.fence.pending_request_id)
            .bind(&self.execution_context)
            .bind(&self.runner_metadata)
            .bind(&self.plan)
            .bind(&self.status_reason)
            .bind(self.now.version)
            .bind(self.fence.version)
            .bind(self.fence.status)
            .bind(&self.fence.pending_request_id)
            .bind(&self.head)
            // $13: the command's part.
            .bind(r.and_then(|r| r.request_id.as_ref()))
            .bind(r.and_then(|r| r.command_id.as_ref()))
            .bind(&a.ids)
            .bind(&a.positions)
            .bind(&a.types)
            .bind(&a.approved)
            .bind(&a.options)
            .bind(&a.texts)
            .bind(&a.responders)
            .bind(&a.names)
            .bind(&a.items)
            .bind(&a.edited)
            .bind(r.map(|r| &r.resolved_by))
            .bind(r.and_then(|r| r.outcome.as_ref()))
            .bind(r.map(|r| r.finished_at))
            .bind(job.map(|(id, _)| id))
            .bind(job.map(|(_, worker)| worker))
            // $30: the events.
            .bind(&versions)
            .bind(&actions)
            .bind(&request_ids)
            .bind(&command_ids)
            .bind(&operator_ids)
            .bind(&operator_names)
            .bind(&operator_emails)
            .bind(&notes)
            .bind(&from_statuses)
            .bind(&to_statuses)
            .bind(&details)
            .bind(&principals)
            .bind(&created)
            .bind(&traces)
            .bind(&prev_hashes)
            .bind(&hashes)
            .bind(&signatures)
            .bind(&key_ids)
            // $48: what notifications see of them.
            .bind(&names)
            .bind(&nodes)
            .bind(trace)
            .bind(super::queue::DEFAULT_MAX_ATTEMPTS)
            // $52: the jobs pushed with the write.
            .bind(&job_ids)
            .bind(&job_kinds)
            .bind(&job_payloads)
            .bind(&job_attempts)
            // $56: the request raised, if any.
            .bind(q.map(|q| &q.request_id))
            .bind(q.map(|q| &q.node_id))
            .bind(q.map(|q| &q.operator_prompt))
            .bind(q.map(|q| &q.response_types))
            .bind(q.map(|q| &q.options))
            .bind(q.map(|q| &q.contract_summary))
            .bind(q.and_then(|q| q.expires_at))
            .bind(q.and_then(|q| q.on_timeout))
            .bind(q.map(|q| &q.items))
            .bind(q.and_then(|q| q.assignees.as_ref()))
            .bind(q.and_then(|q| q.approvals_required))
            .bind(q.and_then(|q| q.follow_up.as_ref()))
            // $68: how the request is settled, and a remove's reason.
            .bind(r.map(|r| r.request_status))
            .bind(r.and_then(|r| r.denial_reason.as_ref()))
            // $70: a retry clears the run's failure reason.
            .bind(self.clear_reason)
            // $71: the channels each event names, and its deadline notice's period.
            .bind(&named)
            .bind(&notices)
            // $73: when each is due.
            .bind(&job_ats)
            // $74: the pending request's claim, follow-up and assignees, when they change.
            .bind(self.claim.is_some())
            .bind(claim.map(|c| sqlx::types::Json(&c.claimed_by)))
            .bind(claim.map(|c| c.claim_expires_at))
            .bind(&self.follow_up)
            .bind(&self.assignees)
            // $79: an approval counted.
            .bind(p.map(|p| &p.approver))
            .bind(p.and_then(|p| p.principal.as_ref()))
            .bind(p.map(|p| &p.operator))
            .bind(p.map(|p| p.at))
            // $83: each pushed job's metadata.
            .bind(&job_meta_keys)
            .bind(&job_meta_values)
            // $85: the runner states kept (a null state clears the node's).
            .bind(&state_nodes)
            .bind(&states)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((version, job_completed)) = row else {
            return Ok(None);
        };
        if let Some(last) = hashes.last() {
            super::audit::remember_head(&self.fence.run_id, version, last);
            self.head_after = Some(last.clone());
        } else {
            self.head_after = self.head.clone();
        }
        Ok(Some(Written {
            version,
            job_completed,
        }))
    }
}

/// Locks `run_id` (`for no key update`, as every transition does) and starts a write of
/// its transition on the run as locked, with the chain head read in the same statement
/// (a head that moved while the statement waited for the lock fails the write's fence
/// once, and is read again then).
pub async fn lock_for_write(
    conn: &mut PgConnection,
    run_id: &RunId,
) -> Result<TransitionWrite, PersistenceError> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        run: LockedRun,
        head: Option<Vec<u8>>,
    }
    let locked: Locked = crate::db::query_as(
        "select r.run_id, r.status, r.pending_request_id, r.version, \
             (select e.hash from run_audit_events e where e.run_id = r.run_id \
              order by e.run_version desc limit 1) as head \
         from orchestrator_runs r where r.run_id = $1 for no key update",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| PersistenceError::NotFound {
        entity: "run",
        id: run_id.to_string(),
    })?;
    Ok(TransitionWrite::new(locked.run, locked.head))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, PersistenceError> {
    serde_json::to_value(value)
        .map_err(|e| PersistenceError::Database(sqlx::Error::Encode(Box::new(e))))
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The statement [`TransitionWrite::write`] runs (see the module docs). `$1` the run,
/// `$2`–`$8` its new state (`$3`: its pending request changes, to `$56`), `$9`–`$12` the
/// fence (version, status, pending request, chain head), `$13`–`$29` a command's
/// request, answers, command and job (all null or empty without one), `$30`–`$47` the
/// events, `$48`–`$49` their names and nodes for notifications, `$50` the trace context
/// the delivery jobs carry, `$51` their max attempts, `$52`–`$55` the jobs pushed with
/// the write (their ids, kinds, payloads and max attempts, as arrays), `$56`–`$67` a
/// request raised (null for none; the deliveries read its node and assignees from its
/// insert, which the statement's snapshot of `hitl_requests` does not show; the deadline
/// notices its channels want are pushed from `notification_channels` in the statement;
/// groups are checked when a notice is sent, as an escalation may add one meanwhile), and `$68`–`$69` the
/// settled request's new status and a remove's reason (a command that named no request
/// comes to name the one it settled), `$70` whether the run's failure reason is
/// cleared first (a retry), `$71`–`$72` the channels each event names and its
/// deadline notice's period, `$73` when each job pushed is due (null: now), `$74`–`$78` the pending
/// request's claim (`$74`: it changes), follow-up and assignees (settled or not), and
/// `$79`–`$82` an approval of it counted (approver, principal, operator, when), and
/// `$83`–`$84` each pushed job's metadata key and value, and `$85`–`$86` the runner
/// states the steps keep, by node (a null state deletes the node's).
///
/// The statement's parts run in an order PostgreSQL does not promise by itself, so where
/// one must see another's effect it reads that part's rows: the raised request's insert
/// counts the settled one's update first, or the new pending request would meet the old
/// one in `hitl_requests_one_pending_per_run` (a resume leading to the run's next
/// request failed its inline write that way and was left to an advancement job).
///
/// The deliveries are `notifications::deliveries_cte`'s, each event's facets bound
/// per event.
fn write_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        WRITE_SQL
            .replace(
                "{job_done}",
                &super::queue::complete_sql("$28", "$29", "exists (select 1 from run_write)"),
            )
            .replace(
                "{deliveries}",
                &super::notifications::deliveries_cte(
                    "join unnest($30::bigint[], $48::text[], $49::text[], $71::jsonb[], \
                     $72::int[]) as f(run_version, name, node_id, named, notice_seconds) \
                 on f.run_version = event.run_version",
                    "$50",
                    "$51",
                ),
            )
    })
}

/// [`write_sql`] before the deliveries' part is put in.
const WRITE_SQL: &str = "with run_write as ( \
        update orchestrator_runs set status = $2, \
            pending_request_id = case when $3 then $56 else pending_request_id end, \
            execution_context = coalesce($4, execution_context), \
            runner_metadata = coalesce($5, runner_metadata), \
            plan = coalesce($6, plan), \
            status_reason = coalesce($7, case when $70 then null else status_reason end), \
            finished_at = case when $2 in ('completed', 'failed', 'cancelled') then now() end, \
            agent_retry = null, version = $8, updated_at = now() \
        where run_id = $1 and version = $9 and status = $10 \
          and pending_request_id is not distinct from $11 \
          and (select hash from run_audit_events where run_id = $1 \
               order by run_version desc limit 1) is not distinct from $12 \
        returning version, thread_id, brief_id), \
    answers as ( \
        insert into hitl_responses (response_id, request_id, run_id, position, \
            response_type, approved, option_id, freeform_text, responder_id, \
            responder_display_name, command_id, item_id, edited_arguments) \
        select r.id, $13, $1, r.position, r.response_type, r.approved, r.option_id, \
            r.freeform_text, r.responder_id, r.responder_display_name, $14, r.item_id, \
            r.edited \
        from run_write, unnest($15::text[], $16::int[], $17::text[], $18::bool[], \
            $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::jsonb[]) \
            as r(id, position, response_type, approved, option_id, freeform_text, \
                 responder_id, responder_display_name, item_id, edited)), \
    request as ( \
        update hitl_requests set \
            status = case when $13::text is null then status else $68 end, \
            denial_reason = case when $13::text is null then denial_reason else $69 end, \
            resolved_at = case when $13::text is null then resolved_at else now() end, \
            resolved_by = case when $13::text is null then resolved_by else $25 end, \
            claimed_by = case when $74 then $75 else claimed_by end, \
            claim_expires_at = case when $74 then $76 else claim_expires_at end, \
            follow_up = coalesce($77, follow_up), assignees = coalesce($78, assignees) \
        where request_id = coalesce($13, $11) \
          and ($13::text is not null or $74 or $77::jsonb is not null) \
          and exists (select 1 from run_write) \
        returning 1), \
    raised as ( \
        insert into hitl_requests (request_id, run_id, thread_id, brief_id, node_id, \
            operator_prompt, response_types, options, contract_summary, expires_at, \
            on_timeout, items, assignees, approvals_required, follow_up) \
        select $56, $1, run_write.thread_id, run_write.brief_id, $57, $58, $59::text[], $60, \
            $61, $62, $63, $64, $65, $66, $67 \
        from run_write where $56::text is not null \
          and (select count(*) from request) >= 0 \
        returning request_id, node_id, assignees), \
    approval as ( \
        insert into hitl_approvals (request_id, approver, command_id, principal, operator, \
            created_at) \
        select $11, $79, $14, $80, $81, $82 from run_write where $79::text is not null), \
    command_done as ( \
        update hitl_commands set status = 'succeeded', outcome = $26, error = null, \
            attempts = attempts + 1, started_at = coalesce(started_at, $27), \
            finished_at = $27, updated_at = $27, request_id = coalesce(request_id, $13) \
        where command_id = $14 and exists (select 1 from run_write)), \
    job_done as ({job_done} returning 1), \
    event as ( \
        insert into run_audit_events (run_id, run_version, action, request_id, command_id, \
            operator_id, operator_display_name, operator_email, note, from_status, \
            to_status, details, principal, created_at, trace_id, prev_hash, hash, \
            signature, key_id) \
        select $1, e.* from run_write, unnest($30::bigint[], $31::text[], $32::text[], \
            $33::text[], $34::text[], $35::text[], $36::text[], $37::text[], $38::text[], \
            $39::text[], $40::jsonb[], $41::text[], $42::timestamptz[], $43::text[], \
            $44::bytea[], $45::bytea[], $46::bytea[], $47::text[]) \
            as e(run_version, action, request_id, command_id, operator_id, \
                 operator_display_name, operator_email, note, from_status, to_status, \
                 details, principal, created_at, trace_id, prev_hash, hash, signature, \
                 key_id) \
        order by e.run_version \
        returning event_id, run_version, request_id), \
    {deliveries}, \
    next_job as ( \
        insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
            priority, metadata) \
        select j.id, j.kind, j.job, 'Pending', 0, j.max_attempts, coalesce(j.run_at, now()), \
            0, coalesce(hstore(j.meta_key, j.meta_value), ''::hstore) \
        from run_write, unnest($52::text[], $53::text[], $54::bytea[], $55::int[], \
            $73::timestamptz[], $83::text[], $84::text[]) \
            as j(id, kind, job, max_attempts, run_at, meta_key, meta_value) \
        returning 1), \
    notice_job as ( \
        insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
            priority, metadata) \
        select apalis.generate_ulid(), 'hitl_expiring', \
            convert_to(jsonb_build_object('requestId', $56::text, \
                'noticeSeconds', p.notice_seconds)::text, 'UTF8'), \
            'Pending', 0, $51, \
            to_timestamp(ceil(extract(epoch from \
                greatest($62 - make_interval(secs => p.notice_seconds), now())))), \
            0, hstore('request_id', $56::text) \
        from run_write, (select distinct c.expiring_notice_seconds as notice_seconds \
            from notification_channels c \
            where 'request_expiring' = any(c.events) and c.expiring_notice_seconds is not null \
              and (cardinality(c.nodes) = 0 or $57 = any(c.nodes))) p \
        where $56::text is not null and $62 > now() \
        returning 1), \
    runner_kept as ( \
        insert into run_runner_states (run_id, node_id, state) \
        select $1, k.node_id, k.state from run_write, \
            unnest($85::text[], $86::text[]) as k(node_id, state) \
        where k.state is not null \
        on conflict (run_id, node_id) do update set state = excluded.state, updated_at = now()), \
    runner_cleared as ( \
        delete from run_runner_states d using run_write, \
            unnest($85::text[], $86::text[]) as k(node_id, state) \
        where d.run_id = $1 and d.node_id = k.node_id and k.state is null) \
    select version, exists (select 1 from job_done) from run_write";
