//! The plan a run follows: its typed model, the validation that turns a client's JSON
//! into it, and the canonical JSON the run stores.
//!
//! [`Plan::parse`] reads a `serde_json::Value` by hand rather than through serde derive,
//! so that a refusal names the exact field (`plan.nodes[1].prompt`) and node (`review`)
//! an API client has to fix. It reports the first error only: nodes in order, each
//! node's id and type first, then unknown fields, then its other fields in the order
//! `docs/PLANS.md` lists them; the rules across nodes (duplicate ids, `next` targets)
//! come after every node is well formed. [`Plan::to_json`] writes the canonical form,
//! with every default filled in, which parses back to the same plan.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value, json};

use crate::domain::status::{RejectionPolicy, ResponseType, TimeoutAction};

/// The most nodes a plan may have.
pub const MAX_NODES: usize = 500;

/// The longest a node id may be, in characters.
pub const MAX_NODE_ID_LEN: usize = 200;

/// The longest deadline a HITL node may set: one year, in seconds.
pub const MAX_TIMEOUT_SECONDS: u64 = 31_536_000;

const PLAN_FIELDS: &[&str] = &["nodes"];
const TASK_FIELDS: &[&str] = &["id", "type", "capability", "input", "config"];
const HITL_FIELDS: &[&str] = &[
    "id",
    "type",
    "prompt",
    "responseTypes",
    "options",
    "contract",
    "timeoutSeconds",
    "onTimeout",
    "onRejection",
    "next",
    "assignees",
    "approvals",
    "remindEverySeconds",
    "escalation",
];
const OPTION_FIELDS: &[&str] = &["id", "label"];
const CONTRACT_FIELDS: &[&str] = &["facets", "capabilityContract"];

/// A validated plan: the nodes a run goes through, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The nodes in execution order; at least one, at most [`MAX_NODES`], ids unique.
    pub nodes: Vec<Node>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique within the plan: 1 to [`MAX_NODE_ID_LEN`] characters of `[A-Za-z0-9_.-]`.
    pub id: String,
    /// What the node does.
    pub kind: NodeKind,
}

/// What a node does: its `type`, with that type's fields.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// `"type": "task"`: run a capability.
    Task(TaskNode),
    /// `"type": "hitl"`: pause the run until an operator answers.
    Hitl(HitlNode),
}

impl NodeKind {
    /// The node's `type` as written in a plan: `task` or `hitl`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Task(_) => "task",
            Self::Hitl(_) => "hitl",
        }
    }
}

/// A node that runs a capability.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskNode {
    /// The capability to run, e.g. `set`; known to the engine.
    pub capability: String,
    /// What the capability works on (default `{}`).
    pub input: Map<String, Value>,
    /// How the capability is set up, e.g. a webhook's `url` (default `{}`).
    pub config: Map<String, Value>,
}

/// A node that pauses the run and raises a HITL request.
#[derive(Clone, Debug, PartialEq)]
pub struct HitlNode {
    /// What the operator is asked; never blank.
    pub prompt: String,
    /// The kinds of answer accepted; at least one, no repeats.
    pub response_types: Vec<ResponseType>,
    /// The choices for an `option` answer; non-empty exactly when `response_types`
    /// holds [`ResponseType::Option`], ids unique.
    pub options: Vec<HitlOption>,
    /// The guidance shown to the operator with the request.
    pub contract: Contract,
    /// The deadline, 1 to [`MAX_TIMEOUT_SECONDS`] seconds after the request is raised.
    pub timeout_seconds: Option<u64>,
    /// What the deadline does; `Some` exactly when `timeout_seconds` is.
    pub on_timeout: Option<TimeoutAction>,
    /// What a rejection does to the run (default `fail`).
    pub on_rejection: RejectionPolicy,
    /// Where an `option` answer goes: option id → node id (never this node's own id).
    /// An option not listed goes on to the next node in order.
    pub next: BTreeMap<String, String>,
    /// Who may answer the node's requests; `None`: anyone with the operate scope.
    pub assignees: Option<crate::persistence::Assignees>,
    /// Distinct approvals (1 to [`MAX_APPROVALS`]) needed before a request resolves;
    /// `None`: one answer settles it. Only with `responseTypes` of approval (and
    /// rejection).
    pub approvals: Option<u32>,
    /// Reminders and escalation while the request is pending.
    pub follow_up: Option<Box<crate::persistence::FollowUp>>,
}

/// One choice offered by a HITL node.
#[derive(Clone, Debug, PartialEq)]
pub struct HitlOption {
    /// What an `option` answer sends as `optionId`; unique within the node.
    pub id: String,
    /// What the operator sees; never blank.
    pub label: String,
}

/// The guidance a HITL request carries (`contractSummary` on the request).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contract {
    /// The aspects the operator should judge, e.g. `tone`.
    pub facets: Vec<String>,
    /// What the node's capability promises, as free-form JSON.
    pub capability_contract: Map<String, Value>,
}

/// Why a plan was refused: where, and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}{in_node}: {message}", in_node = InNode(self.node.as_deref()))]
pub struct PlanError {
    /// The id of the node at fault, once that node's id is known to be valid.
    pub node: Option<String>,
    /// The path of the field at fault, e.g. `plan.nodes[1].prompt` or
    /// `plan.nodes[2].next.short`.
    pub field: String,
    /// What is wrong, for an API client, e.g. `is required`.
    pub message: String,
}

/// Writes ` (node "id")` when the node is known, nothing otherwise.
struct InNode<'a>(Option<&'a str>);

impl fmt::Display for InNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (node \"{id}\")"),
            None => Ok(()),
        }
    }
}

impl Plan {
    /// Validates a plan as a client sent it; `is_known_capability` says which task
    /// capabilities the engine can run. Returns the first error in document order.
    pub fn parse(
        value: &Value,
        is_known_capability: &dyn Fn(&str) -> bool,
    ) -> Result<Plan, PlanError> {
        let at = At {
            node: None,
            path: "plan",
        };
        let Value::Object(plan) = value else {
            return Err(at.error("plan", "must be a JSON object"));
        };
        at.refuse_unknown_fields(plan, PLAN_FIELDS, "a plan")?;
        let items = match present(plan, "nodes") {
            None => return Err(at.error_in("nodes", "is required")),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(at.error_in("nodes", "must be an array of nodes")),
        };
        if items.is_empty() {
            return Err(at.error_in("nodes", "must list at least one node"));
        }
        if items.len() > MAX_NODES {
            return Err(at.error_in(
                "nodes",
                format!("must list at most {MAX_NODES} nodes, not {}", items.len()),
            ));
        }
        let nodes = items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_node(item, &format!("plan.nodes[{i}]"), is_known_capability))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = check_ids_are_unique(&nodes)?;
        check_next_targets_exist(&nodes, &ids)?;
        Ok(Plan { nodes })
    }

    /// The canonical JSON form (camelCase, defaults filled in) that
    /// [`Plan::parse`] turns back into this plan.
    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self.nodes.iter().map(node_to_json).collect();
        json!({ "nodes": nodes })
    }

    /// The node with this id, if any.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// The index of the node with this id in execution order, if any.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.id == id)
    }
}

fn node_to_json(node: &Node) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), node.id.clone().into());
    out.insert("type".into(), node.kind.type_name().into());
    match &node.kind {
        NodeKind::Task(task) => {
            out.insert("capability".into(), task.capability.clone().into());
            out.insert("input".into(), Value::Object(task.input.clone()));
            out.insert("config".into(), Value::Object(task.config.clone()));
        }
        NodeKind::Hitl(hitl) => {
            let response_types: Vec<Value> = hitl
                .response_types
                .iter()
                .map(|kind| kind.as_str().into())
                .collect();
            let options: Vec<Value> = hitl
                .options
                .iter()
                .map(|option| json!({ "id": option.id, "label": option.label }))
                .collect();
            let next: Map<String, Value> = hitl
                .next
                .iter()
                .map(|(option_id, target)| (option_id.clone(), target.clone().into()))
                .collect();
            out.insert("prompt".into(), hitl.prompt.clone().into());
            out.insert("responseTypes".into(), response_types.into());
            out.insert("options".into(), options.into());
            out.insert(
                "contract".into(),
                json!({
                    "facets": hitl.contract.facets,
                    "capabilityContract": hitl.contract.capability_contract,
                }),
            );
            if let Some(seconds) = hitl.timeout_seconds {
                out.insert("timeoutSeconds".into(), seconds.into());
            }
            if let Some(action) = hitl.on_timeout {
                out.insert("onTimeout".into(), action.as_str().into());
            }
            out.insert("onRejection".into(), hitl.on_rejection.as_str().into());
            out.insert("next".into(), Value::Object(next));
            if let Some(a) = &hitl.assignees {
                out.insert(
                    "assignees".into(),
                    json!({ "users": a.users, "groups": a.groups }),
                );
            }
            if let Some(n) = hitl.approvals {
                out.insert("approvals".into(), json!({ "required": n }));
            }
            if let Some(f) = &hitl.follow_up {
                if let Some(every) = f.remind_every_seconds {
                    out.insert("remindEverySeconds".into(), every.into());
                }
                if !f.escalation.is_empty() {
                    out.insert(
                        "escalation".into(),
                        serde_json::to_value(&f.escalation).unwrap_or_default(),
                    );
                }
            }
        }
    }
    Value::Object(out)
}

/// Where a check is: the node (once its id is valid) and the path of the object being
/// read.
#[derive(Clone, Copy)]
struct At<'a> {
    node: Option<&'a str>,
    path: &'a str,
}

impl<'a> At<'a> {
    /// The same node, one object further down.
    fn within(self, path: &'a str) -> At<'a> {
        At { path, ..self }
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> PlanError {
        PlanError {
            node: self.node.map(str::to_owned),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error about the field `key` of the object at this path.
    fn error_in(&self, key: &str, message: impl Into<String>) -> PlanError {
        self.error(join(self.path, key), message)
    }

    fn refuse_unknown_fields(
        &self,
        object: &Map<String, Value>,
        allowed: &[&str],
        what: &str,
    ) -> Result<(), PlanError> {
        match object.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(self.error_in(
                key,
                format!("unknown field; {what} has only: {}", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// A required string that is not blank.
    fn text(&self, object: &Map<String, Value>, key: &str) -> Result<String, PlanError> {
        match present(object, key) {
            None => Err(self.error_in(key, "is required")),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(self.error_in(key, "must not be empty")),
            Some(_) => Err(self.error_in(key, "must be a string")),
        }
    }

    /// An optional JSON object, `{}` when absent.
    fn object(
        &self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Result<Map<String, Value>, PlanError> {
        match present(object, key) {
            None => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map.clone()),
            Some(_) => Err(self.error_in(key, "must be a JSON object")),
        }
    }
}

/// The field `key`, treating an explicit `null` as absent.
fn present<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|value| !value.is_null())
}

/// The path of field `key` inside `parent`: `parent.key`, or `parent["key"]` when the
/// key would make the path ambiguous (dots, spaces, brackets, …).
fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{parent}.{key}")
    } else {
        format!("{parent}[{}]", Value::from(key))
    }
}

/// Reads one of an enum's spellings, or says which are allowed.
fn choice<T>(
    at: &At<'_>,
    field: String,
    value: &Value,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &[&str],
) -> Result<T, PlanError> {
    value
        .as_str()
        .and_then(parse)
        .ok_or_else(|| at.error(field, format!("must be one of: {}", allowed.join(", "))))
}

fn is_valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_LEN).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_node(
    value: &Value,
    path: &str,
    is_known_capability: &dyn Fn(&str) -> bool,
) -> Result<Node, PlanError> {
    let anonymous = At { node: None, path };
    let Value::Object(object) = value else {
        return Err(anonymous.error(path, "must be a JSON object (a node)"));
    };
    let id = match present(object, "id") {
        None => return Err(anonymous.error_in("id", "is required")),
        Some(Value::String(id)) if is_valid_node_id(id) => id.clone(),
        Some(Value::String(_)) => {
            return Err(anonymous.error_in(
                "id",
                format!(
                    "must be 1 to {MAX_NODE_ID_LEN} characters, \
                     each a letter, a digit, '_', '.' or '-'"
                ),
            ));
        }
        Some(_) => return Err(anonymous.error_in("id", "must be a string")),
    };
    let at = At {
        node: Some(&id),
        path,
    };
    let kind = match present(object, "type").map(Value::as_str) {
        None => return Err(at.error_in("type", "is required")),
        Some(Some("task")) => {
            at.refuse_unknown_fields(object, TASK_FIELDS, "a task node")?;
            NodeKind::Task(parse_task(object, at, is_known_capability)?)
        }
        Some(Some("hitl")) => {
            at.refuse_unknown_fields(object, HITL_FIELDS, "a hitl node")?;
            NodeKind::Hitl(parse_hitl(object, at)?)
        }
        Some(_) => return Err(at.error_in("type", "must be one of: task, hitl")),
    };
    Ok(Node { id, kind })
}

fn parse_task(
    object: &Map<String, Value>,
    at: At<'_>,
    is_known_capability: &dyn Fn(&str) -> bool,
) -> Result<TaskNode, PlanError> {
    let capability = at.text(object, "capability")?;
    if !is_known_capability(&capability) {
        return Err(at.error_in("capability", "is not a known capability"));
    }
    Ok(TaskNode {
        capability,
        input: at.object(object, "input")?,
        config: at.object(object, "config")?,
    })
}

fn parse_hitl(object: &Map<String, Value>, at: At<'_>) -> Result<HitlNode, PlanError> {
    let prompt = at.text(object, "prompt")?;
    let response_types = parse_response_types(object, at)?;
    let options = parse_options(object, at, response_types.contains(&ResponseType::Option))?;
    let contract = parse_contract(object, at)?;
    let timeout_seconds = match present(object, "timeoutSeconds") {
        None => None,
        Some(value) => match value.as_u64() {
            Some(seconds) if (1..=MAX_TIMEOUT_SECONDS).contains(&seconds) => Some(seconds),
            _ => {
                return Err(at.error_in(
                    "timeoutSeconds",
                    format!("must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}"),
                ));
            }
        },
    };
    let on_timeout = match (present(object, "onTimeout"), timeout_seconds) {
        (None, None) => None,
        (None, Some(_)) => Some(TimeoutAction::Reject),
        (Some(_), None) => {
            return Err(at.error_in("onTimeout", "is only allowed together with timeoutSeconds"));
        }
        (Some(value), Some(_)) => Some(choice(
            &at,
            join(at.path, "onTimeout"),
            value,
            |s| TimeoutAction::parse(s).ok(),
            TimeoutAction::ALLOWED,
        )?),
    };
    let on_rejection = match present(object, "onRejection") {
        None => RejectionPolicy::default(),
        Some(value) => choice(
            &at,
            join(at.path, "onRejection"),
            value,
            |s| RejectionPolicy::parse(s).ok(),
            RejectionPolicy::ALLOWED,
        )?,
    };
    let next = parse_next(object, at, &options)?;
    let assignees = match present(object, "assignees") {
        None => None,
        Some(value) => Some(parse_assignees(value).map_err(|(field, why)| {
            at.error(format!("{}{field}", join(at.path, "assignees")), why)
        })?),
    };
    let approvals = match present(object, "approvals") {
        None => None,
        Some(value) => {
            let n = parse_approvals(value).map_err(|(field, why)| {
                at.error(format!("{}{field}", join(at.path, "approvals")), why)
            })?;
            approvals_fit(&response_types).map_err(|why| at.error_in("approvals", why))?;
            Some(n)
        }
    };
    let follow_up = parse_follow_up(
        present(object, "remindEverySeconds"),
        present(object, "escalation"),
    )
    .map_err(|(field, why)| at.error(format!("{}.{field}", at.path), why))?;
    Ok(HitlNode {
        follow_up,
        prompt,
        response_types,
        options,
        contract,
        timeout_seconds,
        on_timeout,
        on_rejection,
        next,
        assignees,
        approvals,
    })
}

/// The most escalation steps a request may have.
pub const MAX_ESCALATION_STEPS: usize = 10;

/// `remindEverySeconds` and `escalation` of a node or an agent's request. Errors: (the
/// field's path, why).
pub fn parse_follow_up(
    remind: Option<&Value>,
    escalation: Option<&Value>,
) -> Result<Option<Box<crate::persistence::FollowUp>>, (String, String)> {
    let whole = |v: &Value| {
        v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
    };
    let seconds = |v: &Value, field: String| match whole(v) {
        Some(n) if (1..=MAX_TIMEOUT_SECONDS).contains(&n) => Ok(n),
        _ => Err((
            field,
            format!("must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}"),
        )),
    };
    let remind_every_seconds = remind
        .filter(|v| !v.is_null())
        .map(|v| seconds(v, "remindEverySeconds".into()))
        .transpose()?;
    let mut steps = Vec::new();
    if let Some(value) = escalation.filter(|v| !v.is_null()) {
        let Some(items) = value.as_array() else {
            return Err(("escalation".into(), "must be an array of steps".into()));
        };
        if items.len() > MAX_ESCALATION_STEPS {
            return Err((
                "escalation".into(),
                format!("must have at most {MAX_ESCALATION_STEPS} steps"),
            ));
        }
        for (i, item) in items.iter().enumerate() {
            let at = format!("escalation[{i}]");
            let Some(step) = item.as_object() else {
                return Err((
                    at,
                    "must be an object {afterSeconds, addAssignees, notify}".into(),
                ));
            };
            if let Some(key) = step
                .keys()
                .find(|k| !matches!(k.as_str(), "afterSeconds" | "addAssignees" | "notify"))
            {
                return Err((
                    format!("{at}.{key}"),
                    "is not a field of an escalation step (afterSeconds, addAssignees, notify)"
                        .into(),
                ));
            }
            let after_seconds = match step.get("afterSeconds") {
                None => return Err((format!("{at}.afterSeconds"), "is required".into())),
                Some(v) => seconds(v, format!("{at}.afterSeconds"))?,
            };
            let add_assignees = match step.get("addAssignees").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(
                    parse_assignees(v)
                        .map_err(|(f, why)| (format!("{at}.addAssignees{f}"), why))?,
                ),
            };
            let notify = match step.get("notify").filter(|v| !v.is_null()) {
                None => Vec::new(),
                Some(Value::Array(names)) => names
                    .iter()
                    .enumerate()
                    .map(|(j, n)| match n.as_str() {
                        Some(s) if (1..=64).contains(&s.len()) => Ok(s.to_owned()),
                        _ => Err((
                            format!("{at}.notify[{j}]"),
                            "must be a channel name (1 to 64 characters)".into(),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err((
                        format!("{at}.notify"),
                        "must be an array of channel names".into(),
                    ));
                }
            };
            if add_assignees.is_none() && notify.is_empty() {
                return Err((at, "must add assignees or notify a channel".into()));
            }
            steps.push(crate::persistence::EscalationStep {
                after_seconds,
                add_assignees,
                notify,
            });
        }
    }
    if remind_every_seconds.is_none() && steps.is_empty() {
        return Ok(None);
    }
    Ok(Some(Box::new(crate::persistence::FollowUp {
        remind_every_seconds,
        escalation: steps,
        ..Default::default()
    })))
}

/// The most approvals a request may need.
pub const MAX_APPROVALS: u32 = 20;

/// `{required: N}`, N a whole number from 1 to [`MAX_APPROVALS`]. Errors: (path under
/// `approvals`, why).
pub fn parse_approvals(value: &Value) -> Result<u32, (String, String)> {
    let Some(object) = value.as_object() else {
        return Err((String::new(), "must be an object: {\"required\": N}".into()));
    };
    if let Some(key) = object.keys().find(|k| k.as_str() != "required") {
        return Err((
            format!(".{key}"),
            "is not a field of approvals (required)".into(),
        ));
    }
    // `2.0` is the whole number 2 to JSON Schema, and so to `/openapi.json`.
    let whole = |v: &Value| {
        v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
    };
    match object.get("required").map(whole) {
        None => Err((".required".into(), "is required".into())),
        Some(Some(n)) if (1..=u64::from(MAX_APPROVALS)).contains(&n) => Ok(n as u32),
        Some(_) => Err((
            ".required".into(),
            format!("must be a whole number from 1 to {MAX_APPROVALS}"),
        )),
    }
}

/// Whether answers of `types` can be counted as approvals: approval must be among them,
/// and nothing but approval and rejection (two different choices cannot add up).
pub fn approvals_fit(types: &[ResponseType]) -> Result<(), String> {
    if !types.contains(&ResponseType::Approval)
        || types
            .iter()
            .any(|t| !matches!(t, ResponseType::Approval | ResponseType::Rejection))
    {
        return Err(
            "needs responseTypes of approval (and rejection) only: each approval is the same decision"
                .into(),
        );
    }
    Ok(())
}

/// At most this many users, and this many groups, per request.
pub const MAX_ASSIGNEES: usize = 100;

/// `{users: [operator ids], groups: [names]}`: each 1 to 256 characters, not blank, at most
/// [`MAX_ASSIGNEES`] of each, at least one in all. Errors: (path under `assignees`, why).
pub fn parse_assignees(value: &Value) -> Result<crate::persistence::Assignees, (String, String)> {
    let Some(object) = value.as_object() else {
        return Err((
            String::new(),
            "must be an object of users and groups".into(),
        ));
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "users" | "groups"))
    {
        return Err((
            format!(".{key}"),
            "is not a field of assignees (users, groups)".into(),
        ));
    }
    let list = |key: &str| -> Result<Vec<String>, (String, String)> {
        let Some(value) = object.get(key).filter(|v| !v.is_null()) else {
            return Ok(Vec::new());
        };
        let Some(items) = value.as_array() else {
            return Err((format!(".{key}"), "must be an array of strings".into()));
        };
        if items.len() > MAX_ASSIGNEES {
            return Err((
                format!(".{key}"),
                format!("must list at most {MAX_ASSIGNEES}"),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some(s) if !s.trim().is_empty() && s.chars().count() <= 256 => Ok(s.to_owned()),
                _ => Err((
                    format!(".{key}[{i}]"),
                    "must be a string of 1 to 256 characters, not blank".into(),
                )),
            })
            .collect()
    };
    let assignees = crate::persistence::Assignees {
        users: list("users")?,
        groups: list("groups")?,
    };
    if assignees.users.is_empty() && assignees.groups.is_empty() {
        return Err((String::new(), "must name at least one user or group".into()));
    }
    Ok(assignees)
}

fn parse_response_types(
    object: &Map<String, Value>,
    at: At<'_>,
) -> Result<Vec<ResponseType>, PlanError> {
    let field = join(at.path, "responseTypes");
    let items = match present(object, "responseTypes") {
        None => return Err(at.error(field, "is required")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(at.error(field, "must be an array of response types")),
    };
    // `edit` changes a tool's arguments: only an agent's tool approval has them.
    const FOR_NODES: [&str; 4] = ["approval", "rejection", "option", "freeform"];
    if items.is_empty() {
        let allowed = FOR_NODES.join(", ");
        return Err(at.error(field, format!("must list at least one of: {allowed}")));
    }
    let mut types = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let parse = |s: &str| {
            ResponseType::parse(s)
                .ok()
                .filter(|t| *t != ResponseType::Edit)
        };
        let kind = choice(&at, item_field.clone(), item, parse, &FOR_NODES)?;
        if let Some(first) = types.iter().position(|seen| *seen == kind) {
            return Err(at.error(item_field, format!("duplicates {field}[{first}]")));
        }
        types.push(kind);
    }
    Ok(types)
}

fn parse_options(
    object: &Map<String, Value>,
    at: At<'_>,
    wanted: bool,
) -> Result<Vec<HitlOption>, PlanError> {
    let field = join(at.path, "options");
    let items: &[Value] = match present(object, "options") {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(at.error(field, "must be an array of options")),
    };
    if wanted && items.is_empty() {
        return Err(at.error(
            field,
            "must list at least one option when responseTypes includes \"option\"",
        ));
    }
    // Options without the `option` response type are allowed: DESIGN.md's own example
    // offers them as suggestions the operator may mention in a freeform answer.
    let mut options: Vec<HitlOption> = Vec::with_capacity(items.len());
    // Nothing bounds the number of options but the body size, so look ids up in a map
    // rather than rescanning the list for each one.
    let mut first_index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let at = at.within(&path);
        let Value::Object(option) = item else {
            return Err(at.error(
                path.as_str(),
                "must be a JSON object with an id and a label",
            ));
        };
        at.refuse_unknown_fields(option, OPTION_FIELDS, "an option")?;
        let id = at.text(option, "id")?;
        if let Some(first) = first_index.insert(id.clone(), i) {
            return Err(at.error_in("id", format!("duplicates the id of {field}[{first}]")));
        }
        let label = at.text(option, "label")?;
        options.push(HitlOption { id, label });
    }
    Ok(options)
}

fn parse_contract(object: &Map<String, Value>, at: At<'_>) -> Result<Contract, PlanError> {
    let path = join(at.path, "contract");
    let contract = match present(object, "contract") {
        None => return Ok(Contract::default()),
        Some(Value::Object(contract)) => contract,
        Some(_) => return Err(at.error(path, "must be a JSON object")),
    };
    let at = at.within(&path);
    at.refuse_unknown_fields(contract, CONTRACT_FIELDS, "a contract")?;
    let facets = match present(contract, "facets") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(facet) => Ok(facet.clone()),
                _ => Err(at.error(format!("{path}.facets[{i}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(at.error_in("facets", "must be an array of strings")),
    };
    Ok(Contract {
        facets,
        capability_contract: at.object(contract, "capabilityContract")?,
    })
}

fn parse_next(
    object: &Map<String, Value>,
    at: At<'_>,
    options: &[HitlOption],
) -> Result<BTreeMap<String, String>, PlanError> {
    let path = join(at.path, "next");
    let routes = match present(object, "next") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(routes)) => routes,
        Some(_) => {
            return Err(at.error(path, "must be a JSON object mapping option ids to node ids"));
        }
    };
    let option_ids: HashSet<&str> = options.iter().map(|option| option.id.as_str()).collect();
    let mut next = BTreeMap::new();
    for (option_id, target) in routes {
        let field = join(&path, option_id);
        if !option_ids.contains(option_id.as_str()) {
            return Err(at.error(field, "is not an option id of this node"));
        }
        let Value::String(target) = target else {
            return Err(at.error(field, "must be a node id (a string)"));
        };
        if at.node == Some(target.as_str()) {
            return Err(at.error(field, "routes the node to itself; name another node"));
        }
        next.insert(option_id.clone(), target.clone());
    }
    Ok(next)
}

/// Checks that no two nodes share an id; returns every id.
fn check_ids_are_unique(nodes: &[Node]) -> Result<HashSet<&str>, PlanError> {
    let mut first_index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        if let Some(first) = first_index.insert(&node.id, i) {
            return Err(PlanError {
                node: Some(node.id.clone()),
                field: format!("plan.nodes[{i}].id"),
                message: format!("duplicates the id of plan.nodes[{first}]"),
            });
        }
    }
    Ok(first_index.into_keys().collect())
}

fn check_next_targets_exist(nodes: &[Node], ids: &HashSet<&str>) -> Result<(), PlanError> {
    for (i, node) in nodes.iter().enumerate() {
        let NodeKind::Hitl(hitl) = &node.kind else {
            continue;
        };
        for (option_id, target) in &hitl.next {
            if !ids.contains(target.as_str()) {
                return Err(PlanError {
                    node: Some(node.id.clone()),
                    field: join(&format!("plan.nodes[{i}].next"), option_id),
                    message: "names no node of this plan".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
