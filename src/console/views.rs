//! What the pages show, prepared from the service's types: every value already a string
//! (the templates only place and escape them), times in UTC with their age, JSON
//! pretty-printed, people named as "Display Name (id)".

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::{Operator, ResponseType, TimeoutAction};
use crate::service::{
    Approvals, Assignees, AuditRecord, BriefRecord, InboxEntry, RequestItem, RequestView,
    ResponseRecord, RunSnapshot,
};

/// A point in time, as every page writes it.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago `t` was: "12 s", "4 min", "3 h", "2 d".
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    span((now - t).num_seconds().max(0))
}

fn span(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 48 * 3600 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// JSON for reading: indented.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// "Alice Ops (alice)", or the id alone.
pub fn person(o: &Operator) -> String {
    match &o.display_name {
        Some(name) if !name.is_empty() && name != &o.id => format!("{name} ({})", o.id),
        _ => o.id.clone(),
    }
}

/// A deadline and what happens when it passes.
pub struct Deadline {
    pub at: String,
    /// "in 3 h", or "4 min ago" once passed.
    pub relative: String,
    pub on_timeout: String,
}

fn deadline(
    expires_at: Option<DateTime<Utc>>,
    on_timeout: Option<TimeoutAction>,
    now: DateTime<Utc>,
) -> Option<Deadline> {
    let at = expires_at?;
    let left = (at - now).num_seconds();
    let relative = if left >= 0 {
        format!("in {}", span(left))
    } else {
        format!("{} ago", span(-left))
    };
    let on_timeout = match on_timeout {
        Some(TimeoutAction::Approve) => "then it is approved",
        Some(TimeoutAction::Reject) => "then it is rejected",
        Some(TimeoutAction::Cancel) => "then the run is cancelled",
        None => "",
    };
    Some(Deadline {
        at: when(at),
        relative,
        on_timeout: on_timeout.to_owned(),
    })
}

fn assignees(a: Option<&Assignees>) -> Option<String> {
    let a = a?;
    let mut names: Vec<String> = a.users.clone();
    names.extend(a.groups.iter().map(|g| format!("group {g}")));
    Some(names.join(", "))
}

fn approvals(a: Option<&Approvals>) -> Option<String> {
    let a = a?;
    let by: Vec<String> = a.by.iter().map(|b| person(&b.operator)).collect();
    Some(if by.is_empty() {
        format!("{} of {}", a.have, a.required)
    } else {
        format!("{} of {} ({})", a.have, a.required, by.join(", "))
    })
}

/// One item as the inbox lists it.
pub struct ItemLine {
    pub title: String,
    pub tool: Option<String>,
}

/// One row of the inbox.
pub struct InboxRow {
    pub request_id: String,
    pub prompt: String,
    pub node: String,
    pub run_id: String,
    pub thread_id: String,
    pub brief_id: String,
    pub brief_title: String,
    pub created: String,
    pub age: String,
    pub deadline: Option<Deadline>,
    pub items: Vec<ItemLine>,
    pub assignees: Option<String>,
    pub claim: Option<String>,
    pub approvals: Option<String>,
}

impl InboxRow {
    pub fn new(e: InboxEntry, now: DateTime<Utc>) -> Self {
        let i = e.item;
        Self {
            request_id: i.pending_request_id.to_string(),
            prompt: i.operator_prompt,
            node: i.pending_node_id,
            run_id: i.run_id.to_string(),
            thread_id: i.thread_id.to_string(),
            brief_id: i.brief_id.to_string(),
            brief_title: e.brief_title,
            created: when(i.created_at),
            age: age(i.created_at, now),
            deadline: deadline(i.expires_at, e.on_timeout, now),
            items: i
                .items
                .iter()
                .map(|item| ItemLine {
                    title: item.title.clone(),
                    tool: item.tool.as_ref().map(|t| t.name.clone()),
                })
                .collect(),
            assignees: assignees(i.assignees.as_ref().map(|a| &a.0)),
            claim: claim(i.claimed_by.as_ref().map(|c| &c.0), i.claim_expires_at, now),
            approvals: approvals(i.approvals.as_ref().map(|a| &a.0)),
        }
    }
}

fn claim(
    holder: Option<&crate::domain::ClaimHolder>,
    until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    let (holder, until) = (holder?, until?);
    Some(format!(
        "{} for {} more",
        person(&holder.operator),
        span((until - now).num_seconds().max(0))
    ))
}

/// One answer an item offers, as a radio button.
pub struct Choice {
    /// The field's value (`approve`, `reject`, `option-N`, `freeform`, `edit`).
    pub value: String,
    pub label: String,
}

/// One item of a request, with what its part of the answer form needs.
pub struct ItemView {
    pub index: usize,
    pub item_id: String,
    pub title: String,
    pub tool: Option<String>,
    pub arguments: Option<String>,
    pub choices: Vec<Choice>,
    pub offers_edit: bool,
}

impl ItemView {
    fn new(index: usize, item: &RequestItem) -> Self {
        let mut choices = Vec::new();
        for t in &item.response_types {
            match t {
                ResponseType::Approval => {
                    choices.push(("approve".to_owned(), "Approve".to_owned()))
                }
                ResponseType::Rejection => choices.push(("reject".into(), "Reject".into())),
                ResponseType::Option => {
                    for (k, option) in item.options.iter().enumerate() {
                        choices.push((format!("option-{k}"), format!("Choose: {}", option.label)));
                    }
                }
                ResponseType::Freeform => {
                    choices.push(("freeform".into(), "Answer in words (below)".into()));
                }
                ResponseType::Edit => {
                    choices.push(("edit".into(), "Approve with the edited arguments".into()));
                }
            }
        }
        Self {
            index,
            item_id: item.item_id.clone(),
            title: item.title.clone(),
            tool: item.tool.as_ref().map(|t| t.name.clone()),
            arguments: item.tool.as_ref().map(|t| pretty(&t.arguments)),
            choices: choices
                .into_iter()
                .map(|(value, label)| Choice { value, label })
                .collect(),
            offers_edit: item.response_types.contains(&ResponseType::Edit),
        }
    }
}

/// An answer given, for a settled request.
pub struct AnswerView {
    pub item_id: String,
    pub answer: String,
    pub text: Option<String>,
    pub by: String,
    pub at: String,
}

impl AnswerView {
    fn new(r: &ResponseRecord) -> Self {
        let answer = match r.response_type {
            ResponseType::Approval => "approved".to_owned(),
            ResponseType::Rejection => "rejected".to_owned(),
            ResponseType::Option => format!("chose {}", r.option_id.as_deref().unwrap_or("?")),
            ResponseType::Freeform => "answered".to_owned(),
            ResponseType::Edit => format!(
                "approved with arguments {}",
                r.edited_arguments
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default()
            ),
        };
        Self {
            item_id: r.item_id.clone().unwrap_or_default(),
            answer,
            text: r.freeform_text.clone(),
            by: r
                .responder_display_name
                .clone()
                .or_else(|| r.responder_id.clone())
                .unwrap_or_default(),
            at: when(r.created_at),
        }
    }
}

/// One event of the run's audit trail.
pub struct AuditView {
    pub at: String,
    pub action: String,
    pub actor: Option<String>,
    pub principal: Option<String>,
    pub note: Option<String>,
    pub change: String,
    pub details: Option<String>,
}

impl AuditView {
    pub fn new(e: &AuditRecord) -> Self {
        let change = match e.from_status {
            Some(from) if from != e.to_status => format!("{from} → {}", e.to_status),
            _ => e.to_status.to_string(),
        };
        Self {
            at: when(e.at),
            action: e.action.to_string(),
            actor: e.operator.as_ref().map(|o| {
                person(&Operator {
                    id: o.id.clone(),
                    display_name: o.display_name.clone(),
                    email: None,
                })
            }),
            principal: e.principal.clone(),
            note: e.note.clone(),
            change,
            details: match &e.details {
                Value::Object(m) if m.is_empty() => None,
                Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }
}

/// Everything the detail page shows of a request and its run.
pub struct RequestDetail {
    pub request_id: String,
    pub prompt: String,
    pub node: String,
    pub status: String,
    pub pending: bool,
    pub run_id: String,
    pub run_status: String,
    pub thread_id: String,
    pub brief_id: String,
    pub brief_title: String,
    pub brief_content: String,
    pub created: String,
    pub age: String,
    pub deadline: Option<Deadline>,
    pub assignees: Option<String>,
    pub claim: Option<String>,
    /// Whether the signed-in operator holds the claim (the page then offers a release).
    pub claimed_by_me: bool,
    pub approvals: Option<String>,
    pub facets: Vec<String>,
    pub capability_contract: Option<String>,
    pub execution_context: String,
    pub items: Vec<ItemView>,
    pub answers: Vec<AnswerView>,
    pub settled: Option<String>,
    pub timeline: Vec<AuditView>,
}

impl RequestDetail {
    pub fn new(
        view: RequestView,
        run: &RunSnapshot,
        brief: &BriefRecord,
        me: (&str, &Operator),
        now: DateTime<Utc>,
    ) -> Self {
        let r = view.request;
        let contract = &r.contract_summary;
        let facets = contract["facets"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let capability_contract = contract
            .get("capabilityContract")
            .filter(|c| !c.is_null())
            .map(pretty);
        let holder = r.claimed_by.as_ref().map(|c| &c.0);
        let settled = r.resolved_at.map(|at| {
            let mut s = format!("{} at {}", r.status, when(at));
            if let Some(by) = &r.resolved_by {
                s.push_str(&format!(" by {by}"));
            }
            if let Some(reason) = &r.denial_reason {
                s.push_str(&format!(": {reason}"));
            }
            s
        });
        Self {
            request_id: r.request_id.to_string(),
            prompt: r.operator_prompt.clone(),
            node: r.node_id.clone(),
            status: r.status.to_string(),
            pending: r.status.is_pending(),
            run_id: view.run_id.to_string(),
            run_status: view.run_status.to_string(),
            thread_id: view.thread_id.to_string(),
            brief_id: view.brief_id.to_string(),
            brief_title: brief.title.clone(),
            brief_content: pretty(&brief.content),
            created: when(r.created_at),
            age: age(r.created_at, now),
            deadline: deadline(r.expires_at, r.on_timeout, now),
            assignees: assignees(r.assignees.as_ref().map(|a| &a.0)),
            claim: claim(holder, r.claim_expires_at, now),
            claimed_by_me: holder.is_some_and(|h| h.is(Some(me.0), me.1)),
            approvals: approvals(r.approvals.as_ref().map(|a| &a.0)),
            facets,
            capability_contract,
            execution_context: pretty(&run.run.execution_context),
            items: r
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| ItemView::new(i, item))
                .collect(),
            answers: r.responses.iter().map(AnswerView::new).collect(),
            settled,
            timeline: run.audit_log.iter().map(AuditView::new).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!(span(5), "5 s");
        assert_eq!(span(125), "2 min");
        assert_eq!(span(3 * 3600 + 5), "3 h");
        assert_eq!(span(3 * 86_400), "3 d");
    }

    #[test]
    fn people_are_named_with_their_id() {
        let mut o = Operator {
            id: "alice".into(),
            ..Operator::default()
        };
        assert_eq!(person(&o), "alice");
        o.display_name = Some("Alice Ops".into());
        assert_eq!(person(&o), "Alice Ops (alice)");
    }
}
