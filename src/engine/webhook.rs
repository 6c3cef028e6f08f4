//! The `agent.webhook` capability: the agent runtime lives behind HTTP and this service
//! holds its runner state.
//!
//! Each call POSTs `{runId, threadId, nodeId, input, executionContext, runnerState,
//! responses, idempotencyKey}` to the node's `config.url`, with the idempotency key also
//! in an `Idempotency-Key` header (one per node attempt, so an agent can deduplicate a
//! call delivered again after a failure or a crash) and, when a signing secret is set,
//! `X-Hitl-Signature: sha256=<hex HMAC of the body>`. The agent answers
//! `{"status": "completed", "output", "runnerState", "notes"}`,
//! `{"status": "interrupted", "request": {prompt, responseTypes, options, contract}, "runnerState"}`
//! or `{"status": "failed", "message"}`. `runnerState` is kept as the exact text sent and
//! sent back byte for byte; `null` clears it, leaving it out keeps it.
//!
//! One HTTP attempt per call. A network error, a timeout, 408, 429 or 5xx is a
//! [`TransientError`] (with the agent's `Retry-After`): the engine's retry policy decides
//! when to call again. Any other 4xx, a TLS failure (an untrusted certificate is
//! configuration, not an outage), a reply over `HITL_AGENT_MAX_RESPONSE`, a reply that is
//! not an agent reply or that PostgreSQL could not store fails the node at once. URLs
//! must be under one of `HITL_AGENT_ALLOWED_URLS` (scheme, host, port, path segments),
//! checked when the plan is created and again before every call; `https://` agents are
//! verified against the system's roots plus `HITL_AGENT_CA_FILE`.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::Sha256;

use super::capability::{
    BoxFuture, Capability, CapabilityCall, CapabilityOutcome, Interrupt, RunnerStateUpdate,
    TransientError,
};
use super::plan::Contract;
use crate::config::Secret;
use crate::domain::{ResponseType, TimeoutAction};
use crate::persistence::{ItemKind, ItemOption, RequestItem, ResponseRecord, ToolCall};
use crate::telemetry::metrics::metrics;

/// How agent calls are made.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// URLs calls may go to (and below, at path segments); empty: none.
    pub allowed_urls: Vec<String>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// The largest reply read, in bytes; a longer one fails the node.
    pub max_response: usize,
    /// Extra roots (PEM) trusted for `https://` agents, beside the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Signs each body (HMAC-SHA256) when set.
    pub signing_secret: Option<Secret>,
}

/// Why the webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("HITL_AGENT_CA_FILE {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("the HTTP client cannot be built: {0}")]
    Client(String),
}

/// The `agent.webhook` capability.
pub struct AgentWebhook {
    client: reqwest::Client,
    settings: WebhookSettings,
}

impl AgentWebhook {
    /// A webhook caller with `settings`.
    pub fn new(settings: WebhookSettings) -> Result<Self, WebhookError> {
        crate::tls::install_provider();
        for (i, entry) in settings.allowed_urls.iter().enumerate() {
            if reqwest::Url::parse(entry).map_or(true, |u| u.host_str().is_none()) {
                // Named by position: an entry may hold something private.
                tracing::warn!(
                    entry = i + 1,
                    "an HITL_AGENT_ALLOWED_URLS entry is not a URL with a host; it allows nothing"
                );
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let ca_error = |message: String| WebhookError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_error(format!("not a PEM certificate bundle ({e})")))?;
            if roots.is_empty() {
                return Err(ca_error("holds no certificate".into()));
            }
            builder = builder.tls_certs_merge(roots);
        }
        let client = builder
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self { client, settings })
    }

    /// A call URL is allowed when it parses, has no user information, and matches an
    /// allow-list entry in scheme, host and port, with its path under the entry's path at
    /// a segment boundary (`/publish` admits `/publish` and `/publish/x`, not
    /// `/publisher`). A plain string prefix would let `http://agents.internal` admit
    /// `http://agents.internal.evil.example/` and `http://agents.internal@evil.example/`.
    fn check_url(&self, url: &str) -> Result<(), String> {
        check_allowed_url(&self.settings.allowed_urls, url)
    }

    fn sign(&self, body: &[u8]) -> Option<String> {
        let secret = self.settings.signing_secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        Some(format!(
            "sha256={}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// One POST of `bytes` to `url`, and its reply read up to the size limit.
    async fn post(&self, url: &str, call: &CapabilityCall<'_>, bytes: Vec<u8>) -> Attempt {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", call.attempt_key);
        if let Some(sig) = self.sign(&bytes) {
            request = request.header("x-hitl-signature", sig);
        }
        // The agent's spans join the run's trace.
        for (k, v) in crate::telemetry::current_trace_context().unwrap_or_default() {
            request = request.header(k, v);
        }
        let response = match request.body(bytes).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::from_send_error(&e),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let limit = self.settings.max_response;
        let text = match read_limited(response, limit).await {
            Ok(text) => text,
            Err(Read::TooLarge) => {
                return Attempt::Permanent(format!(
                    "the agent's reply is larger than HITL_AGENT_MAX_RESPONSE ({limit} bytes)"
                ));
            }
            Err(Read::Failed(e)) => return Attempt::from_send_error(&e),
            Err(Read::NotText) => {
                return Attempt::Permanent("the agent's reply is not UTF-8 text".into());
            }
        };
        Attempt::Answered {
            status,
            text,
            retry_after,
        }
    }
}

/// How one HTTP attempt went.
enum Attempt {
    /// The agent answered (any status) with a body of at most the limit.
    Answered {
        status: reqwest::StatusCode,
        text: String,
        retry_after: Option<Duration>,
    },
    /// Worth another attempt later: (metric kind, message).
    Transient(&'static str, String),
    /// Will not get better by trying again.
    Permanent(String),
}

impl Attempt {
    fn from_send_error(e: &reqwest::Error) -> Self {
        if let Some(tls) = tls_failure(e) {
            return Attempt::Permanent(format!("TLS with the agent failed: {tls}"));
        }
        if e.is_timeout() {
            Attempt::Transient("timeout", "timed out".into())
        } else {
            Attempt::Transient("network", describe(e))
        }
    }
}

/// The error's own text and its causes', which is where reqwest keeps "connection refused".
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The TLS error under `e`, if the attempt failed in the handshake. `io::Error` hides its
/// payload from `source()` (and hyper nests one in another), so payloads are looked into.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    fn find(e: &(dyn std::error::Error + 'static)) -> Option<String> {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = find(inner)
        {
            return Some(found);
        }
        e.source().and_then(find)
    }
    find(e)
}

enum Read {
    TooLarge,
    NotText,
    Failed(reqwest::Error),
}

/// Reads the body chunk by chunk, giving up (and dropping the connection) as soon as it
/// passes `limit`, so an agent cannot make us hold more than that.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<String, Read> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Read::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Read::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(Read::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| Read::NotText)
}

/// `Retry-After` as seconds or an HTTP date; capped at a day so a confused agent cannot
/// park a run for longer than any window would allow.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(Duration::from_secs(86_400)))
}

/// The body of a call. `runnerState` is embedded as the text the agent sent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallBody<'a> {
    run_id: &'a crate::domain::RunId,
    thread_id: &'a crate::domain::ThreadId,
    node_id: &'a str,
    input: &'a Map<String, Value>,
    execution_context: &'a Value,
    runner_state: Option<&'a RawValue>,
    responses: Option<&'a [ResponseRecord]>,
    idempotency_key: &'a str,
}

/// What an agent answers (without `runnerState`, which is read apart as text).
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
enum AgentReply {
    #[serde(rename_all = "camelCase")]
    Completed {
        #[serde(default)]
        output: Value,
        #[serde(default)]
        notes: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    Interrupted { request: Box<AgentRequest> },
    Failed {
        #[serde(default)]
        message: Option<String>,
    },
}

/// An agent's HITL request: `items` (several decisions), or the older one-question shape
/// (`responseTypes`, `options`), read as one item whose id is the node's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentRequest {
    prompt: String,
    #[serde(default)]
    items: Option<Vec<AgentItem>>,
    #[serde(default)]
    response_types: Option<Vec<ResponseType>>,
    #[serde(default)]
    options: Vec<AgentOption>,
    #[serde(default)]
    contract: Option<AgentContract>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    on_timeout: Option<TimeoutAction>,
    #[serde(default)]
    assignees: Option<Value>,
    #[serde(default)]
    approvals: Option<Value>,
    #[serde(default)]
    remind_every_seconds: Option<Value>,
    #[serde(default)]
    escalation: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentItem {
    item_id: String,
    #[serde(default)]
    kind: Option<ItemKind>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    tool: Option<ToolCall>,
    #[serde(default)]
    response_types: Option<Vec<ResponseType>>,
    #[serde(default)]
    options: Vec<AgentOption>,
}

/// The longest deadline an agent may set: a year.
const MAX_TIMEOUT_SECONDS: u64 = 366 * 24 * 3600;

/// Reads an agent's request into the items it asks, or why it cannot be raised (the
/// field named, as `request.items[1].itemId`).
fn interrupt(node_id: &str, request: AgentRequest) -> Result<Interrupt, String> {
    fn bad<T>(field: String, why: &str) -> Result<T, String> {
        Err(format!("agent reply: request.{field}: {why}"))
    }
    if request.prompt.trim().is_empty() {
        return bad("prompt".into(), "must not be empty");
    }
    let options = |field: String, options: Vec<AgentOption>, types: &[ResponseType]| {
        let mut seen: Vec<ItemOption> = Vec::with_capacity(options.len());
        for (i, o) in options.into_iter().enumerate() {
            if o.id.is_empty() || seen.iter().any(|s| s.id == o.id) {
                return bad(format!("{field}[{i}].id"), "must be non-empty and unique");
            }
            seen.push(ItemOption {
                id: o.id,
                label: o.label,
            });
        }
        if types.contains(&ResponseType::Option) && seen.is_empty() {
            return bad(
                field,
                "must offer an option when option answers are accepted",
            );
        }
        Ok(seen)
    };
    let types = |field: String, types: Vec<ResponseType>| {
        if types.is_empty() {
            return bad(field, "must list at least one response type");
        }
        if let Some(i) = (1..types.len()).find(|&i| types[..i].contains(&types[i])) {
            return bad(format!("{field}[{i}]"), "is listed twice");
        }
        Ok(types)
    };
    let one_item = request.items.is_none();
    let items = match (request.items, request.response_types) {
        (Some(_), Some(_)) => {
            return bad(
                "responseTypes".into(),
                "goes into each item when the request has items",
            );
        }
        (None, None) => return bad("items".into(), "is required (or responseTypes)"),
        (None, Some(response_types)) => {
            let response_types = types("responseTypes".into(), response_types)?;
            let options = options("options".into(), request.options, &response_types)?;
            vec![RequestItem {
                item_id: node_id.to_owned(),
                kind: ItemKind::Question,
                title: request.prompt.clone(),
                tool: None,
                response_types,
                options,
            }]
        }
        (Some(items), None) => {
            if items.is_empty() || items.len() > 100 {
                return bad("items".into(), "must hold 1 to 100 items");
            }
            let mut out: Vec<RequestItem> = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let at = |f: &str| format!("items[{i}].{f}");
                if item.item_id.is_empty() || item.item_id.chars().count() > 200 {
                    return bad(at("itemId"), "must be 1 to 200 characters");
                }
                if out.iter().any(|o| o.item_id == item.item_id) {
                    return bad(at("itemId"), "must be unique in the request");
                }
                let kind = item.kind.unwrap_or(if item.tool.is_some() {
                    ItemKind::ToolApproval
                } else {
                    ItemKind::Question
                });
                let title = match (item.title, &item.tool) {
                    (Some(t), _) if !t.trim().is_empty() => t,
                    (None, Some(tool)) => format!("Run {}", tool.name),
                    _ => return bad(at("title"), "is required (or a tool to name)"),
                };
                let response_types = types(
                    at("responseTypes"),
                    item.response_types
                        .unwrap_or_else(|| vec![ResponseType::Approval, ResponseType::Rejection]),
                )?;
                if response_types.contains(&ResponseType::Edit) && item.tool.is_none() {
                    return bad(
                        at("responseTypes"),
                        "edit needs a tool whose arguments to edit",
                    );
                }
                let options = options(at("options"), item.options, &response_types)?;
                out.push(RequestItem {
                    item_id: item.item_id,
                    kind,
                    title,
                    tool: item.tool,
                    response_types,
                    options,
                });
            }
            out
        }
    };
    let deadline = match (request.timeout_seconds, request.on_timeout) {
        (None, None) => None,
        (None, Some(_)) => return bad("onTimeout".into(), "needs timeoutSeconds"),
        (Some(s), _) if s == 0 || s > MAX_TIMEOUT_SECONDS => {
            return bad("timeoutSeconds".into(), "must be 1 to 31622400 (a year)");
        }
        (Some(s), action) => Some((s, action.unwrap_or(TimeoutAction::Reject))),
    };
    let assignees = match request.assignees.filter(|v| !v.is_null()) {
        None => None,
        Some(value) => Some(
            super::plan::parse_assignees(&value)
                .or_else(|(field, why)| bad(format!("assignees{field}"), &why))?,
        ),
    };
    let approvals = match request.approvals.filter(|v| !v.is_null()) {
        None => None,
        Some(value) => {
            let n = super::plan::parse_approvals(&value)
                .or_else(|(field, why)| bad(format!("approvals{field}"), &why))?;
            if let Some((i, why)) = items.iter().enumerate().find_map(|(i, item)| {
                super::plan::approvals_fit(&item.response_types)
                    .err()
                    .map(|why| (i, why))
            }) {
                let field = if one_item {
                    "responseTypes".to_owned()
                } else {
                    format!("items[{i}].responseTypes")
                };
                return bad(field, &why);
            }
            Some(n)
        }
    };
    let follow_up = super::plan::parse_follow_up(
        request.remind_every_seconds.as_ref(),
        request.escalation.as_ref(),
    )
    .or_else(|(field, why)| bad(field, &why))?;
    let contract = request.contract.unwrap_or_default();
    Ok(Interrupt {
        follow_up,
        approvals,
        assignees,
        prompt: request.prompt,
        items,
        contract: Contract {
            facets: contract.facets,
            capability_contract: contract.capability_contract,
        },
        deadline,
    })
}

#[derive(Deserialize)]
struct AgentOption {
    id: String,
    label: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AgentContract {
    #[serde(default)]
    facets: Vec<String>,
    #[serde(default)]
    capability_contract: Map<String, Value>,
}

/// A JSON object's members in order, each value as its exact text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads a reply: `runnerState` apart as exact text; every other member checked to be
/// storable (naming the path) and then read as an [`AgentReply`].
fn parse_reply(node_id: &str, text: &str) -> Result<CapabilityOutcome, String> {
    let Members(members) = serde_json::from_str(text)
        .map_err(|e| format!("agent answered with an invalid body: {e}"))?;
    let mut rest = Map::new();
    let mut runner_state = RunnerStateUpdate::Keep;
    for (key, raw) in members {
        if rest.contains_key(&key)
            || (key == "runnerState" && runner_state != RunnerStateUpdate::Keep)
        {
            return Err(format!("agent reply: {}: is given twice", printable(&key)));
        }
        if key == "runnerState" {
            runner_state = match raw.get() {
                "null" => RunnerStateUpdate::Clear,
                exact => RunnerStateUpdate::Set(exact.to_owned()),
            };
            continue;
        }
        if let Err(u) = crate::domain::storable::check(raw.get().as_bytes()) {
            let path = match u.path.as_str() {
                "body" => printable(&key),
                p if p.starts_with('[') => format!("{}{p}", printable(&key)),
                p => format!("{}.{p}", printable(&key)),
            };
            return Err(format!("agent reply: {path}: {}", u.message));
        }
        if key.contains('\0') {
            return Err(format!(
                "agent reply: {}: must not contain U+0000",
                printable(&key)
            ));
        }
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| format!("agent answered with an invalid body: {e}"))?;
        rest.insert(key, value);
    }
    let reply: AgentReply = serde_json::from_value(Value::Object(rest))
        .map_err(|e| format!("agent answered with an invalid body: {e}"))?;
    Ok(outcome(node_id, reply, runner_state))
}

/// A key as it can be shown and stored.
fn printable(key: &str) -> String {
    key.replace('\0', "\\u0000")
}

/// Whether `url` is allowed by the list `allowed` (see `AgentWebhook::check_url`); the
/// notification channels' allow-list is matched the same way.
pub fn check_allowed_url(allowed: &[String], url: &str) -> Result<(), String> {
    let Ok(call) = reqwest::Url::parse(url) else {
        return Err("is not a URL".into());
    };
    if !matches!(call.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if !call.username().is_empty() || call.password().is_some() {
        return Err("must not carry user information".into());
    }
    if allowed
        .iter()
        .filter_map(|entry| reqwest::Url::parse(entry).ok())
        .any(|entry| allows(&entry, &call))
    {
        Ok(())
    } else {
        Err("is not under an allowed agent URL (HITL_AGENT_ALLOWED_URLS)".into())
    }
}

/// Whether the allow-list `entry` admits `call` (see `AgentWebhook::check_url`).
fn allows(entry: &reqwest::Url, call: &reqwest::Url) -> bool {
    let same_origin = entry.scheme() == call.scheme()
        && entry.host_str().is_some()
        && entry.host_str() == call.host_str()
        && entry.port_or_known_default() == call.port_or_known_default()
        && entry.username().is_empty()
        && entry.password().is_none();
    let base = entry.path().trim_end_matches('/');
    let path = call.path();
    same_origin
        && (base.is_empty()
            || path == base
            || path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/')))
}

impl Capability for AgentWebhook {
    fn validate(&self, config: &Map<String, Value>) -> Result<(), (String, String)> {
        match config.get("url").and_then(Value::as_str) {
            None => Err(("url".into(), "is required for agent.webhook".into())),
            Some(url) => self.check_url(url).map_err(|m| ("url".into(), m)),
        }
    }

    fn call<'a>(
        &'a self,
        call: CapabilityCall<'a>,
    ) -> BoxFuture<'a, Result<CapabilityOutcome, TransientError>> {
        Box::pin(async move {
            let failed = |message: String| Ok(CapabilityOutcome::Failed { message });
            let Some(url) = call.config.get("url").and_then(Value::as_str) else {
                return failed("agent.webhook: config.url is missing".into());
            };
            if let Err(why) = self.check_url(url) {
                return failed(format!("agent.webhook: config.url {why}"));
            }
            let runner_state = match call
                .runner_state
                .map(|s| RawValue::from_string(s.to_owned()))
            {
                None => None,
                Some(Ok(raw)) => Some(raw),
                Some(Err(e)) => return failed(format!("the stored runner state is not JSON: {e}")),
            };
            let body = CallBody {
                run_id: call.run_id,
                thread_id: call.thread_id,
                node_id: call.node_id,
                input: call.input,
                execution_context: call.execution_context,
                runner_state: runner_state.as_deref(),
                responses: call.responses,
                idempotency_key: call.attempt_key,
            };
            let bytes = match serde_json::to_vec(&body) {
                Ok(b) => b,
                Err(e) => return failed(format!("the call cannot be encoded: {e}")),
            };
            let started = std::time::Instant::now();
            let record = |outcome: &str| {
                let m = metrics();
                let took = started.elapsed().as_secs_f64();
                m.observe("hitl_agent_call_seconds", &[("outcome", outcome)], took);
                if outcome != "ok" {
                    m.inc("hitl_agent_errors_total", &[("kind", outcome)]);
                }
            };
            let (status, text, retry_after) = match self.post(url, &call, bytes).await {
                Attempt::Answered {
                    status,
                    text,
                    retry_after,
                } => (status, text, retry_after),
                Attempt::Transient(kind, message) => {
                    record(kind);
                    tracing::warn!(node = call.node_id, error = %message, "agent call failed; it will be retried");
                    return Err(TransientError {
                        message,
                        retry_after: None,
                    });
                }
                Attempt::Permanent(message) => {
                    record("refused");
                    return failed(message);
                }
            };
            let retried_status = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            if retried_status {
                record(if status.is_server_error() {
                    "http_5xx"
                } else {
                    "http_4xx"
                });
                tracing::warn!(node = call.node_id, %status, "agent answered with a status worth retrying");
                return Err(TransientError {
                    message: format!("HTTP {status}"),
                    retry_after,
                });
            }
            if !status.is_success() {
                record("http_4xx");
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v["message"]
                            .as_str()
                            .or(v["error"]["message"].as_str())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| format!("agent refused the call (HTTP {status})"));
                // The agent's words become the run's reason, so they must be storable too.
                return failed(message.replace('\0', "\\u0000"));
            }
            record("ok");
            match parse_reply(call.node_id, &text) {
                Ok(outcome) => Ok(outcome),
                Err(message) => failed(message),
            }
        })
    }
}

fn outcome(node_id: &str, reply: AgentReply, runner_state: RunnerStateUpdate) -> CapabilityOutcome {
    match reply {
        AgentReply::Completed { output, notes } => {
            let mut merge = Map::new();
            merge.insert(node_id.to_owned(), output);
            CapabilityOutcome::Completed {
                merge,
                runner_state,
                notes,
            }
        }
        AgentReply::Interrupted { request } => match interrupt(node_id, *request) {
            Ok(request) => CapabilityOutcome::Interrupted {
                request,
                runner_state,
            },
            Err(message) => CapabilityOutcome::Failed { message },
        },
        AgentReply::Failed { message } => CapabilityOutcome::Failed {
            message: message.unwrap_or_else(|| "the agent reported a failure".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(allowed: &[&str]) -> AgentWebhook {
        AgentWebhook::new(WebhookSettings {
            allowed_urls: allowed.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(1),
            max_response: 1024,
            ca_file: None,
            signing_secret: None,
        })
        .unwrap()
    }

    #[test]
    fn the_allow_list_compares_origin_and_path_segments_not_string_prefixes() {
        let w = webhook(&[
            "http://agents.internal",
            "http://127.0.0.1:9000/publish/",
            "https://secure.internal:8443",
        ]);
        for ok in [
            "http://agents.internal/",
            "http://agents.internal/run/x",
            "http://agents.internal/publish",
            "https://secure.internal:8443/agent",
            "http://agents.internal:80/x",
            "http://AGENTS.internal/x",
            "http://127.0.0.1:9000/publish",
            "http://127.0.0.1:9000/publish/now",
        ] {
            assert!(w.check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://agents.internal.evil.example/",
            "http://agents.internal@evil.example/",
            "http://user:pw@agents.internal/",
            "http://agents.internal:8080/",
            "https://agents.internal/",
            "ftp://agents.internal/",
            "http://127.0.0.1:9000/publisher",
            "http://127.0.0.1:9001/publish",
            "http://secure.internal:8443/agent",
            "https://secure.internal/agent",
            "http://127.0.0.1:9000/",
            "not a url",
        ] {
            assert!(w.check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn runner_state_is_kept_as_sent_null_clears_it_and_absent_keeps_it() {
        let state = r#"{"b": 1, "a": "\u0000", "a": 12345678901234567890123}"#;
        let text = format!(r#"{{"status": "completed", "output": 1, "runnerState": {state}}}"#);
        let Ok(CapabilityOutcome::Completed { runner_state, .. }) = parse_reply("n", &text) else {
            panic!("a completed reply")
        };
        assert_eq!(runner_state, RunnerStateUpdate::Set(state.to_owned()));
        let cleared = parse_reply("n", r#"{"status": "completed", "runnerState": null}"#);
        assert!(matches!(
            cleared,
            Ok(CapabilityOutcome::Completed {
                runner_state: RunnerStateUpdate::Clear,
                ..
            })
        ));
        let kept = parse_reply("n", r#"{"status": "completed"}"#);
        assert!(matches!(
            kept,
            Ok(CapabilityOutcome::Completed {
                runner_state: RunnerStateUpdate::Keep,
                ..
            })
        ));
    }

    #[test]
    fn the_rest_of_a_reply_must_be_storable_and_given_once_naming_the_field() {
        for (reply, named) in [
            (
                r#"{"status": "completed", "output": {"t": ["ok", "\u0000"]}}"#,
                "output.t[1]",
            ),
            (r#"{"status": "completed", "output": "\u0000"}"#, "output"),
            (
                r#"{"status": "completed", "output": 1, "output": 2}"#,
                "output",
            ),
            (
                r#"{"status": "completed", "runnerState": {}, "runnerState": {}}"#,
                "runnerState",
            ),
            (r#"{"status": "failed", "message": "a\u0000b"}"#, "message"),
        ] {
            let Err(message) = parse_reply("n", reply) else {
                panic!("refused: {reply}")
            };
            assert!(
                message.starts_with(&format!("agent reply: {named}: ")),
                "{reply}: {message}"
            );
        }
        let Err(message) = parse_reply("n", r#"{"status": "sleeping"}"#) else {
            panic!("refused")
        };
        assert!(
            message.starts_with("agent answered with an invalid body"),
            "{message}"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_capped_at_a_day() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("9999999"),
            Some(Duration::from_secs(86_400))
        );
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = parse_retry_after(&soon).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
