//! One run: `GET /console/runs/{runId}` shows its status, the nodes of its plan, its
//! requests (with claim and release buttons for the pending one), its audit timeline and
//! its commands; a failed run offers a retry (`POST /console/runs/{runId}/retry`, through
//! the service exactly as `POST /api/runs/{runId}/retry`). `GET /console/runs?id=…` finds
//! a run by its id or its thread's id (the header's lookup form).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{self, Chrome, RunPage};
use super::views::{AuditView, age, person, when};
use super::{Console, Signed, form, request, session};
use crate::domain::{RequestStatus, RunId, RunStatus, ThreadId};
use crate::service::{CommandInput, CommandRecord, RunSnapshot, RunTarget};

/// One node of the run's plan.
pub struct NodeView {
    pub id: String,
    pub kind: String,
    /// The capability of a task, the prompt of a `hitl` node.
    pub what: String,
}

/// One request the run raised.
pub struct RunRequestView {
    pub request_id: String,
    pub node: String,
    pub prompt: String,
    pub status: String,
    pub pending: bool,
    pub claim: Option<String>,
    pub claimed_by_me: bool,
    pub created: String,
}

/// One command sent to the run.
pub struct CommandView {
    pub command_id: String,
    pub kind: String,
    pub status: String,
    pub by: String,
    pub at: String,
    pub error: Option<String>,
}

/// Everything the run page shows.
pub struct RunDetail {
    pub run_id: String,
    pub thread_id: String,
    pub brief_id: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub failed: bool,
    pub created: String,
    pub age: String,
    pub finished: Option<String>,
    pub nodes: Vec<NodeView>,
    pub requests: Vec<RunRequestView>,
    pub timeline: Vec<AuditView>,
    pub commands: Vec<CommandView>,
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn claim_of(
    until: Option<DateTime<Utc>>,
    holder: Option<String>,
    now: DateTime<Utc>,
) -> Option<String> {
    let (until, holder) = (until?, holder?);
    (until > now).then(|| format!("{holder} until {}", when(until)))
}

impl RunDetail {
    fn new(s: RunSnapshot, commands: Vec<CommandRecord>, me: &str, now: DateTime<Utc>) -> Self {
        let r = s.run;
        let nodes = r.plan["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| NodeView {
                        id: text(n, "id"),
                        kind: text(n, "type"),
                        what: match n["type"].as_str() {
                            Some("hitl") => text(n, "prompt"),
                            _ => text(n, "capability"),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        let requests = s
            .hitl_requests
            .iter()
            .map(|q| {
                let pending = q.status == RequestStatus::Pending;
                let holder = q.claimed_by.as_ref().map(|c| &c.0.operator);
                RunRequestView {
                    request_id: q.request_id.to_string(),
                    node: q.node_id.clone(),
                    prompt: q.operator_prompt.clone(),
                    status: q.status.to_string(),
                    pending,
                    claim: pending
                        .then(|| claim_of(q.claim_expires_at, holder.map(person), now))
                        .flatten(),
                    claimed_by_me: pending
                        && q.claim_expires_at.is_some_and(|u| u > now)
                        && holder.is_some_and(|o| o.id == me),
                    created: when(q.created_at),
                }
            })
            .collect();
        Self {
            run_id: r.run_id.to_string(),
            thread_id: r.thread_id.to_string(),
            brief_id: r.brief_id.to_string(),
            status: r.status.to_string(),
            status_reason: r.status_reason.clone(),
            failed: r.status == RunStatus::Failed,
            created: when(r.created_at),
            age: age(r.created_at, now),
            finished: r.finished_at.map(when),
            nodes,
            requests,
            timeline: s.audit_log.iter().map(AuditView::new).collect(),
            commands: commands
                .into_iter()
                .map(|c| CommandView {
                    command_id: c.command_id.to_string(),
                    kind: c.kind.to_string(),
                    status: c.status.to_string(),
                    by: person(&c.operator),
                    at: when(c.created_at),
                    error: c.error,
                })
                .collect(),
        }
    }
}

fn no_such_run() -> Response {
    pages::refused(StatusCode::NOT_FOUND, "Not found", "There is no such run.")
}

/// The run page of `id`, with `error` above it when a form was refused.
async fn detail(
    console: &Console,
    signed: &Signed,
    id: &RunId,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let loaded = async {
        let run = console.service.run(id).await?;
        let commands = console.service.run_commands(id).await?;
        Ok::<_, crate::service::ServiceError>((run, commands))
    };
    let (run, commands) = match loaded.await {
        Ok(parts) => parts,
        Err(e) => return pages::service_error(e, Some(signed)),
    };
    let r = RunDetail::new(run, commands, &signed.operator.id, Utc::now());
    pages::render(
        status,
        &RunPage {
            chrome: Chrome::of(signed),
            r,
            error,
            csrf: signed.csrf(),
            key: format!("console-{}", session::random_hex(16)),
        },
    )
}

/// `GET /console/runs/{runId}`.
pub async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match RunId::parse(&raw) {
        Ok(id) => detail(&console, &signed, &id, StatusCode::OK, None).await,
        Err(_) => no_such_run(),
    }
}

/// The lookup's query string.
#[derive(Debug, Default, Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    id: Option<String>,
}

/// `GET /console/runs?id=…`: to the run with this id, or the run of the thread with this
/// id; 422 naming `id` when it is blank or cannot be either.
pub async fn find(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<FindQuery>, QueryRejection>,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let raw = query.ok().and_then(|Query(q)| q.id).unwrap_or_default();
    let raw = raw.trim();
    let not_accepted = |message: &str| {
        let e = crate::service::ServiceError::invalid("id", message);
        pages::service_error(e, Some(&signed))
    };
    if raw.is_empty() {
        return not_accepted("give a run id or a thread id");
    }
    if let Ok(run) = RunId::parse(raw)
        && console.service.run(&run).await.is_ok()
    {
        return Redirect::to(&format!("/console/runs/{run}")).into_response();
    }
    let Ok(thread) = ThreadId::parse(raw) else {
        return not_accepted("is neither a run id nor a thread id");
    };
    match console.service.run_of_thread(&thread).await {
        Ok(Some(s)) => Redirect::to(&format!("/console/runs/{}", s.run.run_id)).into_response(),
        Ok(None) => pages::refused(
            StatusCode::NOT_FOUND,
            "Not found",
            "No run has this id, and no thread has this id.",
        ),
        Err(e) => pages::service_error(e, Some(&signed)),
    }
}

/// `POST /console/runs/{runId}/retry`: a `note`, the form's idempotency `key`.
pub async fn retry(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let fields = match form::read(&headers, body, console.max_body, console.body_timeout).await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    if let Err(refused) = signed.check_csrf(&fields) {
        return refused;
    }
    let Ok(id) = RunId::parse(&raw) else {
        return no_such_run();
    };
    let outcome = request::submit_for_run(
        &console,
        signed,
        &fields,
        RunTarget::run(id.clone()),
        CommandInput::Retry,
    )
    .await;
    match outcome {
        Ok(response) => response,
        Err((signed, problem)) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            detail(&console, &signed, &id, status, Some(problem)).await
        }
    }
}
