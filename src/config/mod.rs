//! Settings: the command line and its environment variables, parsed and validated once at
//! start, then passed down as typed values. Nothing else in the crate reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod channels;
pub mod client;
pub mod console;
pub mod tokens;

/// The 1-based line of byte `offset` in `text` (for errors naming the line of a file).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `text` read as TOML; a syntax or shape error names its line and quotes none of the
/// file (only the first line of the parser's message, which names a key, not a value).
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| format!("line {}: ", line_of(text, s.start)));
        let message = e.message().lines().next().unwrap_or_default().to_owned();
        format!("{}{message}", at.unwrap_or_default())
    })
}

/// A string that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A PostgreSQL connection URL, checked at start; printing it hides the password.
#[derive(Clone)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err("must be a postgres:// or postgresql:// URL".into());
        }
        // The parser's message may quote the URL, password included: say only that it failed.
        sqlx::postgres::PgConnectOptions::from_str(s)
            .map_err(|_| "is not a valid PostgreSQL URL".to_owned())?;
        Ok(Self(Secret::new(s)))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl([redacted])")
    }
}

/// An API key: at least 16 characters, so a typo'd short value is refused at start.
#[derive(Clone, Debug)]
pub struct ApiKey(pub Secret);

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.chars().count() < 16 {
            return Err("must be at least 16 characters long".into());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain white space or control characters".into());
        }
        Ok(Self(Secret::new(s)))
    }
}

/// A duration given in whole milliseconds (`250`) or with a unit (`250ms`, `5s`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (number, factor) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1_000)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60_000)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3_600_000)
        } else if let Some(n) = s.strip_suffix('d') {
            (n, 86_400_000)
        } else {
            (s, 1)
        };
        let n: u64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 5s, 2m, 1h, 7d)"))?;
        Ok(Self(Duration::from_millis(n.saturating_mul(factor))))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// A size in bytes, given plainly (`262144`) or with a unit (`256KiB`, `1MiB`, `64kb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    /// The largest size accepted: bodies bigger than this are not what the API is for.
    pub const MAX: usize = 64 * 1024 * 1024;
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => 1024 * 1024,
            _ => {
                return Err(format!(
                    "`{s}` is not a size (examples: 262144, 256KiB, 1MiB)"
                ));
            }
        };
        let n: usize = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size (examples: 262144, 256KiB, 1MiB)"))?;
        let bytes = n.saturating_mul(factor);
        if !(1024..=Self::MAX).contains(&bytes) {
            return Err(format!("must be between 1KiB and {}MiB", Self::MAX >> 20));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What sits between the service and PostgreSQL (`HITL_DB_POOLER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DbPooler {
    /// Nothing: DATABASE_URL is the server itself.
    None,
    /// A pooler in session mode (PgBouncer `pool_mode = session`): each connection of
    /// ours keeps one server connection, so everything works as with a direct one.
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`): a server
    /// connection is ours for one transaction, so every statement is unnamed and runs in
    /// a transaction (`db::statements`), and what needs a session goes to
    /// `HITL_DIRECT_DATABASE_URL` (required).
    Transaction,
}

/// Why `HITL_DB_POOLER=transaction` needs `HITL_DIRECT_DATABASE_URL`.
pub const TRANSACTION_POOLING_NEEDS_DIRECT: &str = "needs HITL_DIRECT_DATABASE_URL with \
     transaction: LISTEN and the migrations' advisory lock need a session of their own, which \
     a transaction pooler does not keep";

/// The command line: one binary, several roles.
#[derive(Debug, Parser)]
#[command(
    name = "hitl-orchestrator",
    version,
    about = "Durable human-in-the-loop orchestration: runs pause for operators, survive \
             restarts, and resume exactly once.",
    long_about = "Durable human-in-the-loop orchestration service.\n\n\
        Every piece of orchestrator state lives in PostgreSQL. Without DATABASE_URL the \
        service starts its own PostgreSQL from the locally installed server binaries, in \
        --data-dir, so one command runs it on a fresh machine. Every flag can also be \
        given as the environment variable shown beside it.",
    after_help = client::CLIENT_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary can be asked to do: run as one of the service's roles, run a
/// benchmark (the binary's own code, not the library's), make a token, or act as an
/// operator's client of a running service.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the small variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    #[command(flatten)]
    Role(Role),
    /// Run a benchmark scenario on a fresh database and print its results as JSON
    /// (with --out, also written to <dir>/<scenario>.json). See docs/BENCHMARKS.md.
    Bench(BenchArgs),
    /// Print a new random token, once, and the `[[token]]` entry for HITL_TOKENS_FILE
    /// that holds only its SHA-256. Example:
    /// `hitl-orchestrator token --name alice --scopes operate --operator alice`
    Token(TokenArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Arguments of `token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The entry's name (recorded in the audit beside the operator).
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes: operate, submit, supervise, audit.
    #[arg(long, value_delimiter = ',', default_value = "operate")]
    pub scopes: Vec<String>,
    /// The operator id the token is bound to; without it the entry is `actAs = true`
    /// (a service principal that names the operator in each body).
    #[arg(long)]
    pub operator: Option<String>,
    /// The bound operator's display name.
    #[arg(long)]
    pub operator_name: Option<String>,
}

/// The roles the service can run as.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Run the HTTP API and the queue workers in one process (the default for one machine).
    Serve(ServeArgs),
    /// Run only the HTTP API; pair it with one or more `worker` processes on the same database.
    Api(ApiArgs),
    /// Run only the queue workers; start as many as you like, on any host, against one database.
    Worker(WorkerArgs),
    /// Apply pending database migrations and exit (safe to run while other processes start).
    Migrate(MigrateArgs),
}

/// The benchmark scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchScenario {
    /// PostgreSQL's own ceiling for one resume's work, one commit per resume.
    Baseline,
    /// Queued resume commands applied by the service's workers.
    Drain,
    /// Resume commands submitted over HTTP by concurrent clients (no workers).
    Submit,
    /// Resumes submitted at a fixed rate with workers running: submit → applied latency.
    E2e,
    /// A fresh worker process rehydrating parked runs and continuing stranded ones.
    Rehydrate,
    /// Listing pending requests (first page and a deep page) over HTTP.
    Pending,
    /// `drain` with 1, 2 and 4 `worker` processes (`--process-counts`), each count on a
    /// fresh database: throughput, the CPU of PostgreSQL and of the service, and an
    /// exactly-once check per count.
    Scale,
}

impl BenchScenario {
    /// Its name on the command line and in result files.
    pub fn name(self) -> &'static str {
        match self {
            BenchScenario::Baseline => "baseline",
            BenchScenario::Drain => "drain",
            BenchScenario::Submit => "submit",
            BenchScenario::E2e => "e2e",
            BenchScenario::Rehydrate => "rehydrate",
            BenchScenario::Pending => "pending",
            BenchScenario::Scale => "scale",
        }
    }

    /// The default size: resumes, parked runs (rehydrate) or pending requests (pending).
    pub fn default_n(self) -> usize {
        match self {
            BenchScenario::Rehydrate => 100_000,
            BenchScenario::Pending => 1_000_000,
            _ => 10_000,
        }
    }
}

/// Arguments of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which scenario.
    #[arg(value_enum)]
    pub scenario: BenchScenario,
    /// How many resumes (baseline, drain, submit), parked runs (rehydrate, default
    /// 100,000) or pending requests (pending, default 1,000,000). Default 10,000.
    #[arg(long)]
    pub n: Option<usize>,
    /// Offered resumes per second (e2e).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds: how long e2e offers resumes (default 20); drain stops measuring after
    /// it, for a sustained run (default: when every command has ended).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Runs left mid-execution with their job lost (rehydrate).
    #[arg(long, default_value_t = 1000)]
    pub stranded: usize,
    /// Requests per measured page (pending).
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Connections (baseline) or jobs at once across all workers (drain).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Workers (drain).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run the workers as separate `worker` processes (drain).
    #[arg(long)]
    pub processes: bool,
    /// e2e only: serve the API from this many separate `api` processes, applying with
    /// one `worker` process (--concurrency jobs at once), all reached as HITL_DB_POOLER
    /// says; requests go to the `api` processes in turn. 0 (default): the API and the
    /// worker run inside the bench.
    #[arg(long, default_value_t = 0)]
    pub api_processes: usize,
    /// How many `worker` processes to try, one after the other (scale); each runs
    /// --concurrency jobs at once.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub process_counts: Vec<usize>,
    /// Baseline only: also complete each run in the same commit (one more run update
    /// and audit event), the work a resume of a one-node plan does in the service.
    #[arg(long)]
    pub with_completion: bool,
    /// Baseline only: the same writes as one data-modifying statement per resume (its
    /// commit included), the floor of what PostgreSQL needs for this work.
    #[arg(long)]
    pub floor: bool,
    /// Baseline and drain: also report, per table a resume writes, its updates and how
    /// many were HOT (from `pg_stat_user_tables`; adds 11 s before and after measuring,
    /// for the server's statistics to arrive).
    #[arg(long)]
    pub updates: bool,
    /// Also write the result to `<DIR>/<scenario>.json` (the directory is created).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl BenchArgs {
    /// How long e2e offers resumes.
    pub fn e2e_seconds(&self) -> u64 {
        self.seconds.unwrap_or(20)
    }
}

/// Settings every role shares: where the database is and how to log.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// PostgreSQL URL. When unset, a private PostgreSQL is started in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// What sits between this process and PostgreSQL: `none`, or a connection pooler
    /// such as PgBouncer in `session` or `transaction` pooling mode (see
    /// docs/ARCHITECTURE.md, "Behind a connection pooler"). Needs DATABASE_URL; with
    /// `transaction`, HITL_DIRECT_DATABASE_URL too.
    #[arg(long, env = "HITL_DB_POOLER", value_enum, default_value_t = DbPooler::None)]
    pub db_pooler: DbPooler,

    /// A URL straight to PostgreSQL, bypassing the pooler, for what needs a session of
    /// its own: LISTEN (job and event notifications) and the migrations' advisory lock.
    /// Optional with HITL_DB_POOLER=session (those then go through the pooler), required
    /// with HITL_DB_POOLER=transaction.
    #[arg(long, env = "HITL_DIRECT_DATABASE_URL", hide_env_values = true)]
    pub direct_database_url: Option<Secret>,

    /// Directory of the embedded PostgreSQL (used only when DATABASE_URL is unset).
    #[arg(long, env = "HITL_DATA_DIR", default_value = "./.hitl-data")]
    pub data_dir: PathBuf,

    /// Directory holding initdb, pg_ctl and postgres for the embedded PostgreSQL.
    /// When unset they are found through `pg_config --bindir`, then
    /// /usr/lib/postgresql/*/bin, then PATH.
    #[arg(long, env = "HITL_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,

    /// Largest number of database connections this process opens.
    #[arg(long, env = "HITL_DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub db_max_connections: u32,

    /// How long a request waits for a database connection before it fails with 503.
    #[arg(long, env = "HITL_DB_ACQUIRE_TIMEOUT", default_value = "1500ms")]
    pub db_acquire_timeout: Millis,

    /// How long start-up keeps retrying an unreachable database before giving up.
    #[arg(long, env = "HITL_DB_STARTUP_TIMEOUT", default_value = "30s")]
    pub db_startup_timeout: Millis,

    /// Whether HITL nodes pause for operators. When false, HITL nodes resolve by their
    /// onTimeout policy (reject when they have none), audited as hitl_disabled, and
    /// resume/remove answer 503 hitl_disabled.
    #[arg(long, env = "HITL_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub hitl_enabled: bool,

    /// URLs `agent.webhook` nodes may call, comma-separated: a call must have an entry's
    /// scheme, host and port and a path under the entry's path at a segment boundary
    /// (e.g. `http://agents.internal/,http://127.0.0.1:9000/`). Empty: agent calls are refused.
    #[arg(long, env = "HITL_AGENT_ALLOWED_URLS", value_delimiter = ',', num_args = 0..)]
    pub agent_allowed_urls: Vec<String>,

    /// Timeout of one agent call.
    #[arg(long, env = "HITL_AGENT_TIMEOUT", default_value = "30s")]
    pub agent_timeout: Millis,

    /// How long an agent call that fails in a way worth retrying (a network error, a
    /// timeout, 408, 429, 5xx) is retried, counted from its first failure; the run shows
    /// `agentRetry` meanwhile and fails once the window has passed.
    #[arg(long, env = "HITL_AGENT_RETRY_FOR", default_value = "1h")]
    pub agent_retry_for: Millis,

    /// Replaced by HITL_AGENT_RETRY_FOR; refused at start with a message saying so.
    #[arg(long, env = "HITL_AGENT_MAX_ATTEMPTS", hide = true)]
    pub agent_max_attempts: Option<String>,

    /// Delay before the first agent retry; doubles each time (with jitter), up to
    /// HITL_AGENT_BACKOFF_MAX. An agent's `Retry-After` is honoured instead.
    #[arg(long, env = "HITL_AGENT_BACKOFF", default_value = "500ms")]
    pub agent_backoff: Millis,

    /// The longest delay between two attempts at an agent call.
    #[arg(long, env = "HITL_AGENT_BACKOFF_MAX", default_value = "60s")]
    pub agent_backoff_max: Millis,

    /// The largest agent reply read (e.g. 4MiB, 262144); a longer one fails the node.
    #[arg(long, env = "HITL_AGENT_MAX_RESPONSE", default_value = "4MiB")]
    pub agent_max_response: ByteSize,

    /// PEM file of certificate authorities trusted for `https://` agents, besides the
    /// system's roots (e.g. an internal CA).
    #[arg(long, env = "HITL_AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,

    /// Secret for signing agent calls: `X-Hitl-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[arg(long, env = "HITL_AGENT_SIGNING_SECRET", hide_env_values = true)]
    pub agent_signing_secret: Option<Secret>,

    /// The address operators open the service at, e.g. https://hitl.example.com (an
    /// origin: no path). The console's session cookie is Secure when it is https://, and
    /// its forms are accepted only from this origin (unset: from the request's own Host);
    /// notifications link to requests under it.
    #[arg(long, env = "HITL_PUBLIC_URL")]
    pub public_url: Option<console::PublicUrl>,

    /// A TOML file of notification channels (`[[channel]]` with `name`, `url`, `format`
    /// json|slack, `secret`, `events`, optional `nodes`, `groups`, `includeArguments`).
    /// A process given it publishes its channels to the database at start: give every
    /// process the same file.
    #[arg(long, env = "HITL_NOTIFY_CHANNELS_FILE")]
    pub notify_channels_file: Option<PathBuf>,

    /// URLs notification channels may post to, comma-separated, matched like
    /// HITL_AGENT_ALLOWED_URLS (scheme, host, port, path segments). Empty: no channel is
    /// allowed.
    #[arg(long, env = "HITL_NOTIFY_ALLOWED_URLS", value_delimiter = ',', num_args = 0..)]
    pub notify_allowed_urls: Vec<String>,

    /// Attempts at one notification delivery before it is listed as failed.
    #[arg(long, env = "HITL_NOTIFY_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub notify_max_attempts: u32,

    /// Timeout of one notification delivery.
    #[arg(long, env = "HITL_NOTIFY_TIMEOUT", default_value = "10s")]
    pub notify_timeout: Millis,

    /// Ed25519 private key (PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`) that
    /// signs every audit event this process writes; its public key is listed at
    /// `GET /api/audit/keys`. Unset: events are hash-chained but not signed. Give every
    /// process the same file; rotate by replacing it and restarting.
    #[arg(long, env = "HITL_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,

    /// How long a graceful shutdown waits for in-flight requests and jobs; jobs still
    /// running then are released back to the queue.
    #[arg(long, env = "HITL_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: Millis,

    /// Log line format on standard error (the level comes from RUST_LOG, default info).
    #[arg(long, env = "HITL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Settings of the HTTP API.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address the HTTP API listens on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// A connection whose client stops reading is closed after its writes made no
    /// progress this long (a stalled event stream cannot hold the server's memory).
    #[arg(long, env = "HITL_HTTP_WRITE_TIMEOUT", default_value = "30s")]
    pub http_write_timeout: Millis,

    /// A connection is closed when a request head (request line and headers) has not
    /// fully arrived this long after the connection began waiting for it: a stalled
    /// head, a new connection that sends nothing, an idle keep-alive connection.
    #[arg(long, env = "HITL_HTTP_HEADER_TIMEOUT", default_value = "10s")]
    pub http_header_timeout: Millis,

    /// A request body that makes no progress this long is refused with 408 and its
    /// connection closed (event streams send no body and are not affected).
    #[arg(long, env = "HITL_HTTP_BODY_TIMEOUT", default_value = "30s")]
    pub http_body_timeout: Millis,

    /// Connections served at once by this process; beyond it new connections wait in
    /// the accept queue until one closes.
    #[arg(long, env = "HITL_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,

    /// Bearer token with every scope (at least 16 characters). When neither this nor
    /// --api-tokens is set, a random all-scopes token is generated at start and printed
    /// once on standard output.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// More bearer tokens, each with its own scopes: `name:token:scope,scope` entries
    /// separated by `;`, e.g. `ops:<token>:operate;ci:<token>:submit`. Scopes: `operate`
    /// (pending, resume, remove, read runs and commands) and `submit` (create runs).
    /// Tokens are at least 16 characters without white space, `:` or `;`.
    #[arg(long, env = "API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<Secret>,

    /// A TOML file of hashed tokens (`[[token]]` with `name`, `sha256`, `scopes`, and an
    /// `operator` the token is bound to or `actAs = true`); see `hitl-orchestrator token`.
    /// Reloaded on SIGHUP. Tokens checked against it are at least 32 characters.
    #[arg(long, env = "HITL_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// The JWKS of an identity provider whose JWT bearer tokens (RS256 or ES256) are
    /// accepted: an https:// URL, an http:// loopback URL, or a file. Needs
    /// HITL_JWT_ISSUER and HITL_JWT_AUDIENCE.
    #[arg(long, env = "HITL_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// The `iss` a JWT must carry.
    #[arg(long, env = "HITL_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` a JWT must carry.
    #[arg(long, env = "HITL_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The claim holding the operator's id.
    #[arg(long, env = "HITL_JWT_CLAIM_ID", default_value = "sub")]
    pub jwt_claim_id: String,

    /// The claim holding the operator's display name.
    #[arg(long, env = "HITL_JWT_CLAIM_NAME", default_value = "name")]
    pub jwt_claim_name: String,

    /// The claim holding the operator's email.
    #[arg(long, env = "HITL_JWT_CLAIM_EMAIL", default_value = "email")]
    pub jwt_claim_email: String,

    /// The claim holding the operator's groups (an array of strings).
    #[arg(long, env = "HITL_JWT_CLAIM_GROUPS", default_value = "groups")]
    pub jwt_claim_groups: String,

    /// The claim holding the scopes, space-separated (operate, submit, supervise, audit).
    #[arg(long, env = "HITL_JWT_CLAIM_SCOPE", default_value = "scope")]
    pub jwt_claim_scope: String,

    /// Largest request body accepted (bytes, or with a unit: 256KiB, 1MiB); larger bodies
    /// are refused with 413 before they are read.
    #[arg(long, env = "HITL_MAX_BODY", default_value = "256KiB")]
    pub max_body: ByteSize,

    /// How long a console sign-in lasts, 1m to 30d (its credential is still checked again
    /// on every request).
    #[arg(long, env = "HITL_CONSOLE_SESSION_TTL", default_value = "8h")]
    pub console_session_ttl: Millis,
}

/// Settings of the queue workers (`serve` and `worker`).
#[derive(Debug, Clone, Args)]
pub struct WorkerOptions {
    /// Jobs one worker process runs at once (the pool needs this many connections plus 4).
    #[arg(long, env = "HITL_WORKER_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub worker_concurrency: u32,

    /// Most jobs claimed in one query.
    #[arg(long, env = "HITL_WORKER_BATCH_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub worker_batch_size: u32,

    /// How often an idle worker looks for due jobs (delayed jobs and missed
    /// notifications are found this way; new jobs wake it at once through LISTEN/NOTIFY).
    #[arg(long, env = "HITL_WORKER_POLL_INTERVAL", default_value = "1s")]
    pub worker_poll_interval: Millis,

    /// Wake up on PostgreSQL notifications of new jobs (LISTEN/NOTIFY).
    #[arg(long, env = "HITL_WORKER_LISTEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub worker_listen: bool,

    /// How often a worker records that it is alive.
    #[arg(long, env = "HITL_WORKER_HEARTBEAT", default_value = "1s")]
    pub worker_heartbeat: Millis,

    /// After how long without heartbeats a worker's jobs are given to another worker.
    #[arg(long, env = "HITL_WORKER_ORPHAN_TIMEOUT", default_value = "10s")]
    pub worker_orphan_timeout: Millis,

    /// Tries before a failing job is declared dead (its command then ends `failed`).
    #[arg(long, env = "HITL_JOB_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub job_max_attempts: i32,

    /// Delay before the first retry; it doubles with each further attempt.
    #[arg(long, env = "HITL_JOB_BACKOFF_BASE", default_value = "500ms")]
    pub job_backoff_base: Millis,

    /// Longest delay between retries.
    #[arg(long, env = "HITL_JOB_BACKOFF_MAX", default_value = "5m")]
    pub job_backoff_max: Millis,

    /// How often finished job rows are deleted.
    #[arg(long, env = "HITL_CLEANUP_INTERVAL", default_value = "1m")]
    pub cleanup_interval: Millis,

    /// How long a finished (`Done`) job row is kept.
    #[arg(long, env = "HITL_RETAIN_DONE", default_value = "10m")]
    pub retain_done: Millis,

    /// How often each worker looks for runs stranded while the system runs (a queued or
    /// running run with no job, a passed deadline with no expiry job) and repairs them.
    #[arg(long, env = "HITL_SWEEP_INTERVAL", default_value = "30s")]
    pub sweep_interval: Millis,

    /// How long a dead (`Killed`) job row is kept for inspection.
    #[arg(long, env = "HITL_RETAIN_DEAD", default_value = "7d")]
    pub retain_dead: Millis,
}

/// Arguments of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub worker: WorkerOptions,
}

/// Arguments of `api`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Arguments of `worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub worker: WorkerOptions,
}

/// Arguments of `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Cli {
    /// Checks the settings clap cannot check without echoing them: secrets are parsed
    /// here so a refusal names the setting but never prints its value.
    pub fn validate(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory;
        let invalid = |setting: &str, why: String| {
            Cli::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {setting}: {why}"),
            )
        };
        let Some(common) = self.command.common() else {
            return Ok(());
        };
        if common.agent_max_attempts.is_some() {
            return Err(invalid(
                "--agent-max-attempts (HITL_AGENT_MAX_ATTEMPTS)",
                "it was replaced by HITL_AGENT_RETRY_FOR (how long an agent call is retried, \
                 e.g. 1h; attempts are spaced by HITL_AGENT_BACKOFF up to HITL_AGENT_BACKOFF_MAX); \
                 remove it"
                    .to_owned(),
            ));
        }
        for (setting, value) in [
            (
                "--agent-backoff (HITL_AGENT_BACKOFF)",
                common.agent_backoff.0,
            ),
            (
                "--agent-backoff-max (HITL_AGENT_BACKOFF_MAX)",
                common.agent_backoff_max.0,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be longer than zero".to_owned()));
            }
        }
        if common.agent_backoff_max.0 < common.agent_backoff.0 {
            return Err(invalid(
                "--agent-backoff-max (HITL_AGENT_BACKOFF_MAX)",
                "must not be shorter than HITL_AGENT_BACKOFF".to_owned(),
            ));
        }
        if let Some(url) = &common.database_url {
            DatabaseUrl::from_str(url.expose())
                .map_err(|why| invalid("--database-url (DATABASE_URL)", why))?;
        }
        if let Some(url) = &common.direct_database_url {
            DatabaseUrl::from_str(url.expose())
                .map_err(|why| invalid("--direct-database-url (HITL_DIRECT_DATABASE_URL)", why))?;
            if common.db_pooler == DbPooler::None {
                return Err(invalid(
                    "--direct-database-url (HITL_DIRECT_DATABASE_URL)",
                    "is only for a pooler (HITL_DB_POOLER=session or transaction): with \
                     no pooler, DATABASE_URL is already direct"
                        .to_owned(),
                ));
            }
        }
        match common.db_pooler {
            DbPooler::None => {}
            _ if common.database_url.is_none() => {
                return Err(invalid(
                    "--db-pooler (HITL_DB_POOLER)",
                    "needs DATABASE_URL (the pooler's address): the embedded PostgreSQL has \
                     no pooler in front of it"
                        .to_owned(),
                ));
            }
            DbPooler::Session => {}
            DbPooler::Transaction if common.direct_database_url.is_none() => {
                return Err(invalid(
                    "--db-pooler (HITL_DB_POOLER)",
                    TRANSACTION_POOLING_NEEDS_DIRECT.to_owned(),
                ));
            }
            DbPooler::Transaction => {}
        }
        let http = match &self.command {
            Command::Role(Role::Serve(a)) => Some(&a.http),
            Command::Role(Role::Api(a)) => Some(&a.http),
            _ => None,
        };
        if let Some(key) = http.and_then(|h| h.api_key.as_ref()) {
            ApiKey::from_str(key.expose()).map_err(|why| invalid("--api-key (API_KEY)", why))?;
        }
        if let Some(list) = http.and_then(|h| h.api_tokens.as_ref()) {
            tokens::parse_token_list(list.expose())
                .map_err(|why| invalid("--api-tokens (API_TOKENS)", why))?;
        }
        // Every token rule, the combination of both settings included, is checked here,
        // before any database is opened.
        if let Some(h) = http {
            tokens::configured_tokens(h.api_key.as_ref(), h.api_tokens.as_ref())
                .map_err(|why| invalid("--api-tokens (API_TOKENS)", why))?;
        }
        if let Some(h) = http
            && h.jwks_url.is_some()
            && (h.jwt_issuer.is_none() || h.jwt_audience.is_none())
        {
            return Err(invalid(
                "--jwks-url (HITL_JWKS_URL)",
                "needs HITL_JWT_ISSUER and HITL_JWT_AUDIENCE: tokens are checked against both"
                    .to_owned(),
            ));
        }
        if let Some(h) = http {
            for (setting, value) in [
                (
                    "--http-write-timeout (HITL_HTTP_WRITE_TIMEOUT)",
                    h.http_write_timeout.0,
                ),
                (
                    "--http-header-timeout (HITL_HTTP_HEADER_TIMEOUT)",
                    h.http_header_timeout.0,
                ),
                (
                    "--http-body-timeout (HITL_HTTP_BODY_TIMEOUT)",
                    h.http_body_timeout.0,
                ),
            ] {
                if value.is_zero() {
                    return Err(invalid(setting, "must be longer than zero".to_owned()));
                }
            }
        }
        let worker = match &self.command {
            Command::Role(Role::Serve(a)) => Some(&a.worker),
            Command::Role(Role::Worker(a)) => Some(&a.worker),
            _ => None,
        };
        if let Some(w) = worker {
            let connections = common.db_max_connections;
            if w.worker_concurrency + 4 > connections {
                return Err(invalid(
                    "--worker-concurrency (HITL_WORKER_CONCURRENCY)",
                    format!(
                        "{} jobs at once need {} database connections, but \
                         --db-max-connections (HITL_DB_MAX_CONNECTIONS) is {connections}",
                        w.worker_concurrency,
                        w.worker_concurrency + 4
                    ),
                ));
            }
            if w.worker_orphan_timeout.0 < w.worker_heartbeat.0 * 3 {
                return Err(invalid(
                    "--worker-orphan-timeout (HITL_WORKER_ORPHAN_TIMEOUT)",
                    "must be at least three heartbeat intervals, or live workers lose their jobs"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

impl Command {
    /// The settings every command but `token` has.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Role(role) => Some(role.common()),
            Command::Bench(a) => Some(&a.common),
            Command::Token(_) | Command::Client(_) => None,
        }
    }
}

impl Role {
    /// The settings every role has.
    pub fn common(&self) -> &CommonArgs {
        match self {
            Role::Serve(a) => &a.common,
            Role::Api(a) => &a.common,
            Role::Worker(a) => &a.common,
            Role::Migrate(a) => &a.common,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_units_and_plain_milliseconds() {
        assert_eq!(
            "250".parse::<Millis>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "250ms".parse::<Millis>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("5s".parse::<Millis>().unwrap().0, Duration::from_secs(5));
        assert_eq!("2m".parse::<Millis>().unwrap().0, Duration::from_secs(120));
        assert!("soon".parse::<Millis>().is_err());
    }

    #[test]
    fn secrets_never_print() {
        let key: ApiKey = "a-very-secret-token-123".parse().unwrap();
        assert!(!format!("{key:?}").contains("secret-token"));
        let url: DatabaseUrl = "postgres://u:hunter2hunter2@localhost/db".parse().unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn body_sizes_accept_units_and_refuse_absurd_values() {
        assert_eq!("262144".parse::<ByteSize>().unwrap().0, 262_144);
        assert_eq!("256KiB".parse::<ByteSize>().unwrap().0, 262_144);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1_048_576);
        assert!("12".parse::<ByteSize>().is_err());
        assert!("1GiB".parse::<ByteSize>().is_err());
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn a_worker_needing_more_connections_than_the_pool_is_refused_in_one_clean_sentence() {
        let cli = Cli::try_parse_from([
            "hitl-orchestrator",
            "worker",
            "--worker-concurrency",
            "20",
            "--db-max-connections",
            "16",
        ])
        .unwrap();
        let message = cli.validate().unwrap_err().to_string();
        assert!(
            message.contains("need 24 database connections, but --db-max-connections"),
            "{message}"
        );
        assert!(!message.contains("  "), "{message}");
    }

    fn pooler_refusal(args: &[&str]) -> String {
        let mut argv = vec!["hitl-orchestrator", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn transaction_pooling_needs_a_direct_url_and_is_accepted_with_one() {
        let url = "postgres://u:p@127.0.0.1:6432/hitl";
        let message = pooler_refusal(&["--database-url", url, "--db-pooler", "transaction"]);
        assert!(
            message.contains("--db-pooler (HITL_DB_POOLER)"),
            "{message}"
        );
        assert!(
            message.contains("needs HITL_DIRECT_DATABASE_URL"),
            "{message}"
        );
        assert!(!message.contains("u:p@"), "{message}");
        let direct = "postgres://u:p@127.0.0.1:5432/hitl";
        let cli = Cli::try_parse_from([
            "hitl-orchestrator",
            "serve",
            "--database-url",
            url,
            "--db-pooler",
            "transaction",
            "--direct-database-url",
            direct,
        ])
        .unwrap();
        assert!(cli.validate().is_ok());
    }

    #[test]
    fn a_pooler_needs_database_url_and_a_direct_url_needs_a_pooler() {
        let message = pooler_refusal(&["--db-pooler", "session"]);
        assert!(message.contains("needs DATABASE_URL"), "{message}");
        let message = pooler_refusal(&[
            "--database-url",
            "postgres://u:p@127.0.0.1:5432/hitl",
            "--direct-database-url",
            "postgres://u:p@127.0.0.1:5432/hitl",
        ]);
        assert!(message.contains("HITL_DIRECT_DATABASE_URL"), "{message}");
        let message = pooler_refusal(&[
            "--database-url",
            "postgres://u:p@127.0.0.1:6432/hitl",
            "--db-pooler",
            "session",
            "--direct-database-url",
            "mysql://nope",
        ]);
        assert!(message.contains("--direct-database-url"), "{message}");
    }

    #[test]
    fn short_api_keys_and_non_postgres_urls_are_refused() {
        assert!("short".parse::<ApiKey>().is_err());
        assert!("mysql://localhost/db".parse::<DatabaseUrl>().is_err());
    }
}
