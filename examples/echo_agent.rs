//! A tiny agent runtime for trying `agent.webhook`: the first call for a node interrupts
//! with a HITL request of its own — one tool-approval item per entry of the node's
//! `input.tools` (`[{"name", "arguments"}]`), or one question when it has none — and
//! returns runner state; the call that resumes it gets the operator's answers, item by
//! item, and that runner state back, and completes saying which tools it would run.
//!
//! `cargo run --example echo_agent` (listens on 127.0.0.1:9000, or `AGENT_ADDR`), then run
//! the service with `HITL_AGENT_ALLOWED_URLS=http://127.0.0.1:9000/` and create a run from
//! `docs/examples/agent-run.json` (two tool approvals in one request).

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

fn interrupt(call: &Value) -> Value {
    let action = call["input"]["action"].as_str().unwrap_or("go ahead");
    let request = match call["input"]["tools"].as_array() {
        Some(tools) if !tools.is_empty() => {
            let items: Vec<Value> = tools
                .iter()
                .enumerate()
                .map(|(i, tool)| {
                    json!({ "itemId": format!("call_{i}"), "kind": "tool_approval",
                            "title": format!("Run {}", tool["name"].as_str().unwrap_or("a tool")),
                            "tool": { "name": tool["name"], "arguments": tool["arguments"] },
                            "responseTypes": ["approval", "rejection", "edit"] })
                })
                .collect();
            json!({ "prompt": format!("May I {action}?"), "items": items,
                    "timeoutSeconds": 3600, "onTimeout": "reject" })
        }
        _ => json!({
            "prompt": format!("May I {action}?"),
            "responseTypes": ["approval", "rejection", "freeform"],
            "contract": { "facets": ["tool-approval"], "capabilityContract": { "tool": "email.send" } }
        }),
    };
    json!({ "status": "interrupted",
            "runnerState": { "step": "asked", "action": call["input"]["action"] },
            "request": request })
}

async fn agent(Json(call): Json<Value>) -> Json<Value> {
    let node = call["nodeId"].as_str().unwrap_or("?");
    println!("call for node {node}, key {}", call["idempotencyKey"]);
    match call["responses"].as_array() {
        None => Json(interrupt(&call)),
        Some(answers) => {
            // Each answer names its item: what would run, with which arguments.
            let decisions: Vec<Value> = answers
                .iter()
                .map(|a| {
                    json!({ "itemId": a["itemId"], "runs": a["approved"] == true,
                            "arguments": a["editedArguments"], "message": a["freeformText"] })
                })
                .collect();
            let approved = answers.iter().any(|a| a["approved"] == true);
            Json(json!({
                "status": "completed",
                "output": { "decisions": decisions, "resumedFrom": call["runnerState"] },
                "runnerState": { "step": "done" },
                "notes": if approved { "ran what was approved" } else { "nothing ran: rejected" }
            }))
        }
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("AGENT_ADDR").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the agent address");
    println!("echo agent listening on http://{addr}/agent");
    let app = axum::Router::new().route("/agent", post(agent));
    axum::serve(listener, app).await.expect("serve");
}
