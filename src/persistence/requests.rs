//! HITL requests: checking answers against the request they answer, the pending inbox
//! (oldest first, keyset-paginated), and expiry at the deadline.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use super::jobs::Advance;
use super::queue;
use super::{AdvanceBy, AuditEntry, PersistenceError, Tx};
use crate::domain::{
    AuditAction, BriefId, ClaimHolder, CommandId, Operator, RequestId, RequestStatus, ResponseType,
    RunId, RunStatus, ThreadId, TimeoutAction, Transition,
};

/// What an item asks an operator for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// May this tool run with these arguments?
    ToolApproval,
    /// Anything else (a `hitl` node's question).
    Question,
}

/// The tool call an item asks about, for the operator to see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments, as the agent would pass them (any JSON).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Value,
}

/// An option an item offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemOption {
    pub id: String,
    pub label: String,
}

/// One decision of a request: each item is answered on its own. A `hitl` node's request
/// has one item whose `itemId` is the node id; an agent's interruption may have several
/// (one per tool call awaiting approval, `itemId` its call id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestItem {
    /// Unique in its request.
    pub item_id: String,
    pub kind: ItemKind,
    /// What to show the operator.
    pub title: String,
    /// The tool call this item would let run, when it is a tool approval.
    #[serde(default)]
    pub tool: Option<ToolCall>,
    /// The answers this item accepts.
    pub response_types: Vec<ResponseType>,
    /// The options offered (`option` answers).
    #[serde(default)]
    pub options: Vec<ItemOption>,
}

/// What follows up a pending request: reminders every `remindEverySeconds`, and
/// escalation steps each `afterSeconds` after it was raised; with what was done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowUp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_every_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalation: Vec<EscalationStep>,
    /// Reminders sent so far.
    #[serde(default)]
    pub reminded: u32,
    /// The escalation steps applied so far (their indices).
    #[serde(default)]
    pub escalated: Vec<usize>,
}

/// One escalation step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscalationStep {
    pub after_seconds: u64,
    /// Who may answer from then on, besides the assignees already listed (a request
    /// anyone may answer stays so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_assignees: Option<Assignees>,
    /// Channels told of the step, besides those that want `escalated` events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

/// Who may answer a request: the operators listed, and the members of the groups listed.
/// A request without assignees may be answered by anyone with the `operate` scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignees {
    /// Operator ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names (a credential's `groups`).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Assignees {
    /// Whether an operator `operator` (if the credential is bound to one) in `groups` is
    /// listed.
    pub fn admit(&self, operator: Option<&str>, groups: &[String]) -> bool {
        operator.is_some_and(|id| self.users.iter().any(|u| u == id))
            || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// The items of request alias `q` as stored, or — for a request written before items
/// existed — its one item derived from the request's own fields.
pub(crate) fn items_sql(q: &str) -> String {
    format!(
        "coalesce({q}.items, jsonb_build_array(jsonb_build_object('itemId', {q}.node_id, \
             'kind', 'question', 'title', {q}.operator_prompt, 'tool', null, \
             'responseTypes', to_jsonb({q}.response_types), 'options', {q}.options)))"
    )
}

/// The claim on request alias `q` while its lease lasts and the request is pending:
/// `claimed_by` and `claim_expires_at`, both null otherwise (a lease ends by time alone).
pub(crate) fn claim_sql(q: &str) -> String {
    let live = format!("{q}.claim_expires_at > now() and {q}.status = 'pending'");
    format!(
        "case when {live} then {q}.claimed_by end as claimed_by, \
         case when {live} then {q}.claim_expires_at end as claim_expires_at"
    )
}

/// The approvals of request alias `q` (`{required, have, by}`), null for a request that
/// needs none.
pub(crate) fn approvals_sql(q: &str) -> String {
    format!(
        "case when {q}.approvals_required is not null then jsonb_build_object( \
             'required', {q}.approvals_required, \
             'have', (select count(*) from hitl_approvals a where a.request_id = {q}.request_id), \
             'by', coalesce((select jsonb_agg(jsonb_build_object('approver', a.approver, \
                     'principal', a.principal, 'operator', a.operator, 'commandId', a.command_id, \
                     'at', a.created_at) order by a.created_at, a.approver) \
                 from hitl_approvals a where a.request_id = {q}.request_id), '[]'::jsonb)) end"
    )
}

/// How far a request needing several approvals has got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvals {
    /// Distinct approvals needed.
    pub required: i64,
    /// Counted so far.
    pub have: i64,
    /// Who approved, oldest first.
    pub by: Vec<Approval>,
}

impl Approvals {
    /// Whether `approver` is among those counted.
    pub fn counts(&self, approver: &str) -> bool {
        self.by.iter().any(|a| a.approver == approver)
    }
}

/// One approval counted towards a request's `approvals.required`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who it counts as: `operator:<id>` for a credential bound to an operator,
    /// `principal:<name>` for an act-as credential (however many operators it names).
    pub approver: String,
    /// The credential's name.
    pub principal: Option<String>,
    /// The operator it acted as.
    pub operator: Operator,
    /// The resume that carried it.
    pub command_id: CommandId,
    pub at: DateTime<Utc>,
}

/// One answer as an operator sends it (the runbook's `responses[]` items).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseInput {
    /// The request answered; when present it must be the pending request.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The item answered; may be left out when the request has one item.
    #[serde(default)]
    pub item_id: Option<String>,
    /// `approval`, `rejection`, `option`, `freeform` or `edit` (an approval with
    /// `editedArguments`), as the item accepts.
    pub response_type: ResponseType,
    /// Required for `edit`: the arguments the tool is to run with instead (a JSON
    /// object); refused with any other type.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub edited_arguments: Option<Value>,
    /// Required for `approval`; `false` or absent for `rejection`.
    #[serde(default)]
    pub approved: Option<bool>,
    /// Required for `option`: one of the request's option ids.
    #[serde(default)]
    pub option_id: Option<String>,
    /// Required for `freeform`; allowed with any type. With a rejection of an agent's
    /// item, the message its agent receives.
    #[serde(default)]
    pub freeform_text: Option<String>,
    /// Who answered.
    #[serde(default)]
    pub responder_id: Option<String>,
    /// Their name to show.
    #[serde(default)]
    pub responder_display_name: Option<String>,
}

/// Why an answer does not fit its request, with the field path (`responses[1].optionId`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ResponseProblem {
    /// The offending field, as a path into the request body.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The parts of a request its answers are checked against.
pub struct RequestShape<'a> {
    pub request_id: &'a RequestId,
    pub items: &'a [RequestItem],
    /// Distinct approvals the request needs (`None`: one answer settles it); such a
    /// request takes only approvals and rejections, so that every approval counted is the
    /// same decision.
    pub approvals_required: Option<i32>,
}

/// Checks every answer against the request — each names one of its items (or the only
/// one), fits that item's answer types and options, and every item is answered; the first
/// problem found is returned and nothing may be written when there is one. Returns the
/// item each answer belongs to, in order.
pub fn validate_responses<'r>(
    request: &RequestShape<'r>,
    responses: &[ResponseInput],
) -> Result<Vec<&'r str>, ResponseProblem> {
    let problem = |field: String, message: String| Err(ResponseProblem { field, message });
    if responses.is_empty() {
        return problem(
            "responses".into(),
            "at least one response is required".into(),
        );
    }
    if responses.len() > 100 {
        return problem(
            "responses".into(),
            "at most 100 responses are accepted".into(),
        );
    }
    let ids = || {
        request
            .items
            .iter()
            .map(|i| i.item_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut answered: Vec<&'r str> = Vec::with_capacity(responses.len());
    for (i, r) in responses.iter().enumerate() {
        let at = |f: &str| format!("responses[{i}].{f}");
        if let Some(id) = &r.request_id
            && id != request.request_id.as_str()
        {
            return problem(
                at("requestId"),
                format!("must be the pending request {}", request.request_id),
            );
        }
        let item = match (&r.item_id, request.items) {
            (Some(id), items) => match items.iter().find(|item| item.item_id == *id) {
                Some(item) => item,
                None => {
                    return problem(
                        at("itemId"),
                        format!("\"{id}\" is not an item of this request (items: {})", ids()),
                    );
                }
            },
            (None, [only]) => only,
            (None, items) => {
                return problem(
                    at("itemId"),
                    format!(
                        "is required: this request has {} items ({})",
                        items.len(),
                        ids()
                    ),
                );
            }
        };
        if let Some(required) = request.approvals_required
            && !matches!(
                r.response_type,
                ResponseType::Approval | ResponseType::Rejection
            )
        {
            return problem(
                at("responseType"),
                format!(
                    "this request needs {required} approvals by distinct people: each answer is an approval or a rejection"
                ),
            );
        }
        if !item.response_types.contains(&r.response_type) {
            let accepted: Vec<&str> = item.response_types.iter().map(|t| t.as_str()).collect();
            return problem(
                at("responseType"),
                format!(
                    "\"{}\" is not accepted by item {} (accepted: {})",
                    r.response_type,
                    item.item_id,
                    accepted.join(", ")
                ),
            );
        }
        match (&r.edited_arguments, r.response_type) {
            (None, ResponseType::Edit) => {
                return problem(at("editedArguments"), "is required for an edit".into());
            }
            (Some(v), ResponseType::Edit) if !v.is_object() => {
                return problem(at("editedArguments"), "must be a JSON object".into());
            }
            (Some(_), t) if t != ResponseType::Edit => {
                return problem(
                    at("editedArguments"),
                    "is only accepted with responseType edit".into(),
                );
            }
            _ => {}
        }
        match r.response_type {
            ResponseType::Approval if r.approved.is_none() => {
                return problem(at("approved"), "is required for an approval".into());
            }
            ResponseType::Rejection if r.approved == Some(true) => {
                return problem(
                    at("approved"),
                    "must be false or absent for a rejection".into(),
                );
            }
            ResponseType::Edit if r.approved == Some(false) => {
                return problem(at("approved"), "must be true or absent for an edit".into());
            }
            ResponseType::Option => match r.option_id.as_deref() {
                None => return problem(at("optionId"), "is required for an option answer".into()),
                Some(id) if !item.options.iter().any(|o| o.id == id) => {
                    let offered: Vec<&str> = item.options.iter().map(|o| o.id.as_str()).collect();
                    return problem(
                        at("optionId"),
                        format!("\"{id}\" is not offered (offered: {})", offered.join(", ")),
                    );
                }
                Some(_) => {}
            },
            ResponseType::Freeform
                if r.freeform_text
                    .as_deref()
                    .is_none_or(|t| t.trim().is_empty()) =>
            {
                return problem(
                    at("freeformText"),
                    "is required for a freeform answer".into(),
                );
            }
            _ => {}
        }
        answered.push(item.item_id.as_str());
    }
    if let Some(missing) = request
        .items
        .iter()
        .find(|item| !answered.contains(&item.item_id.as_str()))
    {
        return problem(
            "responses".into(),
            format!(
                "item \"{}\" has no answer: every item of the request needs one ({})",
                missing.item_id,
                ids()
            ),
        );
    }
    Ok(answered)
}

/// Filters and position of one page of the pending inbox.
#[derive(Clone, Debug, Default)]
pub struct PendingFilter {
    pub thread_id: Option<ThreadId>,
    pub brief_id: Option<BriefId>,
    pub node_id: Option<String>,
    /// Only requests assigned to this operator (if any) or to one of these groups.
    pub assigned_to: Option<(Option<String>, Vec<String>)>,
    /// Only requests assigned to this group.
    pub group: Option<String>,
    /// Only requests whose prompt, an item's title or the brief's title contains this
    /// text (case-insensitive; `%` and `_` are themselves).
    pub search: Option<String>,
    /// Only requests with a deadline before this.
    pub expires_before: Option<DateTime<Utc>>,
    /// Start after this `(created_at, request_id)` (the last item of the previous page).
    pub after: Option<(DateTime<Utc>, RequestId)>,
    /// Page size.
    pub limit: i64,
}

/// One pending request with what an operator needs to decide (the runbook's fields).
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingItem {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub brief_id: BriefId,
    pub pending_request_id: RequestId,
    pub pending_node_id: String,
    pub operator_prompt: String,
    pub contract_summary: Value,
    pub response_types: Vec<String>,
    pub options: Value,
    /// Each decision the request asks for (one for a `hitl` node).
    #[sqlx(json)]
    pub items: Vec<RequestItem>,
    /// Who may answer it (`null`: anyone with the operate scope).
    #[schema(value_type = Option<Assignees>)]
    pub assignees: Option<sqlx::types::Json<Assignees>>,
    /// Who is working on it, while the claim's lease lasts (`null`: nobody).
    #[schema(value_type = Option<ClaimHolder>)]
    pub claimed_by: Option<sqlx::types::Json<ClaimHolder>>,
    /// When the claim's lease ends.
    pub claim_expires_at: Option<DateTime<Utc>>,
    /// For a request needing several approvals: how many, and who approved so far.
    #[schema(value_type = Option<Approvals>)]
    pub approvals: Option<sqlx::types::Json<Approvals>>,
    pub execution_context: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Lists pending requests, oldest first, by keyset (`created_at`, `request_id`), so a
/// deep page costs the same as the first.
pub async fn list_pending(
    executor: impl PgExecutor<'_>,
    filter: &PendingFilter,
) -> Result<Vec<PendingItem>, PersistenceError> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "select r.run_id, r.thread_id, r.brief_id, r.request_id as pending_request_id, \
             r.node_id as pending_node_id, r.operator_prompt, r.contract_summary, \
             r.response_types, r.options, {} as items, r.assignees, {}, {} as approvals, \
             o.execution_context, r.created_at, r.expires_at \
         from hitl_requests r join orchestrator_runs o on o.run_id = r.run_id \
         where r.status = 'pending'",
        items_sql("r"),
        claim_sql("r"),
        approvals_sql("r")
    ));
    if let Some(t) = &filter.thread_id {
        q.push(" and r.thread_id = ")
            .push_bind(t.as_str().to_owned());
    }
    if let Some(b) = &filter.brief_id {
        q.push(" and r.brief_id = ")
            .push_bind(b.as_str().to_owned());
    }
    if let Some(n) = &filter.node_id {
        q.push(" and r.node_id = ").push_bind(n.clone());
    }
    if let Some((operator, groups)) = &filter.assigned_to {
        q.push(" and (coalesce(r.assignees -> 'users', '[]') ? ")
            .push_bind(operator.clone().unwrap_or_default())
            .push(" and ")
            .push_bind(operator.is_some())
            .push(" or coalesce(r.assignees -> 'groups', '[]') ?| ")
            .push_bind(groups.clone())
            .push(")");
    }
    if let Some(g) = &filter.group {
        q.push(" and coalesce(r.assignees -> 'groups', '[]') ? ")
            .push_bind(g.clone());
    }
    if let Some(text) = &filter.search {
        let pattern = format!("%{}%", like_escaped(text));
        q.push(" and (r.operator_prompt ilike ")
            .push_bind(pattern.clone())
            .push(" or exists (select 1 from jsonb_array_elements(coalesce(r.items, '[]')) i \
                   where i ->> 'title' ilike ")
            .push_bind(pattern.clone())
            .push(") or exists (select 1 from briefs b where b.brief_id = r.brief_id and b.title ilike ")
            .push_bind(pattern)
            .push("))");
    }
    if let Some(before) = &filter.expires_before {
        q.push(" and r.expires_at <= ").push_bind(*before);
    }
    if let Some((at, id)) = &filter.after {
        q.push(" and (r.created_at, r.request_id) > (")
            .push_bind(*at)
            .push(", ")
            .push_bind(id.as_str().to_owned())
            .push(")");
    }
    q.push(" order by r.created_at, r.request_id limit ")
        .push_bind(filter.limit);
    Ok(q.build_query_as::<PendingItem>()
        .fetch_all(executor)
        .await?)
}

/// `text` with `\\`, `%` and `_` escaped, so that `like` matches it literally.
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What an expiry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpireOutcome {
    /// The deadline passed and `action` was applied; the run is now `run_status`.
    Expired {
        run_id: RunId,
        action: TimeoutAction,
        run_status: RunStatus,
        version: i64,
    },
    /// The request was answered (or ended) first: nothing changed.
    AlreadySettled(RequestStatus),
    /// The deadline has not passed yet (or the request has none): nothing changed.
    NotDue(Option<DateTime<Utc>>),
}

/// What the locking read of an expiry brings: the request's deadline and items, its run
/// as locked, the run's version as the statement's snapshot saw it, and the run's chain
/// head.
#[derive(sqlx::FromRow)]
struct DeadlineRow {
    #[sqlx(flatten)]
    deadline: Deadline,
    #[sqlx(flatten)]
    run: super::snapshot::PrefixedRun,
    seen_version: Option<i64>,
}

/// A request's deadline, its items and its run's chain head.
#[derive(sqlx::FromRow)]
struct Deadline {
    status: RequestStatus,
    expires_at: Option<DateTime<Utc>>,
    on_timeout: Option<TimeoutAction>,
    #[sqlx(json)]
    items: Vec<RequestItem>,
    chain_head: Option<Vec<u8>>,
}

/// The columns of a [`Deadline`], of request `q`.
fn deadline_columns() -> String {
    format!(
        "q.status, q.expires_at, q.on_timeout, {} as items, \
         (select e.hash from run_audit_events e where e.run_id = q.run_id \
          order by e.run_version desc limit 1) as chain_head",
        items_sql("q")
    )
}

/// Expires `request_id` if its deadline has passed by `now` and it is still pending:
/// the request becomes `expired`, and the run goes back to `running` (the engine applies
/// `reject` or `approve` on its next step) or, for `cancel`, ends `cancelled`. Racing
/// with a resume, exactly one of them wins: both lock the run first. `advance` says who
/// moves a run left `running` on.
pub async fn expire_request(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    now: DateTime<Utc>,
    advance: AdvanceBy,
) -> Result<ExpireOutcome, PersistenceError> {
    let (outcome, applying) = expire(tx, request_id, now, None).await?;
    if let super::Applying::Unwritten(mut unwritten) = applying {
        unwritten.write.write(tx).await?;
        if advance == AdvanceBy::Job && unwritten.state.run.status == RunStatus::Running {
            let run_id = unwritten.write.run_id().clone();
            queue::enqueue(tx, &Advance { run_id }, None).await?;
        }
    }
    Ok(outcome)
}

/// [`expire_request`] by `job`, which moves the run on itself: an expiry that applies is
/// returned unwritten (as a resume is by `apply_command_for_job`), its job's completion
/// among its writes, with the run as it leaves it and the request as it expired.
pub async fn expire_request_for_job(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    now: DateTime<Utc>,
    job: super::JobClaim<'_>,
) -> Result<(ExpireOutcome, super::Applying), PersistenceError> {
    expire(tx, request_id, now, Some(job)).await
}

async fn expire(
    tx: &mut Tx<'_>,
    request_id: &RequestId,
    now: DateTime<Utc>,
    job: Option<super::JobClaim<'_>>,
) -> Result<(ExpireOutcome, super::Applying), PersistenceError> {
    let left = |o| Ok((o, super::Applying::Left));
    // One statement locks the run and reads the request with it; as for a command, a
    // transition committed while it waited for the lock shows in the locked run but not
    // in the request, so the request is read again when the versions differ.
    let locked: DeadlineRow = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select {}, {}, \
             (select v.version from orchestrator_runs v where v.run_id = q.run_id) \
                 as seen_version \
         from orchestrator_runs r join hitl_requests q on q.run_id = r.run_id \
         where q.request_id = $1 for no key update of r",
        deadline_columns(),
        super::snapshot::prefixed_run_columns("r"),
    )))
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| PersistenceError::NotFound {
        entity: "request",
        id: request_id.to_string(),
    })?;
    let record: super::RunRecord = locked.run.into();
    let row = if locked.seen_version == Some(record.version) {
        locked.deadline
    } else {
        crate::db::query_as(sqlx::AssertSqlSafe(format!(
            "select {} from hitl_requests q where q.request_id = $1",
            deadline_columns(),
        )))
        .bind(request_id)
        .fetch_one(&mut **tx)
        .await?
    };
    let run = super::LockedRun {
        run_id: record.run_id.clone(),
        status: record.status,
        pending_request_id: record.pending_request_id.clone(),
        version: record.version,
    };
    if row.status != RequestStatus::Pending {
        return left(ExpireOutcome::AlreadySettled(row.status));
    }
    let (Some(expires_at), Some(action)) = (row.expires_at, row.on_timeout) else {
        return left(ExpireOutcome::NotDue(None));
    };
    if expires_at > now {
        return left(ExpireOutcome::NotDue(Some(expires_at)));
    }
    let outcome = run.check(
        &Transition::Expire {
            request_id: request_id.clone(),
            action,
        },
        None,
    )?;
    // The request expired, the run moved (or cancelled), the event and the job's
    // completion: one write, which the run's next steps may join.
    let version = run.version + 1;
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let entry = AuditEntry {
        run_version: version,
        action: Some(AuditAction::Expire),
        request_id: Some(request_id),
        from_status: Some(run.status),
        to_status: Some(outcome.status),
        details: Some(json!({ "onTimeout": action, "expiresAt": expires_at })),
        ..AuditEntry::default()
    };
    let reason = (outcome.status == RunStatus::Cancelled)
        .then(|| "the request's deadline passed".to_owned());
    let mut write = super::TransitionWrite::new(run.clone(), row.chain_head);
    write.settle(
        super::transition::Settle {
            request_id: Some(request_id.clone()),
            request_status: RequestStatus::Expired,
            command_id: None,
            resolved_by: "system".to_owned(),
            answers: super::commands::Answers::default(),
            denial_reason: None,
            outcome: None,
            job: job.map(|j| (j.job_id.to_owned(), j.worker_id.to_owned())),
            finished_at: at,
        },
        outcome.status,
        entry,
    );
    if let Some(reason) = &reason {
        write.end_because(reason);
    }
    let mut state_run = record;
    state_run.status = outcome.status;
    state_run.pending_request_id = None;
    state_run.version = version;
    let expired = super::AnsweredRequest {
        request_id: request_id.clone(),
        status: RequestStatus::Expired,
        on_timeout: Some(action),
        resolved_at: Some(at),
        items: row.items,
        responses: Vec::new(),
    };
    Ok((
        ExpireOutcome::Expired {
            run_id: run.run_id.clone(),
            action,
            run_status: outcome.status,
            version,
        },
        super::Applying::Unwritten(Box::new(super::Unwritten {
            write,
            state: super::RunState {
                run: state_run,
                requests: vec![expired],
            },
        })),
    ))
}
