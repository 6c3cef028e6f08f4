//! A tiny agent runtime for trying `agent.webhook`: the first call for a node interrupts
//! with a HITL request of its own (a tool approval) and returns runner state; the call
//! that resumes it gets the operator's answers and that runner state back, and completes.
//!
//! `cargo run --example echo_agent` (listens on 127.0.0.1:9000, or `AGENT_ADDR`), then run
//! the service with `HITL_AGENT_ALLOWED_URLS=http://127.0.0.1:9000/` and create a run from
//! `docs/examples/agent-run.json`.

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

async fn agent(Json(call): Json<Value>) -> Json<Value> {
    let node = call["nodeId"].as_str().unwrap_or("?");
    println!("call for node {node}, key {}", call["idempotencyKey"]);
    match call["responses"].as_array() {
        None => Json(json!({
            "status": "interrupted",
            "runnerState": { "step": "asked", "action": call["input"]["action"] },
            "request": {
                "prompt": format!("May I {}?", call["input"]["action"].as_str().unwrap_or("go ahead")),
                "responseTypes": ["approval", "rejection", "freeform"],
                "contract": { "facets": ["tool-approval"], "capabilityContract": { "tool": "email.send" } }
            }
        })),
        Some(answers) => {
            let approved = answers.iter().any(|a| a["approved"] == true);
            Json(json!({
                "status": "completed",
                "output": { "sent": approved, "resumedFrom": call["runnerState"] },
                "runnerState": { "step": "done" },
                "notes": if approved { "sent after approval" } else { "not sent: rejected" }
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
