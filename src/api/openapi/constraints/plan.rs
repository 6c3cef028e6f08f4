//! The plan a run follows, as `/openapi.json` states it (`Plan`, `TaskNode`, `HitlNode`,
//! …): every rule of a single node the plan parser (`engine::plan`) enforces. The rules
//! across nodes (ids unique, `next` naming another node) and the deployment's agent URL
//! allow-list are beyond JSON Schema; the descriptions say them.

use serde_json::{Value, json};

use super::{not_blank, not_blank_pattern, or_null, reference, text};
use crate::domain::{RejectionPolicy, TimeoutAction};
use crate::service::input::{
    MAX_APPROVALS, MAX_ASSIGNEES, MAX_NODE_ID_LEN, MAX_NODES, MAX_TIMEOUT_SECONDS,
};

/// The capabilities a `task` node may name: the engine's built-ins and `agent.webhook`
/// (`Engine::for_service`); `tests/it/openapi.rs` checks this against the registry.
pub const CAPABILITIES: &[&str] = &["agent.webhook", "fail", "set"];

/// The plan's schemas, to add to `components.schemas`.
pub(super) fn components() -> Vec<(&'static str, Value)> {
    let timeout_actions: Vec<Value> = TimeoutAction::ALLOWED
        .iter()
        .map(|s| Value::from(*s))
        .chain([Value::Null])
        .collect();
    let rejection_policies: Vec<Value> = RejectionPolicy::ALLOWED
        .iter()
        .map(|s| Value::from(*s))
        .chain([Value::Null])
        .collect();
    vec![
        (
            "NodeId",
            json!({
                "description": format!("A plan node's id: 1 to {MAX_NODE_ID_LEN} letters, digits, \
                    '_', '.' or '-', unique within the plan."),
                "type": "string",
                "pattern": format!("^[A-Za-z0-9_.-]{{1,{MAX_NODE_ID_LEN}}}$"),
            }),
        ),
        (
            "Plan",
            json!({
                "description": format!("The nodes a run goes through, in order (docs/PLANS.md). \
                    Beyond this schema: node ids are unique, each `next` target names another \
                    node of the plan, and a `task` node's `config` suits its capability \
                    (`agent.webhook`: `config.url` under HITL_AGENT_ALLOWED_URLS); a plan \
                    breaking one is 422 `invalid_plan` naming the node and field. At most \
                    {MAX_NODES} nodes."),
                "type": "object",
                "additionalProperties": false,
                "required": ["nodes"],
                "properties": {
                    "nodes": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_NODES,
                        "items": { "oneOf": [reference("TaskNode"), reference("HitlNode")] },
                    },
                },
            }),
        ),
        (
            "TaskNode",
            json!({
                "description": "A node that runs a capability.",
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "type", "capability"],
                "properties": {
                    "id": reference("NodeId"),
                    "type": { "const": "task" },
                    "capability": { "enum": CAPABILITIES },
                    "input": or_null(reference("JsonObject")),
                    "config": or_null(reference("JsonObject")),
                },
                "if": { "required": ["capability"],
                        "properties": { "capability": { "const": "agent.webhook" } } },
                "then": {
                    "required": ["config"],
                    "properties": { "config": {
                        "type": "object",
                        "required": ["url"],
                        "properties": { "url": {
                            "type": "string",
                            "description": "an http:// or https:// URL under one of HITL_AGENT_ALLOWED_URLS \
                                (a setting of the deployment)",
                        } },
                    } },
                },
            }),
        ),
        (
            "HitlNode",
            json!({
                "description": "A node that pauses the run until an operator answers. Beyond \
                    this schema: option ids are unique within the node, and `next` maps some of \
                    them to other nodes of the plan.",
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "type", "prompt", "responseTypes"],
                "properties": {
                    "id": reference("NodeId"),
                    "type": { "const": "hitl" },
                    "prompt": not_blank(None),
                    // `edit` is for an agent's tool approvals: a node has no arguments.
                    "responseTypes": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": true,
                        "items": { "enum": ["approval", "rejection", "option", "freeform"] },
                    },
                    "options": {
                        "type": ["array", "null"],
                        "items": reference("HitlOptionIn"),
                    },
                    "contract": or_null(reference("ContractIn")),
                    "timeoutSeconds": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "maximum": MAX_TIMEOUT_SECONDS,
                    },
                    "onTimeout": { "enum": timeout_actions },
                    "onRejection": { "enum": rejection_policies },
                    "next": {
                        "type": ["object", "null"],
                        "description": "option id → the node an `option` answer goes to",
                        "propertyNames": { "pattern": not_blank_pattern() },
                        "additionalProperties": reference("NodeId"),
                    },
                    "assignees": { "oneOf": [ { "type": "null" }, {
                        "type": "object",
                        "description": "who may answer: these operator ids and the members of these groups",
                        "additionalProperties": false,
                        "properties": {
                            "users": { "type": ["array", "null"], "maxItems": MAX_ASSIGNEES,
                                       "items": { "type": "string", "minLength": 1, "maxLength": 256,
                                                  "pattern": not_blank_pattern() } },
                            "groups": { "type": ["array", "null"], "maxItems": MAX_ASSIGNEES,
                                        "items": { "type": "string", "minLength": 1, "maxLength": 256,
                                                   "pattern": not_blank_pattern() } },
                        },
                        "anyOf": [
                            { "required": ["users"], "properties": { "users": { "type": "array", "minItems": 1 } } },
                            { "required": ["groups"], "properties": { "groups": { "type": "array", "minItems": 1 } } },
                        ],
                    } ] },
                    "approvals": { "oneOf": [ { "type": "null" }, {
                        "type": "object",
                        "description": "distinct approvals needed before the request resolves (each by another operator, or another act-as credential)",
                        "additionalProperties": false,
                        "required": ["required"],
                        "properties": {
                            "required": { "type": "integer", "minimum": 1, "maximum": MAX_APPROVALS },
                        },
                    } ] },
                },
                "allOf": [
                    {
                        "description": "an `option` answer needs options to choose from",
                        "if": { "required": ["responseTypes"], "properties": {
                            "responseTypes": { "type": "array", "contains": { "const": "option" } } } },
                        "then": { "required": ["options"], "properties": {
                            "options": { "type": "array", "minItems": 1 } } },
                    },
                    {
                        "description": "approvals count answers of approval (and rejection) only",
                        "if": { "required": ["approvals"], "properties": {
                            "approvals": { "type": "object" } } },
                        "then": { "required": ["responseTypes"], "properties": {
                            "responseTypes": { "type": "array", "contains": { "const": "approval" },
                                               "items": { "enum": ["approval", "rejection"] } } } },
                    },
                    {
                        "description": "onTimeout only together with timeoutSeconds",
                        "if": { "required": ["onTimeout"], "properties": {
                            "onTimeout": { "type": "string" } } },
                        "then": { "required": ["timeoutSeconds"], "properties": {
                            "timeoutSeconds": { "type": "integer" } } },
                    },
                ],
            }),
        ),
        (
            "HitlOptionIn",
            json!({
                "description": "One choice a HITL node offers.",
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "label"],
                "properties": { "id": not_blank(None), "label": not_blank(None) },
            }),
        ),
        (
            "ContractIn",
            json!({
                "description": "The guidance shown to the operator with the request.",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "facets": { "type": ["array", "null"], "items": text(None, false) },
                    "capabilityContract": or_null(reference("JsonObject")),
                },
            }),
        ),
    ]
}
