//! The client's HTTP calls: one reqwest client carrying the bearer token, JSON in and
//! out, and bounded retries of a call that a network error or a `503` interrupted.
//!
//! A retry resends the same request, headers included, so a submission keeps its
//! `Idempotency-Key` and the service answers with the command the first attempt
//! recorded (if it got that far) instead of recording another.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;

use super::Failure;
use crate::config::Secret;
use crate::config::client::ClientArgs;

/// Tries of one call: the first and three retries.
const ATTEMPTS: u32 = 4;
/// The pause before the first retry; it doubles with each further one (0.25 s, 0.5 s,
/// 1 s: a restarting service or a flapping connection, not a long outage).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one ordinary call may take, end to end.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The service and the credential to call it with.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    /// The operator named on the command line, if any.
    pub operator: Option<(String, Option<String>)>,
    /// The table width: `--width`/`COLUMNS`, else the terminal's.
    pub width: Option<u16>,
}

/// An HTTP answer: status, headers and the body (JSON, or the text as a JSON string).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The reply, or the failure it is.
    pub fn success(self) -> Result<Reply, Failure> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Failure::Api(Box::new(self)))
        }
    }
}

/// One call to make: built once, sent as often as the retries need.
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<&'a Value>,
    pub headers: Vec<(&'static str, String)>,
    pub timeout: Duration,
    /// Said on stderr beside a retry ("with the same Idempotency-Key").
    pub retry_note: &'static str,
}

impl<'a> Call<'a> {
    /// A GET of `path` with the ordinary timeout.
    pub fn get(path: &'a str) -> Self {
        Self {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
            headers: Vec::new(),
            timeout: CALL_TIMEOUT,
            retry_note: "",
        }
    }

    /// A POST of `body` to `path` with the ordinary timeout.
    pub fn post(path: &'a str, body: &'a Value) -> Self {
        Self {
            method: Method::POST,
            body: Some(body),
            ..Self::get(path)
        }
    }
}

impl Client {
    /// The client `args` describe: the URL checked, the token read (from its file).
    pub fn new(args: &ClientArgs) -> Result<Self, Failure> {
        crate::tls::install_provider();
        let url = Url::parse(&args.url).map_err(|e| {
            Failure::Usage(format!(
                "--url (HITL_URL): `{}` is not a URL: {e}",
                args.url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::Usage(format!(
                "--url (HITL_URL): `{}` must be an http:// or https:// URL",
                args.url
            )));
        }
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::Usage(format!(
                        "--token-file (HITL_TOKEN_FILE): cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(Failure::Usage(format!(
                        "--token-file (HITL_TOKEN_FILE): {} is empty",
                        path.display()
                    )));
                }
                Some(Secret::new(token))
            }
            (None, None) => None,
        };
        if let Some(t) = &token
            && t.expose()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Failure::Usage(
                "the token holds white space or a control character: check --token, \
                 --token-file, HITL_TOKEN or HITL_TOKEN_FILE"
                    .into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hitl-orchestrator-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Usage(format!("cannot build the HTTP client: {e}")))?;
        let width = args.width.or_else(|| {
            use std::io::IsTerminal;
            let stdout = std::io::stdout();
            if !stdout.is_terminal() {
                return None;
            }
            terminal_size::terminal_size_of(&stdout).map(|(w, _)| w.0)
        });
        Ok(Self {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            token,
            operator: args
                .operator
                .clone()
                .map(|id| (id, args.operator_name.clone())),
            width,
        })
    }

    /// Whether a token was given (to explain a 401).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The request builder for `method path`, with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        request
    }

    /// Sends `call`, retrying a network error or a `503 database_unavailable` up to
    /// [`ATTEMPTS`] times in all; any other answer is returned as it came.
    pub async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let problem = match self.attempt(call).await {
                Ok(reply) if reply.status == 503 && reply.code() != "hitl_disabled" => {
                    if attempt == ATTEMPTS {
                        return Ok(reply);
                    }
                    format!("the service is unavailable ({})", reply.code())
                }
                Ok(reply) => return Ok(reply),
                Err(e) if attempt == ATTEMPTS => {
                    return Err(Failure::Network(format!(
                        "{} {} failed after {ATTEMPTS} attempts: {e}",
                        call.method, call.path
                    )));
                }
                Err(e) => e,
            };
            eprintln!(
                "warning: {} {}: {problem}; retrying in {} ms{} (attempt {} of {ATTEMPTS})",
                call.method,
                call.path,
                backoff.as_millis(),
                call.retry_note,
                attempt + 1
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    /// One try: the request sent and its whole answer read. A connection lost before the
    /// answer was complete is an error here, like one refused.
    async fn attempt(&self, call: &Call<'_>) -> Result<Reply, String> {
        let mut request = self
            .request(call.method.clone(), call.path)
            .timeout(call.timeout);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| describe(&e))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// An error with its causes (reqwest's own message stops at "error sending request").
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
