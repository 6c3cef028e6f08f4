//! What the parsers enforce, stated in `/openapi.json` so that a request the document
//! calls valid is accepted and one it calls invalid is refused: the ranges, lengths and
//! id formats of every query, path and header parameter and body field; `runId`-or-
//! `threadId` and `brief`-or-`briefId`; a plan's nodes; and, everywhere, no U+0000 and no
//! integer beyond 64 bits (what `domain::storable` refuses).
//!
//! Each rule is written from the constant its parser uses (`input::MAX_TITLE`,
//! `ResponseType::ALLOWED`, …), so a limit changed in one place changes here too. The
//! character classes follow Rust's definitions: `str::trim` and `char::is_whitespace`
//! (Unicode `White_Space`), `char::is_control` (category Cc). What JSON Schema cannot say
//! (a plan's node ids unique, `next` naming one of its nodes, an option id given once per
//! node, the agent URL allow-list of the deployment, an answer fitting the request it
//! answers) is said in the descriptions and in docs/API.md.

use serde_json::{Value, json};

use super::super::outcome::MAX_WAIT_SECONDS;
use crate::service::input::{
    DEFAULT_PAGE_SIZE, MAX_LONG_TEXT, MAX_PAGE_SIZE, MAX_SHORT_TEXT, MAX_TITLE, THREAD_ID_MAX_CHARS,
};

mod plan;
pub use plan::CAPABILITIES;

/// Most answers in one resume (`validate_responses`).
const MAX_RESPONSES: usize = 100;

/// Unicode `White_Space`, what `str::trim` removes, as a regex class body.
const WHITE_SPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Unicode category Cc, what `char::is_control` matches, as a regex class body.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";
/// Any text PostgreSQL can store: no U+0000.
const NO_NUL: &str = r"^[^\u0000]*$";

/// Text that is not blank once trimmed, without U+0000.
fn not_blank_pattern() -> String {
    format!(r"^[^\u0000]*[^\u0000{WHITE_SPACE}][^\u0000]*$")
}

/// `ThreadId::parse`: no control character, not only white space (length apart).
fn thread_id_pattern() -> String {
    format!(r"^[^{CONTROL}]*[^{CONTROL}{WHITE_SPACE}][^{CONTROL}]*$")
}

/// A generated id: `{prefix}_` and 32 lowercase hex digits.
fn prefixed(prefix: &str) -> String {
    format!("^{prefix}_[0-9a-f]{{32}}$")
}

/// `input::pending_cursor`: the hex (either case) of `{micros}:{requestId}`, the micros
/// 1 to 18 digits.
fn cursor_pattern() -> String {
    let hex_digit = "(?:3[0-9]|6[1-6])";
    format!("^(?:3[0-9]){{1,18}}3[aA]6869746[cC]5[fF]7265715[fF]{hex_digit}{{32}}$")
}

/// A regex class of the ASCII bytes `admit` accepts (`\t` and space to `~` at most).
fn class(admit: impl Fn(u8) -> bool) -> String {
    let mut out = String::from("[");
    let mut b = 0u8;
    while b <= 0x7e {
        if !admit(b) {
            b += 1;
            continue;
        }
        let start = b;
        while b < 0x7e && admit(b + 1) {
            b += 1;
        }
        out.push_str(&format!("\\x{start:02x}"));
        if b > start {
            out.push_str(&format!("-\\x{b:02x}"));
        }
        b += 1;
    }
    out.push(']');
    out
}

/// `outcome::prefer_wait`: comma-separated preferences of visible ASCII, blanks and
/// tabs; any one whose name (before its first `=` or `;`, trimmed) is `wait` in any
/// case must have a value that is, trimmed and unquoted, a whole number from 0 to
/// `MAX_WAIT_SECONDS` (an optional `+`, leading zeros). Written without look-ahead, so
/// that every regex dialect reads it alike: a name other than `wait` is spelled out as
/// "differs from it at some letter, or goes on after it".
fn prefer_pattern() -> String {
    let in_piece = |b: u8| b == b'\t' || ((0x20..=0x7e).contains(&b) && b != b',');
    let in_name = |b: u8| in_piece(b) && b != b';' && b != b'=';
    let any = format!("{}*", class(in_piece));
    let name_char = class(in_name);
    let not = |letter: u8| {
        class(move |b| in_name(b) && !b.eq_ignore_ascii_case(&letter) && b != b' ' && b != b'\t')
    };
    let not_after = |letter: u8| class(move |b| in_name(b) && !b.eq_ignore_ascii_case(&letter));
    let blank = "[\\t ]*";
    let seconds: Vec<String> = (0..=MAX_WAIT_SECONDS)
        .rev()
        .map(|s| s.to_string())
        .collect();
    let seconds = seconds.join("|");
    let wait = format!(
        "{blank}[wW][aA][iI][tT]{blank}={blank}\"*\\+?0*(?:{seconds})\"*{blank}(?:;{any})?"
    );
    let other_name = [
        String::new(),
        format!("{}{name_char}*", not(b'w')),
        format!("[wW](?:{}{name_char}*)?", not_after(b'a')),
        format!("[wW][aA](?:{}{name_char}*)?", not_after(b'i')),
        format!("[wW][aA][iI](?:{}{name_char}*)?", not_after(b't')),
        format!(
            "[wW][aA][iI][tT]{blank}{}{name_char}*",
            class(|b| in_name(b) && b != b' ' && b != b'\t')
        ),
    ]
    .join("|");
    let other = format!("{blank}(?:{other_name})(?:[=;]{any})?");
    let piece = format!("(?:{wait}|{other})");
    format!("^{piece}(?:,{piece})*$")
}

/// A string of at most `max` characters without U+0000; `nullable` admits `null` too.
fn text(max: Option<usize>, nullable: bool) -> Value {
    let mut schema = json!({ "type": if nullable { json!(["string", "null"]) } else { json!("string") },
                             "pattern": NO_NUL });
    if let Some(max) = max {
        schema["maxLength"] = max.into();
    }
    schema
}

/// Text that is not blank, at most `max` characters.
fn not_blank(max: Option<usize>) -> Value {
    let mut schema = json!({ "type": "string", "minLength": 1, "pattern": not_blank_pattern() });
    if let Some(max) = max {
        schema["maxLength"] = max.into();
    }
    schema
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn or_null(schema: Value) -> Value {
    json!({ "oneOf": [schema, { "type": "null" }] })
}

/// Schemas this module adds to `components.schemas`.
fn components() -> Vec<(&'static str, Value)> {
    let mut schemas = vec![
        (
            "JsonValue",
            json!({
                "description": "Any JSON value the service can store as sent: no U+0000 in a \
                    string or key, no integer beyond 64 bits (a number written with a fraction \
                    or exponent is a float and may be larger). A key given twice in one \
                    object is refused too.",
                "type": ["null", "boolean", "number", "string", "array", "object"],
                "pattern": NO_NUL,
                "minimum": i64::MIN,
                "maximum": u64::MAX,
                "items": reference("JsonValue"),
                "propertyNames": { "pattern": NO_NUL },
                "additionalProperties": reference("JsonValue"),
            }),
        ),
        (
            "JsonObject",
            json!({
                "description": "A JSON object of storable values (see JsonValue).",
                "type": "object",
                "propertyNames": { "pattern": NO_NUL },
                "additionalProperties": reference("JsonValue"),
            }),
        ),
    ];
    schemas.extend(plan::components());
    schemas
}

/// Keywords merged into existing component schemas (`(component, keywords)`).
fn component_rules() -> Vec<(&'static str, Value)> {
    let id = |prefix: &str| json!({ "pattern": prefixed(prefix) });
    let non_null =
        |name: &str| json!({ "required": [name], "properties": { name: { "type": "string" } } });
    vec![
        ("RunId", id("run")),
        ("BriefId", id("brief")),
        ("RequestId", id("hitl_req")),
        ("ResponseId", id("hitl_resp")),
        ("CommandId", id("cmd")),
        (
            "ThreadId",
            json!({ "minLength": 1, "maxLength": THREAD_ID_MAX_CHARS,
                    "pattern": thread_id_pattern() }),
        ),
        (
            "CreateRunIn",
            json!({ "oneOf": [
                { "description": "a new brief",
                  "required": ["brief"],
                  "properties": { "brief": { "type": "object" }, "briefId": { "type": "null" } } },
                { "description": "an existing brief",
                  "required": ["briefId"],
                  "properties": { "briefId": { "type": "string" }, "brief": { "type": "null" } } },
            ] }),
        ),
        (
            "ResumeIn",
            json!({ "anyOf": [non_null("runId"), non_null("threadId")],
                    "required": ["requestId", "responses", "operator"] }),
        ),
        // `operator` may be left out only by a credential bound to an operator; the
        // document describes the act-as credentials (`API_KEY`, `API_TOKENS`).
        (
            "RemoveIn",
            json!({ "anyOf": [non_null("runId"), non_null("threadId")],
                    "required": ["operator"] }),
        ),
        ("RetryIn", json!({ "required": ["operator"] })),
        ("ClaimIn", json!({ "required": ["requestId", "operator"] })),
        (
            "UnclaimIn",
            json!({ "required": ["requestId", "operator"] }),
        ),
        (
            "ResponseInput",
            json!({ "allOf": [
                { "if": { "properties": { "responseType": { "const": "approval" } } },
                  "then": { "required": ["approved"],
                            "properties": { "approved": { "type": "boolean" } } } },
                { "if": { "properties": { "responseType": { "const": "rejection" } } },
                  "then": { "properties": { "approved": { "enum": [false, null] } } } },
                { "if": { "properties": { "responseType": { "const": "option" } } },
                  "then": { "required": ["optionId"],
                            "properties": { "optionId": { "type": "string" } } } },
                { "if": { "properties": { "responseType": { "const": "freeform" } } },
                  "then": { "required": ["freeformText"],
                            "properties": { "freeformText": not_blank(None) } } },
                { "if": { "properties": { "responseType": { "const": "edit" } } },
                  "then": { "required": ["editedArguments"],
                            "properties": { "editedArguments": { "type": "object" },
                                            "approved": { "enum": [true, null] } } },
                  "else": { "properties": { "editedArguments": { "type": "null" } } } },
            ] }),
        ),
    ]
}

/// The schema of each constrained body field (`(component, property, schema)`); an
/// existing `description` is kept.
fn property_rules() -> Vec<(&'static str, &'static str, Value)> {
    let run_id = or_null(reference("RunId"));
    let thread_id = or_null(reference("ThreadId"));
    let note = text(Some(MAX_LONG_TEXT), true);
    vec![
        ("OperatorIn", "id", not_blank(Some(MAX_SHORT_TEXT))),
        (
            "OperatorIn",
            "displayName",
            text(Some(MAX_SHORT_TEXT), true),
        ),
        (
            "OperatorIn",
            "email",
            json!({ "type": ["string", "null"], "maxLength": MAX_SHORT_TEXT,
                    "pattern": r"^[^\u0000]*@[^\u0000]*$",
                    "description": "must hold an `@`" }),
        ),
        ("BriefIn", "title", not_blank(Some(MAX_TITLE))),
        ("BriefIn", "content", reference("JsonValue")),
        ("CreateRunIn", "briefId", or_null(reference("BriefId"))),
        ("CreateRunIn", "threadId", thread_id.clone()),
        (
            "CreateRunIn",
            "executionContext",
            or_null(reference("JsonObject")),
        ),
        ("CreateRunIn", "plan", reference("Plan")),
        ("ResumeIn", "runId", run_id.clone()),
        ("ResumeIn", "threadId", thread_id.clone()),
        ("ResumeIn", "requestId", reference("RequestId")),
        (
            "ResumeIn",
            "responses",
            json!({ "type": "array", "minItems": 1, "maxItems": MAX_RESPONSES,
                    "items": reference("ResponseInput"),
                    "description": "checked against the request answered: its response types \
                        and options" }),
        ),
        ("ResumeIn", "note", note.clone()),
        ("ResumeIn", "operator", reference("OperatorIn")),
        ("RemoveIn", "operator", reference("OperatorIn")),
        ("RetryIn", "operator", reference("OperatorIn")),
        ("RemoveIn", "runId", run_id),
        ("RemoveIn", "threadId", thread_id),
        ("RemoveIn", "requestId", or_null(reference("RequestId"))),
        ("RemoveIn", "reason", note.clone()),
        ("RemoveIn", "note", note.clone()),
        ("RetryIn", "note", note),
        ("ClaimIn", "requestId", reference("RequestId")),
        (
            "ClaimIn",
            "leaseSeconds",
            json!({ "type": ["integer", "null"], "minimum": 1,
                    "maximum": crate::service::claims::MAX_LEASE.as_secs(),
                    "default": crate::service::claims::DEFAULT_LEASE.as_secs() }),
        ),
        ("ClaimIn", "operator", reference("OperatorIn")),
        ("UnclaimIn", "requestId", reference("RequestId")),
        ("UnclaimIn", "operator", reference("OperatorIn")),
        (
            "ResponseInput",
            "requestId",
            or_null(reference("RequestId")),
        ),
        ("ResponseInput", "itemId", text(None, true)),
        (
            "ResponseInput",
            "editedArguments",
            or_null(reference("JsonObject")),
        ),
        ("ResponseInput", "optionId", text(None, true)),
        ("ResponseInput", "freeformText", text(None, true)),
        ("ResponseInput", "responderId", text(None, true)),
        ("ResponseInput", "responderDisplayName", text(None, true)),
    ]
}

/// The schema of each constrained parameter (`(path, method, name, schema)`).
fn parameter_rules() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let string = |pattern: String| json!({ "type": "string", "pattern": pattern });
    let thread_id = json!({ "type": "string", "minLength": 1, "maxLength": THREAD_ID_MAX_CHARS,
                            "pattern": thread_id_pattern() });
    let idempotency_key = json!({ "type": "string", "pattern": format!("^[ \t]*[!-~]{{1,{MAX_SHORT_TEXT}}}[ \t]*$") });
    let uuid = json!({ "type": "string", "format": "uuid",
        "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" });
    let prefer = json!({ "type": "string", "pattern": prefer_pattern() });
    let mut rules = vec![
        (
            "/api/hitl/pending",
            "get",
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                    "default": DEFAULT_PAGE_SIZE }),
        ),
        (
            "/api/hitl/pending",
            "get",
            "cursor",
            json!({ "type": "string", "pattern": cursor_pattern(),
                    "description": "the `nextCursor` of the previous page" }),
        ),
        ("/api/hitl/pending", "get", "threadId", thread_id.clone()),
        (
            "/api/hitl/pending",
            "get",
            "briefId",
            string(prefixed("brief")),
        ),
        ("/api/hitl/pending", "get", "nodeId", string(NO_NUL.into())),
        (
            "/api/hitl/pending",
            "get",
            "assignee",
            json!({ "type": "string", "enum": ["me"], "pattern": "^me$" }),
        ),
        (
            "/api/hitl/pending",
            "get",
            "group",
            json!({ "type": "string", "minLength": 1, "maxLength": 256,
                    "pattern": not_blank_pattern() }),
        ),
        (
            "/api/hitl/commands/{commandId}",
            "get",
            "commandId",
            string(prefixed("cmd")),
        ),
        (
            "/api/hitl/requests/{requestId}",
            "get",
            "requestId",
            string(prefixed("hitl_req")),
        ),
        ("/api/runs", "get", "threadId", thread_id),
        ("/api/runs/{runId}", "get", "runId", string(prefixed("run"))),
        (
            "/api/runs/{runId}/retry",
            "post",
            "runId",
            string(prefixed("run")),
        ),
        ("/api/events", "get", "runId", string(prefixed("run"))),
        (
            "/api/audit",
            "get",
            "after",
            json!({ "type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999i64,
                    "description": "an event id: start after it (default: from the start)" }),
        ),
        (
            "/api/audit",
            "get",
            "limit",
            json!({ "type": "integer", "minimum": 1,
                    "maximum": crate::service::audit::MAX_EXPORT_PAGE,
                    "default": crate::service::audit::MAX_EXPORT_PAGE }),
        ),
        ("/api/audit/verify", "get", "after", string(prefixed("run"))),
        (
            "/api/audit/verify",
            "get",
            "limit",
            json!({ "type": "integer", "minimum": 1,
                    "maximum": crate::service::audit::MAX_VERIFY_PAGE,
                    "default": crate::service::audit::MAX_VERIFY_PAGE }),
        ),
        (
            "/api/runs/{runId}/audit/verify",
            "get",
            "runId",
            string(prefixed("run")),
        ),
        (
            "/api/notifications",
            "get",
            "status",
            json!({ "type": "string", "enum": crate::service::notifications::DELIVERY_STATUSES,
                    "pattern": "^(pending|delivered|failed)$" }),
        ),
        ("/api/notifications", "get", "after", uuid.clone()),
        (
            "/api/notifications",
            "get",
            "limit",
            json!({ "type": "integer", "minimum": 1,
                    "maximum": crate::service::notifications::MAX_DELIVERY_PAGE,
                    "default": crate::service::notifications::MAX_DELIVERY_PAGE }),
        ),
        (
            "/api/notifications/{deliveryId}/resend",
            "post",
            "deliveryId",
            uuid,
        ),
        (
            "/api/events",
            "get",
            "Last-Event-ID",
            string(r"^[ \t]*[0-9]{1,18}[ \t]*$".into()),
        ),
    ];
    for path in [
        "/api/hitl/resume",
        "/api/hitl/remove",
        "/api/runs/{runId}/retry",
    ] {
        rules.push((path, "post", "Idempotency-Key", idempotency_key.clone()));
        rules.push((path, "post", "Prefer", prefer.clone()));
    }
    rules
}

/// Merges `extra`'s keywords into `schema`.
fn merge(schema: &mut Value, extra: Value) {
    if let (Value::Object(schema), Value::Object(extra)) = (schema, extra) {
        for (k, v) in extra {
            schema.insert(k, v);
        }
    }
}

/// `schema` in place of `slot`, keeping the description `slot` had.
fn replace(slot: &mut Value, mut schema: Value) {
    if let Some(description) = slot.get("description").cloned()
        && schema.get("description").is_none()
    {
        schema["description"] = description;
    }
    *slot = schema;
}

/// States every rule in `doc`; returns the rules that found nothing to apply to (a field
/// or parameter renamed in the code but not here), which a test requires to be none.
pub fn apply(doc: &mut Value) -> Vec<String> {
    let mut missing = Vec::new();
    let schemas = &mut doc["components"]["schemas"];
    for (name, schema) in components() {
        schemas[name] = schema;
    }
    for (name, rule) in component_rules() {
        match schemas.get_mut(name) {
            Some(schema) => {
                if let (Some(required), Some(extra)) = (
                    schema.get("required").cloned(),
                    rule.get("required").and_then(Value::as_array),
                ) {
                    // A rule's `required` adds to the component's own.
                    let mut all: Vec<Value> = required.as_array().cloned().unwrap_or_default();
                    all.extend(
                        extra
                            .iter()
                            .filter(|r| !all.contains(r))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    merge(schema, rule);
                    schema["required"] = all.into();
                } else {
                    merge(schema, rule);
                }
            }
            None => missing.push(format!("component {name}")),
        }
    }
    for (name, property, schema) in property_rules() {
        match schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(property))
        {
            Some(slot) => replace(slot, schema),
            None => missing.push(format!("{name}.{property}")),
        }
    }
    for (path, method, name, schema) in parameter_rules() {
        let parameter = doc["paths"][path][method]["parameters"]
            .as_array_mut()
            .and_then(|ps| ps.iter_mut().find(|p| p["name"] == name));
        match parameter {
            Some(p) => p["schema"] = schema,
            None => missing.push(format!("{method} {path} parameter {name}")),
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_finds_its_field_or_parameter() {
        let mut doc =
            serde_json::to_value(<super::super::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
        assert_eq!(apply(&mut doc), Vec::<String>::new());
    }

    #[test]
    fn a_class_lists_the_admitted_bytes_as_ranges() {
        assert_eq!(class(|b| b == b'\t'), r"[\x09]");
        assert_eq!(
            class(|b| (b'a'..=b'c').contains(&b) || b == b'~'),
            r"[\x61-\x63\x7e]"
        );
    }
}
