//! `pending`, `show`, `resume`, `remove`, `retry`, `claim` and `unclaim`: each one or a
//! few API calls, the answer printed as a table or as the API's JSON.
//!
//! A submission (resume, remove, retry) carries one `Idempotency-Key`, generated unless
//! given and printed on stderr before the first attempt; every retry of the call sends
//! it again. With `--wait`, the call asks the service to wait (`Prefer: wait=N`, at most
//! 30 s a call) and then polls the command until it is final or the time is up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{CALL_TIMEOUT, Call, Client, Reply};
use super::{Failure, print_json, render, resume};
use crate::config::client::{
    ClaimArgs, OutputFormat, PendingArgs, RemoveArgs, ResumeArgs, RetryArgs, ShowArgs, SubmitArgs,
    UnclaimArgs,
};
use crate::domain::{CommandId, RequestId, RunId};

/// The longest `Prefer: wait` the service honours, in seconds.
const MAX_SERVER_WAIT: u64 = 30;
/// The pause between two looks at a command still running after the service's wait.
const POLL: Duration = Duration::from_millis(200);

/// `pending`: one page, or every page with `--all`.
pub async fn pending(client: &Client, args: &PendingArgs) -> Result<(), Failure> {
    let mut query: Vec<(&'static str, String)> = vec![("limit", args.limit.to_string())];
    for (name, value) in [
        ("threadId", &args.thread),
        ("nodeId", &args.node),
        ("briefId", &args.brief),
        ("group", &args.group),
    ] {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    if args.mine {
        query.push(("assignee", "me".into()));
    }
    let mut cursor = args.cursor.clone();
    let mut items = Vec::new();
    let next = loop {
        let mut call = Call::get("/api/hitl/pending");
        call.query = query.clone();
        if let Some(c) = &cursor {
            call.query.push(("cursor", c.clone()));
        }
        let page = client.send(&call).await?.success()?.body;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) if args.all => cursor = Some(next.to_owned()),
            next => break next.map(str::to_owned),
        }
    };
    match args.client.output {
        OutputFormat::Json => print_json(&json!({ "items": items, "nextCursor": next })),
        OutputFormat::Table => {
            println!(
                "{}",
                render::pending(&items, chrono::Utc::now(), client.width)
            );
            if let Some(next) = next {
                eprintln!("more: --all for every page, or --cursor {next} for the next");
            }
        }
    }
    Ok(())
}

/// What an id on the command line names.
enum Named {
    Run(RunId),
    Request(RequestId),
    Command(CommandId),
}

/// Reads an id of one of the `accepted` kinds; `argument` names it in the refusal.
fn named(raw: &str, argument: &str, commands: bool) -> Result<Named, Failure> {
    let invalid = |why: String| Failure::Invalid(format!("{argument}: `{raw}` {why}"));
    if raw.starts_with("hitl_req_") {
        RequestId::parse(raw)
            .map(Named::Request)
            .map_err(|e| invalid(e.to_string()))
    } else if raw.starts_with("run_") {
        RunId::parse(raw)
            .map(Named::Run)
            .map_err(|e| invalid(e.to_string()))
    } else if commands && raw.starts_with("cmd_") {
        CommandId::parse(raw)
            .map(Named::Command)
            .map_err(|e| invalid(e.to_string()))
    } else if commands {
        Err(invalid(
            "is not a run id (run_…), request id (hitl_req_…) or command id (cmd_…)".into(),
        ))
    } else {
        Err(invalid(
            "is not a run id (run_…) or request id (hitl_req_…)".into(),
        ))
    }
}

/// `GET /api/hitl/requests/{id}`.
async fn request(client: &Client, id: &RequestId) -> Result<Value, Failure> {
    let path = format!("/api/hitl/requests/{id}");
    Ok(client.send(&Call::get(&path)).await?.success()?.body)
}

/// `show`: a run (given its id or one of its requests' ids), or a command.
pub async fn show(client: &Client, args: &ShowArgs) -> Result<(), Failure> {
    let (path, focus) = match named(&args.id, "RUN_OR_REQUEST_ID", true)? {
        Named::Run(run) => (format!("/api/runs/{run}"), None),
        Named::Request(id) => {
            let request = request(client, &id).await?;
            let run = request["runId"].as_str().unwrap_or_default().to_owned();
            (format!("/api/runs/{run}"), Some(id))
        }
        Named::Command(id) => {
            let path = format!("/api/hitl/commands/{id}");
            let command = client.send(&Call::get(&path)).await?.success()?.body;
            match args.client.output {
                OutputFormat::Json => print_json(&command),
                OutputFormat::Table => println!("{}", render::command(&command)),
            }
            return Ok(());
        }
    };
    let snapshot = client.send(&Call::get(&path)).await?.success()?.body;
    match args.client.output {
        OutputFormat::Json => print_json(&snapshot),
        OutputFormat::Table => println!(
            "{}",
            render::run(&snapshot, focus.as_ref().map(RequestId::as_str))
        ),
    }
    Ok(())
}

/// The body's `operator`, when the command line names one.
fn operator(client: &Client) -> Option<Value> {
    client.operator.as_ref().map(|(id, name)| match name {
        Some(n) => json!({ "id": id, "displayName": n }),
        None => json!({ "id": id }),
    })
}

/// `body` with `operator` and `note` added where given.
fn with_operator_and_note(mut body: Value, client: &Client, submit: &SubmitArgs) -> Value {
    if let Some(op) = operator(client) {
        body["operator"] = op;
    }
    if let Some(note) = &submit.note {
        body["note"] = json!(note);
    }
    body
}

/// `resume`: the request read (for its run and items), the answers built from the flags
/// or asked for, then submitted.
pub async fn resume(client: &Client, args: &ResumeArgs) -> Result<(), Failure> {
    let id = RequestId::parse(&args.request_id)
        .map_err(|e| Failure::Invalid(format!("REQUEST_ID: `{}` {e}", args.request_id)))?;
    let decisions = resume::from_flags(args)?;
    if decisions.is_none() && !resume::can_ask() {
        return Err(Failure::Usage(
            "no decision: give --approve, --reject, --option ID, --text TEXT or \
             --item ITEM_ID=DECISION (or run on a terminal to be asked)"
                .into(),
        ));
    }
    let request = request(client, &id).await?;
    let decisions = match decisions {
        Some(d) => d,
        None => {
            if request["status"] != "pending" {
                return Err(Failure::Api(Box::new(not_pending(&request))));
            }
            match resume::ask(&request, args.yes) {
                Some(d) => d,
                None => {
                    eprintln!("nothing sent");
                    return Ok(());
                }
            }
        }
    };
    let responses = resume::responses(
        &request,
        &decisions,
        args.text.as_deref(),
        client.operator.as_ref(),
    );
    let mut body = with_operator_and_note(
        json!({ "runId": request["runId"], "requestId": id, "responses": responses }),
        client,
        &args.submit,
    );
    if args.force {
        body["force"] = json!(true);
    }
    submit(
        client,
        "/api/hitl/resume",
        &body,
        &args.submit,
        args.client.output,
    )
    .await
}

/// A 409 as the service would answer it, for a request seen settled before asking.
fn not_pending(request: &Value) -> Reply {
    Reply {
        status: 409,
        headers: Default::default(),
        body: json!({ "error": { "code": "not_pending",
            "message": format!("request {} is {}, not pending",
                request["requestId"].as_str().unwrap_or("?"),
                request["status"].as_str().unwrap_or("?")),
            "details": { "requestId": request["requestId"], "requestStatus": request["status"],
                         "runId": request["runId"], "runStatus": request["runStatus"] } } }),
    }
}

/// `remove`: the run given, or the run of the request given (which must then still be
/// its pending one).
pub async fn remove(client: &Client, args: &RemoveArgs) -> Result<(), Failure> {
    let mut body = json!({ "reason": args.reason });
    match named(&args.id, "RUN_ID", false)? {
        Named::Run(run) => body["runId"] = json!(run),
        Named::Request(id) => {
            let request = request(client, &id).await?;
            body["runId"] = request["runId"].clone();
            body["requestId"] = json!(id);
        }
        Named::Command(_) => unreachable!("commands are not accepted here"),
    }
    if args.force {
        body["force"] = json!(true);
    }
    let body = with_operator_and_note(body, client, &args.submit);
    submit(
        client,
        "/api/hitl/remove",
        &body,
        &args.submit,
        args.client.output,
    )
    .await
}

/// `retry`.
pub async fn retry(client: &Client, args: &RetryArgs) -> Result<(), Failure> {
    let run = RunId::parse(&args.run_id)
        .map_err(|e| Failure::Invalid(format!("RUN_ID: `{}` {e}", args.run_id)))?;
    let body = with_operator_and_note(json!({}), client, &args.submit);
    let path = format!("/api/runs/{run}/retry");
    submit(client, &path, &body, &args.submit, args.client.output).await
}

/// `claim`: `POST /api/hitl/claim`, answered at once.
pub async fn claim(client: &Client, args: &ClaimArgs) -> Result<(), Failure> {
    let id = RequestId::parse(&args.request_id)
        .map_err(|e| Failure::Invalid(format!("REQUEST_ID: `{}` {e}", args.request_id)))?;
    let mut body = json!({ "requestId": id });
    if let Some(lease) = args.lease {
        let seconds = lease.0.as_secs();
        if !(1..=86_400).contains(&seconds) {
            return Err(Failure::Usage(format!(
                "--lease: {lease} is not between 1s and 24h"
            )));
        }
        body["leaseSeconds"] = json!(seconds);
    }
    claim_call(
        client,
        "/api/hitl/claim",
        body,
        args.force,
        args.client.output,
    )
    .await
}

/// `unclaim`: `POST /api/hitl/unclaim`, answered at once.
pub async fn unclaim(client: &Client, args: &UnclaimArgs) -> Result<(), Failure> {
    let id = RequestId::parse(&args.request_id)
        .map_err(|e| Failure::Invalid(format!("REQUEST_ID: `{}` {e}", args.request_id)))?;
    let body = json!({ "requestId": id });
    claim_call(
        client,
        "/api/hitl/unclaim",
        body,
        args.force,
        args.client.output,
    )
    .await
}

/// A claim or a release: it changes nothing when repeated (a claim renews its own
/// lease), so a network error may retry it as is.
async fn claim_call(
    client: &Client,
    path: &str,
    mut body: Value,
    force: bool,
    output: OutputFormat,
) -> Result<(), Failure> {
    if let Some(op) = operator(client) {
        body["operator"] = op;
    }
    if force {
        body["force"] = json!(true);
    }
    let reply = client.send(&Call::post(path, &body)).await?.success()?;
    match output {
        OutputFormat::Json => print_json(&reply.body),
        OutputFormat::Table => println!("{}", render::claim(&reply.body)),
    }
    Ok(())
}

/// Submits a command under one `Idempotency-Key` and, with `--wait`, follows it to its
/// outcome.
async fn submit(
    client: &Client,
    path: &str,
    body: &Value,
    args: &SubmitArgs,
    output: OutputFormat,
) -> Result<(), Failure> {
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7().simple()));
    // On stderr, so that `--output json` keeps stdout one document.
    eprintln!("Idempotency-Key: {key}");
    let deadline = args.wait.map(|w| Instant::now() + w.0);
    let mut call = Call::post(path, body);
    call.headers.push(("idempotency-key", key));
    call.retry_note = " with the same Idempotency-Key";
    if let Some(wait) = args.wait {
        let seconds = wait.0.as_secs().min(MAX_SERVER_WAIT);
        call.headers.push(("prefer", format!("wait={seconds}")));
        call.timeout = CALL_TIMEOUT + Duration::from_secs(seconds);
    }
    let reply = client.send(&call).await?;
    if reply
        .headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
    {
        eprintln!("replayed: this key recorded the command before; this is that command");
    }
    let reply = reply.success()?;
    let command = if reply.status == 200 {
        reply.body
    } else {
        match deadline {
            None => {
                let accepted = reply.body;
                match output {
                    OutputFormat::Json => print_json(&accepted),
                    OutputFormat::Table => println!(
                        "accepted: {} {} is {}; follow it with `hitl-orchestrator show {}`",
                        accepted["kind"].as_str().unwrap_or("command"),
                        accepted["commandId"].as_str().unwrap_or("?"),
                        accepted["status"].as_str().unwrap_or("queued"),
                        accepted["commandId"].as_str().unwrap_or("?"),
                    ),
                }
                return Ok(());
            }
            Some(deadline) => follow(client, &reply.body, deadline).await?,
        }
    };
    match output {
        OutputFormat::Json => print_json(&command),
        OutputFormat::Table => println!("{}", render::command(&command)),
    }
    Ok(())
}

/// Polls the command `accepted` names until it is final (`Ok` only when it succeeded)
/// or `deadline` passes.
async fn follow(client: &Client, accepted: &Value, deadline: Instant) -> Result<Value, Failure> {
    let id = accepted["commandId"].as_str().unwrap_or_default();
    let path = format!("/api/hitl/commands/{id}");
    let mut last = accepted.clone();
    loop {
        match last["status"].as_str() {
            Some("succeeded") => return Ok(last),
            Some("rejected") => return Err(Failure::Rejected(last)),
            Some("failed") => return Err(Failure::CommandFailed(last)),
            _ if Instant::now() >= deadline => return Err(Failure::Unfinished(last)),
            _ => {}
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        last = client.send(&Call::get(&path)).await?.success()?.body;
    }
}
