//! The answers of a `resume`: built from the decision flags, or asked for item by item
//! on a terminal. Whether an answer fits its item (its response types, its options, every
//! item answered) is the service's to decide; it refuses a misfit naming the field.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{Map, Value, json};

use super::Failure;
use super::render;
use crate::config::client::ResumeArgs;

/// One decision about one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
    Option(String),
    /// A freeform answer: the text alone.
    Freeform,
}

impl Decision {
    /// `approve`, `reject` or `option:ID`, as `--item ITEM_ID=…` spells it.
    fn parse(text: &str) -> Option<Self> {
        match text {
            "approve" => Some(Decision::Approve),
            "reject" => Some(Decision::Reject),
            other => other
                .strip_prefix("option:")
                .filter(|id| !id.is_empty())
                .map(|id| Decision::Option(id.to_owned())),
        }
    }
}

/// Decisions, each about the item it names or (`None`) about every item no other names.
pub type Decisions = Vec<(Option<String>, Decision)>;

/// What the flags decide: a decision for the items no `--item` names, and one per named
/// item, in order. `None` when no decision flag was given.
pub fn from_flags(args: &ResumeArgs) -> Result<Option<Decisions>, Failure> {
    let default = if args.approve {
        Some(Decision::Approve)
    } else if args.reject {
        Some(Decision::Reject)
    } else if let Some(option) = &args.option {
        Some(Decision::Option(option.clone()))
    } else if args.text.is_some() && args.items.is_empty() {
        Some(Decision::Freeform)
    } else {
        None
    };
    let mut named = Vec::new();
    for entry in &args.items {
        let parsed = entry
            .split_once('=')
            .filter(|(id, _)| !id.is_empty())
            .and_then(|(id, d)| Some((id.to_owned(), Decision::parse(d)?)));
        match parsed {
            Some((id, decision)) => named.push((Some(id), decision)),
            None => {
                return Err(Failure::Usage(format!(
                    "--item `{entry}`: must be ITEM_ID=approve, ITEM_ID=reject or \
                     ITEM_ID=option:OPTION_ID"
                )));
            }
        }
    }
    if default.is_none() && named.is_empty() {
        return Ok(None);
    }
    let mut decisions: Decisions = Vec::new();
    if let Some(d) = default {
        decisions.push((None, d));
    }
    decisions.extend(named);
    Ok(Some(decisions))
}

/// The `responses` of the resume body: each item named by a decision gets it; the
/// decision without an item goes to every item no other decision names.
pub fn responses(
    request: &Value,
    decisions: &[(Option<String>, Decision)],
    text: Option<&str>,
    responder: Option<&(String, Option<String>)>,
) -> Vec<Value> {
    let items: Vec<&str> = request["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["itemId"].as_str())
        .collect();
    let named: Vec<&str> = decisions
        .iter()
        .filter_map(|(id, _)| id.as_deref())
        .collect();
    let mut out = Vec::new();
    for (item, decision) in decisions {
        match item {
            Some(id) => out.push(response(id, decision, text, responder)),
            None => {
                for id in items.iter().filter(|id| !named.contains(id)) {
                    out.push(response(id, decision, text, responder));
                }
            }
        }
    }
    out
}

fn response(
    item_id: &str,
    decision: &Decision,
    text: Option<&str>,
    responder: Option<&(String, Option<String>)>,
) -> Value {
    let mut r = Map::new();
    r.insert("itemId".into(), json!(item_id));
    let kind = match decision {
        Decision::Approve => {
            r.insert("approved".into(), json!(true));
            "approval"
        }
        Decision::Reject => {
            r.insert("approved".into(), json!(false));
            "rejection"
        }
        Decision::Option(id) => {
            r.insert("optionId".into(), json!(id));
            "option"
        }
        Decision::Freeform => "freeform",
    };
    r.insert("responseType".into(), json!(kind));
    if let Some(t) = text {
        r.insert("freeformText".into(), json!(t));
    }
    if let Some((id, name)) = responder {
        r.insert("responderId".into(), json!(id));
        if let Some(n) = name {
            r.insert("responderDisplayName".into(), json!(n));
        }
    }
    Value::Object(r)
}

/// Whether the client may ask: both standard input and standard error are terminals.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Shows `request` on stderr and asks for a decision per item, then (unless `yes`) for
/// confirmation. `None`: the operator gave up, nothing is to be sent.
pub fn ask(request: &Value, yes: bool) -> Option<Decisions> {
    let mut err = std::io::stderr().lock();
    let mut input = std::io::stdin().lock();
    let _ = writeln!(err, "{}", render::request(request, " ").trim_end());
    let mut decisions = Vec::new();
    for item in request["items"].as_array().into_iter().flatten() {
        let id = item["itemId"].as_str().unwrap_or_default().to_owned();
        loop {
            let _ = write!(
                err,
                "item {id}: [a]pprove, [r]eject, [o]ption ID, [f]reeform (with --text), [q]uit? "
            );
            let _ = err.flush();
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            let line = line.trim();
            let decision = match line.split_once(' ').unwrap_or((line, "")) {
                ("a" | "approve", _) => Decision::Approve,
                ("r" | "reject", _) => Decision::Reject,
                ("o" | "option", option) if !option.trim().is_empty() => {
                    Decision::Option(option.trim().to_owned())
                }
                ("f" | "freeform", _) => Decision::Freeform,
                ("q" | "quit", _) => return None,
                _ => continue,
            };
            decisions.push((Some(id.clone()), decision));
            break;
        }
    }
    if !yes {
        let _ = write!(err, "send this answer? [y/N] ");
        let _ = err.flush();
        let mut line = String::new();
        let _ = input.read_line(&mut line);
        if !matches!(line.trim(), "y" | "yes" | "Y") {
            return None;
        }
    }
    Some(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        json!({ "items": [ { "itemId": "call_mail" }, { "itemId": "call_rm" } ] })
    }

    #[test]
    fn a_decision_without_an_item_answers_every_item_no_other_decision_names() {
        let decisions = vec![
            (None, Decision::Approve),
            (Some("call_rm".to_owned()), Decision::Reject),
        ];
        let r = responses(&request(), &decisions, Some("why"), None);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["itemId"], "call_mail");
        assert_eq!(r[0]["responseType"], "approval");
        assert_eq!(r[1]["itemId"], "call_rm");
        assert_eq!(r[1]["responseType"], "rejection");
        assert_eq!(r[1]["freeformText"], "why");
    }

    #[test]
    fn item_decisions_are_spelled_approve_reject_or_option() {
        assert_eq!(Decision::parse("approve"), Some(Decision::Approve));
        assert_eq!(
            Decision::parse("option:short"),
            Some(Decision::Option("short".into()))
        );
        assert_eq!(Decision::parse("option:"), None);
        assert_eq!(Decision::parse("yes"), None);
    }
}
