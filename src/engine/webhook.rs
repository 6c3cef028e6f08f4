//! The `agent.webhook` capability: the agent runtime lives behind HTTP and this service
//! holds its runner state.
//!
//! Each call POSTs `{runId, threadId, nodeId, input, executionContext, runnerState,
//! responses, idempotencyKey}` to the node's `config.url`, with the idempotency key also
//! in an `Idempotency-Key` header (stable per node attempt, so an agent can deduplicate a
//! call repeated after a crash) and, when a signing secret is set, `X-Hitl-Signature:
//! sha256=<hex HMAC of the body>`. The agent answers
//! `{"status": "completed", "output", "runnerState", "notes"}`,
//! `{"status": "interrupted", "request": {prompt, responseTypes, options, contract}, "runnerState"}`
//! or `{"status": "failed", "message"}`.
//!
//! Network errors, timeouts and 5xx are retried with exponential backoff, up to
//! `HITL_AGENT_MAX_ATTEMPTS`; then the node fails. A 4xx is not retried: the node fails
//! with the agent's message. URLs must start with one of `HITL_AGENT_ALLOWED_URLS`,
//! checked when the plan is created and again before every call. Plain `http://` only in
//! this build (no TLS stack is linked): put a TLS-terminating proxy in front of a remote
//! agent.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::capability::{
    BoxFuture, Capability, CapabilityCall, CapabilityOutcome, Interrupt, TransientError,
};
use super::plan::{Contract, HitlOption};
use crate::config::Secret;
use crate::domain::ResponseType;
use crate::telemetry::metrics::metrics;

/// How agent calls are made.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// URL prefixes calls may go to; empty: none.
    pub allowed_urls: Vec<String>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Tries per call before the node fails.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub backoff: Duration,
    /// Signs each body (HMAC-SHA256) when set.
    pub signing_secret: Option<Secret>,
}

/// The `agent.webhook` capability.
pub struct AgentWebhook {
    client: reqwest::Client,
    settings: WebhookSettings,
}

impl AgentWebhook {
    /// A webhook caller with `settings`.
    pub fn new(settings: WebhookSettings) -> Self {
        for (i, entry) in settings.allowed_urls.iter().enumerate() {
            if reqwest::Url::parse(entry).map_or(true, |u| u.host_str().is_none()) {
                // Named by position: an entry may hold something private.
                tracing::warn!(
                    entry = i + 1,
                    "an HITL_AGENT_ALLOWED_URLS entry is not a URL with a host; it allows nothing"
                );
            }
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { client, settings }
    }

    /// A call URL is allowed when it parses, has no user information, and matches an
    /// allow-list entry in scheme, host and port, with its path under the entry's path at
    /// a segment boundary (`/publish` admits `/publish` and `/publish/x`, not
    /// `/publisher`). A plain string prefix would let `http://agents.internal` admit
    /// `http://agents.internal.evil.example/` and `http://agents.internal@evil.example/`.
    fn check_url(&self, url: &str) -> Result<(), String> {
        let Ok(call) = reqwest::Url::parse(url) else {
            return Err("is not a URL".into());
        };
        if call.scheme() != "http" {
            return Err(
                "must be an http:// URL (this build links no TLS; terminate TLS in a proxy)".into(),
            );
        }
        if !call.username().is_empty() || call.password().is_some() {
            return Err("must not carry user information".into());
        }
        if self
            .settings
            .allowed_urls
            .iter()
            .filter_map(|entry| reqwest::Url::parse(entry).ok())
            .any(|entry| allows(&entry, &call))
        {
            Ok(())
        } else {
            Err("is not under an allowed agent URL (HITL_AGENT_ALLOWED_URLS)".into())
        }
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
}

/// What an agent answers.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
enum AgentReply {
    #[serde(rename_all = "camelCase")]
    Completed {
        #[serde(default)]
        output: Value,
        #[serde(default)]
        runner_state: Option<Value>,
        #[serde(default)]
        notes: Option<Value>,
    },
    #[serde(rename_all = "camelCase")]
    Interrupted {
        request: AgentRequest,
        #[serde(default)]
        runner_state: Option<Value>,
    },
    Failed {
        #[serde(default)]
        message: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentRequest {
    prompt: String,
    response_types: Vec<ResponseType>,
    #[serde(default)]
    options: Vec<AgentOption>,
    #[serde(default)]
    contract: Option<AgentContract>,
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
            let body = json!({
                "runId": call.run_id, "threadId": call.thread_id, "nodeId": call.node_id,
                "input": call.input, "executionContext": call.execution_context,
                "runnerState": call.runner_state, "responses": call.responses,
                "idempotencyKey": call.attempt_key,
            });
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let signature = self.sign(&bytes);
            let mut last_error = String::new();
            for attempt in 1..=self.settings.max_attempts.max(1) {
                if attempt > 1 {
                    let exp = (attempt - 2).min(16);
                    tokio::time::sleep(self.settings.backoff.saturating_mul(1 << exp)).await;
                }
                let mut request = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", call.attempt_key)
                    .body(bytes.clone());
                if let Some(sig) = &signature {
                    request = request.header("x-hitl-signature", sig.as_str());
                }
                // The agent's spans join the run's trace.
                for (k, v) in crate::telemetry::current_trace_context().unwrap_or_default() {
                    request = request.header(k, v);
                }
                let started = std::time::Instant::now();
                let record = |outcome: &str| {
                    let m = metrics();
                    let took = started.elapsed().as_secs_f64();
                    m.observe("hitl_agent_call_seconds", &[("outcome", outcome)], took);
                    if outcome != "ok" {
                        m.inc("hitl_agent_errors_total", &[("kind", outcome)]);
                    }
                };
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        record(if e.is_timeout() { "timeout" } else { "network" });
                        last_error = if e.is_timeout() {
                            "timed out".to_owned()
                        } else {
                            e.to_string()
                        };
                        tracing::warn!(node = call.node_id, attempt, error = %last_error, "agent call failed");
                        continue;
                    }
                };
                let status = response.status();
                let text = match response.text().await {
                    Ok(t) => t,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
                record(if status.is_server_error() {
                    "http_5xx"
                } else if status.is_success() {
                    "ok"
                } else {
                    "http_4xx"
                });
                if status.is_server_error() {
                    last_error = format!("HTTP {status}");
                    tracing::warn!(node = call.node_id, attempt, %status, "agent answered with a server error");
                    continue;
                }
                if !status.is_success() {
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| {
                            v["message"]
                                .as_str()
                                .or(v["error"]["message"].as_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| format!("agent refused the call (HTTP {status})"));
                    return failed(message);
                }
                // A reply PostgreSQL cannot store would fail every write of the node's
                // outcome, and the job would retry the call forever: fail the node instead.
                if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()
                    && let Err(u) = crate::domain::storable::check(text.as_bytes())
                {
                    return failed(format!("agent reply: {}: {}", u.path, u.message));
                }
                return Ok(match serde_json::from_str::<AgentReply>(&text) {
                    Ok(reply) => outcome(call.node_id, reply),
                    Err(e) => CapabilityOutcome::Failed {
                        message: format!("agent answered with an invalid body: {e}"),
                    },
                });
            }
            failed(format!(
                "agent at {url} did not answer after {} attempts: {last_error}",
                self.settings.max_attempts.max(1)
            ))
        })
    }
}

fn outcome(node_id: &str, reply: AgentReply) -> CapabilityOutcome {
    match reply {
        AgentReply::Completed {
            output,
            runner_state,
            notes,
        } => {
            let mut merge = Map::new();
            merge.insert(node_id.to_owned(), output);
            CapabilityOutcome::Completed {
                merge,
                runner_state,
                notes,
            }
        }
        AgentReply::Interrupted {
            request,
            runner_state,
        } => {
            let contract = request.contract.unwrap_or_default();
            CapabilityOutcome::Interrupted {
                request: Interrupt {
                    prompt: request.prompt,
                    response_types: request.response_types,
                    options: request
                        .options
                        .into_iter()
                        .map(|o| HitlOption {
                            id: o.id,
                            label: o.label,
                        })
                        .collect(),
                    contract: Contract {
                        facets: contract.facets,
                        capability_contract: contract.capability_contract,
                    },
                },
                runner_state,
            }
        }
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
            max_attempts: 1,
            backoff: Duration::from_millis(1),
            signing_secret: None,
        })
    }

    #[test]
    fn the_allow_list_compares_origin_and_path_segments_not_string_prefixes() {
        let w = webhook(&["http://agents.internal", "http://127.0.0.1:9000/publish/"]);
        for ok in [
            "http://agents.internal/",
            "http://agents.internal/run/x",
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
            "http://127.0.0.1:9000/publisher",
            "http://127.0.0.1:9001/publish",
            "http://127.0.0.1:9000/",
            "not a url",
        ] {
            assert!(w.check_url(bad).is_err(), "{bad}");
        }
    }
}
