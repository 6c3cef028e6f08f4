//! What `--output table` prints: the pending table, a run with its requests and audit
//! timeline, a command, one line per live event, and the sentence for an error answer.
//! Everything reads the API's JSON as it comes, so a field this version does not know
//! is simply not shown (`--output json` shows everything).

use std::fmt::Write;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Row, Table};
use serde_json::Value;

use super::http::Reply;

/// `value` as text: strings bare, `null` and absent as `-`, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A span as its largest unit: `45s`, `12m`, `3h`, `2d`.
pub fn span(seconds: i64) -> String {
    let s = seconds.abs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `at` was.
fn age(at: &Value, now: DateTime<Utc>) -> String {
    time(at).map_or("-".into(), |t| span((now - t).num_seconds()))
}

/// When a deadline falls: `in 3h`, `5m ago`, or `-` without one.
fn deadline(at: &Value, now: DateTime<Utc>) -> String {
    match time(at) {
        None => "-".into(),
        Some(t) if t >= now => format!("in {}", span((t - now).num_seconds())),
        Some(t) => format!("{} ago", span((now - t).num_seconds())),
    }
}

/// The text on one line: line breaks and tabs become spaces, so a prompt cannot break
/// the table's rows.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The narrowest the prompt column gets, in characters.
const MIN_PROMPT: u16 = 16;

/// The pending table: request, run, node, prompt, age, expires — and, when some request
/// has one, who claimed it and how many approvals are in. With a width, each row is one
/// line and the prompt is cut (with `…`) to fit it.
pub fn pending(items: &[Value], now: DateTime<Utc>, width: Option<u16>) -> String {
    if items.is_empty() {
        return "No pending requests.".into();
    }
    let claims = items.iter().any(|i| !i["claimedBy"].is_null());
    let approvals = items.iter().any(|i| !i["approvals"].is_null());
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    let mut header = vec!["REQUEST", "RUN", "NODE", "PROMPT", "AGE", "EXPIRES"];
    if claims {
        header.push("CLAIMED BY");
    }
    if approvals {
        header.push("APPROVALS");
    }
    let mut header = Row::from(header);
    header.max_height(1);
    table.set_header(header);
    for item in items {
        let mut cells = vec![
            text(&item["pendingRequestId"]),
            text(&item["runId"]),
            text(&item["pendingNodeId"]),
            one_line(&text(&item["operatorPrompt"])),
            age(&item["createdAt"], now),
            deadline(&item["expiresAt"], now),
        ];
        if claims {
            cells.push(text(&item["claimedBy"]["operator"]["id"]));
        }
        if approvals {
            cells.push(approval_count(&item["approvals"]));
        }
        let mut row = Row::from(cells);
        row.max_height(1);
        table.add_row(row);
    }
    if let Some(width) = width {
        table.set_width(width);
        table.set_content_arrangement(ContentArrangement::Dynamic);
        // Ids are what an operator copies: only the prompt gives way, and it keeps a few
        // words even when the ids alone fill the terminal.
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_constraint(if i == 3 {
                comfy_table::ColumnConstraint::LowerBoundary(comfy_table::Width::Fixed(MIN_PROMPT))
            } else {
                comfy_table::ColumnConstraint::ContentWidth
            });
        }
    }
    table.trim_fmt()
}

/// `1/2`, or `-` for a request that needs no approvals.
fn approval_count(approvals: &Value) -> String {
    if approvals.is_null() {
        return "-".into();
    }
    format!(
        "{}/{}",
        text(&approvals["have"]),
        text(&approvals["required"])
    )
}

/// A claim's answer: who holds the request until when, or that nobody does.
pub fn claim(view: &Value) -> String {
    let request = text(&view["requestId"]);
    match view["claimedBy"].as_object() {
        None => format!("{request} is not claimed"),
        Some(holder) => format!(
            "{request} is claimed by operator {} ({}) until {}",
            text(&holder["operator"]["id"]),
            text(&holder["principal"]),
            text(&view["claimExpiresAt"]),
        ),
    }
}

/// A run: its state, each request with its items and answers, and the audit timeline.
/// `focus` marks one request (the one `show` was given).
pub fn run(snapshot: &Value, focus: Option<&str>) -> String {
    let mut out = String::new();
    let s = snapshot;
    let _ = writeln!(
        out,
        "run       {}  {}",
        text(&s["runId"]),
        text(&s["status"])
    );
    if let Some(reason) = s["statusReason"].as_str() {
        let _ = writeln!(out, "reason    {}", one_line(reason));
    }
    let _ = writeln!(out, "thread    {}", text(&s["threadId"]));
    let _ = writeln!(out, "brief     {}", text(&s["briefId"]));
    if let Some(pending) = s["pendingRequestId"].as_str() {
        let _ = writeln!(out, "pending   {pending}");
    }
    let _ = writeln!(
        out,
        "created   {}   updated {}   finished {}",
        text(&s["createdAt"]),
        text(&s["updatedAt"]),
        text(&s["finishedAt"])
    );
    if let Some(retry) = s["agentRetry"].as_object() {
        let _ = writeln!(
            out,
            "agent     down since {} at node {} ({} attempts; next {}): {}",
            text(&retry["since"]),
            text(&retry["nodeId"]),
            text(&retry["attempts"]),
            text(&retry["nextAttemptAt"]),
            text(&retry["lastError"])
        );
    }
    let requests = s["hitlRequests"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nrequests ({})", requests.len());
    for r in &requests {
        let id = text(&r["requestId"]);
        let mark = if focus == Some(id.as_str()) { "*" } else { " " };
        out.push_str(&request(r, mark));
    }
    let audit = s["auditLog"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\naudit ({})", audit.len());
    for e in &audit {
        let from = e["fromStatus"]
            .as_str()
            .map_or(String::new(), |f| format!("{f} -> "));
        let mut line = format!(
            "  {}  {:<15} {from}{}",
            text(&e["at"]),
            text(&e["action"]),
            text(&e["toStatus"])
        );
        if let Some(node) = e["details"]["nodeId"].as_str() {
            let _ = write!(line, "  node {node}");
        }
        if let Some(op) = e["operator"]["id"].as_str() {
            let _ = write!(line, "  by {op}");
        }
        if let Some(p) = e["principal"].as_str() {
            let _ = write!(line, " (credential {p})");
        }
        if let Some(c) = e["commandId"].as_str() {
            let _ = write!(line, "  {c}");
        }
        if let Some(n) = e["note"].as_str() {
            let _ = write!(line, "  note: {}", one_line(n));
        }
        let _ = writeln!(out, "{line}");
    }
    out.trim_end().to_owned()
}

/// One request of a run, indented under it (`mark` is `*` for the one asked about).
pub fn request(r: &Value, mark: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{mark} {}  {}  node {}  created {}  expires {}",
        text(&r["requestId"]),
        text(&r["status"]),
        text(&r["nodeId"]),
        text(&r["createdAt"]),
        text(&r["expiresAt"]),
    );
    let _ = writeln!(out, "    prompt: {}", one_line(&text(&r["operatorPrompt"])));
    if let Some(holder) = r["claimedBy"].as_object() {
        let _ = writeln!(
            out,
            "    claimed by operator {} ({}) until {}",
            text(&holder["operator"]["id"]),
            text(&holder["principal"]),
            text(&r["claimExpiresAt"])
        );
    }
    if !r["approvals"].is_null() {
        let by: Vec<String> = r["approvals"]["by"]
            .as_array()
            .map(|a| a.iter().map(|x| text(&x["approver"])).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    approvals {} (by {})",
            approval_count(&r["approvals"]),
            if by.is_empty() {
                "nobody yet".to_owned()
            } else {
                by.join(", ")
            }
        );
    }
    if let Some(a) = r["assignees"].as_object() {
        let _ = writeln!(
            out,
            "    assignees: users {} groups {}",
            text(&a["users"]),
            text(&a["groups"])
        );
    }
    for item in r["items"].as_array().into_iter().flatten() {
        out.push_str(&self::item(item));
    }
    for a in r["responses"].as_array().into_iter().flatten() {
        let mut line = format!(
            "    answer {}: {}",
            text(&a["itemId"]),
            text(&a["responseType"])
        );
        if let Some(o) = a["optionId"].as_str() {
            let _ = write!(line, " {o}");
        }
        if let Some(t) = a["freeformText"].as_str() {
            let _ = write!(line, " \"{}\"", one_line(t));
        }
        if let Some(who) = a["responderId"].as_str() {
            let _ = write!(line, " by {who}");
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(reason) = r["denialReason"].as_str() {
        let _ = writeln!(out, "    denied: {}", one_line(reason));
    }
    out
}

/// One item of a request: what it asks, the tool call, the answers and options it takes.
pub fn item(item: &Value) -> String {
    let mut out = format!(
        "    item {} ({}): {}\n",
        text(&item["itemId"]),
        text(&item["kind"]),
        one_line(&text(&item["title"]))
    );
    if let Some(tool) = item["tool"].as_object() {
        let _ = writeln!(
            out,
            "      tool {} {}",
            text(&tool["name"]),
            tool.get("arguments")
                .map_or(String::new(), Value::to_string)
        );
    }
    let types: Vec<String> = item["responseTypes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let _ = writeln!(out, "      answers: {}", types.join(", "));
    let options: Vec<String> = item["options"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| format!("{} ({})", text(&o["id"]), text(&o["label"])))
        .collect();
    if !options.is_empty() {
        let _ = writeln!(out, "      options: {}", options.join(", "));
    }
    out
}

/// A command: kind, status, what it did or why not.
pub fn command(c: &Value) -> String {
    let mut out = format!(
        "command   {}  {} {}\nrun       {}\n",
        text(&c["commandId"]),
        text(&c["kind"]),
        text(&c["status"]),
        text(&c["runId"]),
    );
    if let Some(r) = c["requestId"].as_str() {
        let _ = writeln!(out, "request   {r}");
    }
    if let Some(op) = c["operator"]["id"].as_str() {
        let _ = writeln!(out, "operator  {op}");
    }
    let _ = writeln!(
        out,
        "created   {}   finished {}",
        text(&c["createdAt"]),
        text(&c["finishedAt"])
    );
    if c["status"] == "rejected" {
        let _ = writeln!(out, "refused   {}", refusal(c));
    }
    if let Some(e) = c["error"].as_str() {
        let _ = writeln!(out, "error     {}", one_line(e));
    }
    if let Some(status) = c["run"]["status"].as_str() {
        let _ = writeln!(out, "run now   {status}");
    }
    out.trim_end().to_owned()
}

/// Why a rejected command was refused, from its recorded outcome.
pub fn refusal(c: &Value) -> String {
    let outcome = &c["outcome"];
    let reason = outcome["message"]
        .as_str()
        .or_else(|| outcome["reason"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| one_line(&outcome.to_string()));
    match winner(&outcome["winner"]) {
        Some(w) => format!("{reason} ({w})"),
        None => reason,
    }
}

/// "won by resume cmd_… of op-1 at …", from a refusal's `winner`.
fn winner(w: &Value) -> Option<String> {
    let w = w.as_object()?;
    Some(format!(
        "won by {} {} of {} at {}",
        text(&w["action"]),
        text(&w["commandId"]),
        w.get("operator")
            .map(|o| text(o.get("id").unwrap_or(o)))
            .unwrap_or_default(),
        text(&w["at"])
    ))
}

/// One live event on one line: time, event, run, statuses, then the ids it names.
pub fn event(e: &Value) -> String {
    let from = e["fromStatus"]
        .as_str()
        .map_or(String::new(), |f| format!("{f} -> "));
    let mut line = format!(
        "{}  {:>6}  {:<17} {}  {from}{}",
        text(&e["at"]),
        text(&e["eventId"]),
        text(&e["event"]),
        text(&e["runId"]),
        text(&e["toStatus"]),
    );
    if let Some(node) = e["details"]["nodeId"].as_str() {
        let _ = write!(line, "  node={node}");
    }
    for (label, key) in [
        ("request", "requestId"),
        ("command", "commandId"),
        ("operator", "operatorId"),
    ] {
        if let Some(v) = e[key].as_str() {
            let _ = write!(line, "  {label}={v}");
        }
    }
    line
}

/// The sentence for an error answer: the API's message, code and status, and what it
/// names (the field, the winner, the pending request).
pub fn api_error(reply: &Reply) -> String {
    let e = &reply.body["error"];
    let Some(message) = e["message"].as_str() else {
        return format!("HTTP {}: {}", reply.status, one_line(&text(&reply.body)));
    };
    let mut out = format!("{message} ({}, HTTP {})", text(&e["code"]), reply.status);
    let d = &e["details"];
    // The service's message usually names the winner already.
    if let Some(w) = winner(&d["winner"])
        && !d["winner"]["commandId"]
            .as_str()
            .is_some_and(|c| message.contains(c))
    {
        let _ = write!(out, "; {w}");
    }
    if let Some(p) = d["pendingRequestId"].as_str()
        && reply.status == 409
    {
        let _ = write!(out, "; the run's pending request is {p}");
    }
    if d["field"] == "operator" || d["field"] == "operator.id" {
        out.push_str("; name the operator with --operator (HITL_OPERATOR)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spans_read_as_their_largest_unit() {
        assert_eq!(span(5), "5s");
        assert_eq!(span(125), "2m");
        assert_eq!(span(7200), "2h");
        assert_eq!(span(-3 * 86_400), "3d");
    }

    #[test]
    fn a_narrow_table_cuts_the_prompt_and_keeps_the_ids_whole() {
        let now = Utc::now();
        let item = json!({ "pendingRequestId": "hitl_req_00000000000000000000000000000001",
            "runId": "run_00000000000000000000000000000001", "pendingNodeId": "review",
            "operatorPrompt": "Approve the draft?\nIt is long ".repeat(20),
            "createdAt": now.to_rfc3339(), "expiresAt": null });
        let table = pending(&[item], now, Some(120));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[1].contains("hitl_req_00000000000000000000000000000001"));
        assert!(lines[1].contains("run_00000000000000000000000000000001"));
        assert!(lines[1].contains('…'), "{table}");
        assert!(lines.iter().all(|l| l.chars().count() <= 120), "{table}");
    }
}
