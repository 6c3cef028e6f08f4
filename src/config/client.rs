//! The operator client's command line: `pending`, `show`, `resume`, `remove`, `retry`,
//! `claim`, `unclaim`, `watch` and `completions`, which talk to a running service over HTTP (`crate::cli`
//! carries them out). Their exit codes are stated here, once, for `--help`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{Millis, Secret};

/// What each exit code of a client command means (shown by `--help`, and in RUNBOOK.md).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  2  usage: a flag or argument is wrong or missing
  3  conflict: the request is no longer pending, the run ended, or another command won (409)
  4  not found: no such run, request or command (404)
  5  unauthenticated or forbidden (401, 403)
  6  service unavailable (503), or the network failed after the retries
  7  the command failed (500)
  8  invalid input (422 and other refusals of what was sent)
  9  --wait ran out before the outcome (the command goes on: follow it with `show CMD_ID`)
 10  audit verify: a run's audit chain is broken (the first broken link is printed)";

/// The examples and exit codes under the top-level `--help`.
pub const CLIENT_HELP: &str = "\
Operator commands (talk to a running service; see `hitl-orchestrator <command> --help`):
  hitl-orchestrator pending --all
  hitl-orchestrator show hitl_req_0193…
  hitl-orchestrator resume hitl_req_0193… --approve --note 'Looks good' --wait 10s
  hitl-orchestrator remove run_0193… --reason 'Duplicate'
  hitl-orchestrator claim hitl_req_0193… --lease 30m
  hitl-orchestrator watch --run run_0193…
They read HITL_URL (default http://127.0.0.1:8080), HITL_TOKEN or HITL_TOKEN_FILE, and
HITL_OPERATOR.

Exit codes of the operator commands:
  0 done, 2 usage, 3 conflict or not pending (409), 4 not found (404),
  5 unauthenticated or forbidden (401/403), 6 service unavailable (503, or the network
  failed after the retries), 7 command failed (500), 8 invalid input (422),
  9 --wait ran out before the outcome, 10 a broken audit chain (audit verify)";

const PENDING_EXAMPLES: &str = "Examples:
  hitl-orchestrator pending
  hitl-orchestrator pending --node review --all --output json | jq -r '.items[].pendingRequestId'";
const SHOW_EXAMPLES: &str = "Examples:
  hitl-orchestrator show run_0193…
  hitl-orchestrator show hitl_req_0193… --output json | jq .status
  hitl-orchestrator show cmd_0193…";
const RESUME_EXAMPLES: &str = "Examples:
  hitl-orchestrator resume hitl_req_0193… --approve
  hitl-orchestrator resume hitl_req_0193… --reject --text 'Not this week' --wait 10s
  hitl-orchestrator resume hitl_req_0193… --item call_mail=approve --item call_rm=reject
  hitl-orchestrator resume hitl_req_0193… --option short --note 'Shorter is better'

--approve, --reject and --option answer every item that no --item names; --text alone is a
freeform answer, and beside a decision the text sent with it (a rejection's text is the
message an agent receives).";
const REMOVE_EXAMPLES: &str = "Example:
  hitl-orchestrator remove run_0193… --reason 'Duplicate request' --wait 10s";
const RETRY_EXAMPLES: &str = "Example:
  hitl-orchestrator retry run_0193… --note 'Agent fixed' --wait 10s";
const CLAIM_EXAMPLES: &str = "Examples:
  hitl-orchestrator claim hitl_req_0193…
  hitl-orchestrator claim hitl_req_0193… --lease 2h
  hitl-orchestrator claim hitl_req_0193… --force   (a supervisor taking over)";
const UNCLAIM_EXAMPLES: &str = "Examples:
  hitl-orchestrator unclaim hitl_req_0193…
  hitl-orchestrator unclaim hitl_req_0193… --force   (a supervisor ending another's claim)";
const AUDIT_EXAMPLES: &str = "Examples (a credential with the audit scope):
  hitl-orchestrator audit verify --run run_0193…
  hitl-orchestrator audit verify --all --output json | jq -c 'select(.intact | not)'
  hitl-orchestrator audit export > audit.ndjson
  hitl-orchestrator audit export --after 41234 --follow";
const WATCH_EXAMPLES: &str = "Examples:
  hitl-orchestrator watch
  hitl-orchestrator watch --run run_0193… --output json | jq -c 'select(.event == \"resumed\")'";
const COMPLETIONS_EXAMPLES: &str = "Examples:
  source <(hitl-orchestrator completions bash)
  hitl-orchestrator completions zsh > \"${fpath[1]}/_hitl-orchestrator\"
  hitl-orchestrator completions fish > ~/.config/fish/completions/hitl-orchestrator.fish";

/// `--help` (not `-h`): a command's examples and the exit codes.
fn with_exit_codes(examples: &str) -> String {
    format!("{examples}\n\n{EXIT_CODES}")
}

/// The operator client's commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List the requests waiting for an operator, oldest first: request, run, node, prompt
    /// (cut to the terminal's width), age, deadline.
    #[command(after_help = PENDING_EXAMPLES, after_long_help = with_exit_codes(PENDING_EXAMPLES))]
    Pending(PendingArgs),
    /// Show a run with its requests, items, answers and audit timeline; given a request id,
    /// its run; given a command id, the command.
    #[command(after_help = SHOW_EXAMPLES, after_long_help = with_exit_codes(SHOW_EXAMPLES))]
    Show(ShowArgs),
    /// Answer a pending request. An Idempotency-Key is generated and printed (on stderr),
    /// and reused if a network error makes the client retry, so a retry never records a
    /// second command. With no decision flag on a terminal, it shows the request and asks.
    #[command(after_help = RESUME_EXAMPLES, after_long_help = with_exit_codes(RESUME_EXAMPLES))]
    Resume(ResumeArgs),
    /// Remove (cancel) a run; its pending request, if any, is denied with the reason.
    #[command(after_help = REMOVE_EXAMPLES, after_long_help = with_exit_codes(REMOVE_EXAMPLES))]
    Remove(RemoveArgs),
    /// Retry a failed run from the node that failed.
    #[command(after_help = RETRY_EXAMPLES, after_long_help = with_exit_codes(RETRY_EXAMPLES))]
    Retry(RetryArgs),
    /// Claim a pending request for a while, so that nobody else answers, removes or
    /// claims it meanwhile (claiming again renews the lease).
    #[command(after_help = CLAIM_EXAMPLES, after_long_help = with_exit_codes(CLAIM_EXAMPLES))]
    Claim(ClaimArgs),
    /// Release a claim (yours, or with --force and the supervise scope anyone's).
    #[command(after_help = UNCLAIM_EXAMPLES, after_long_help = with_exit_codes(UNCLAIM_EXAMPLES))]
    Unclaim(UnclaimArgs),
    /// The tamper-evident audit trail: verify runs' chains, export every event.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Follow the live events (`/api/events`), one line per event, reconnecting with
    /// Last-Event-ID so that nothing is missed or repeated.
    #[command(after_help = WATCH_EXAMPLES, after_long_help = with_exit_codes(WATCH_EXAMPLES))]
    Watch(WatchArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
}

/// How results are printed on standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people: tables and short lines.
    Table,
    /// For scripts: the API's JSON, one document (or, for `watch`, one line per event).
    Json,
}

/// Where the service is and who calls it: every client command has these.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The service's base URL.
    #[arg(long, env = "HITL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The bearer token (never printed). Prefer --token-file: a flag's value shows in the
    /// process list.
    #[arg(
        long,
        env = "HITL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<Secret>,
    /// A file holding the bearer token (surrounding white space ignored).
    #[arg(long, env = "HITL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The operator acting, where the credential does not name one (an API_KEY or
    /// API_TOKENS token, an act-as entry); a credential bound to an operator fills it in.
    #[arg(long, env = "HITL_OPERATOR")]
    pub operator: Option<String>,
    /// The operator's display name.
    #[arg(long, env = "HITL_OPERATOR_NAME", requires = "operator")]
    pub operator_name: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The width tables are cut to (default: the terminal's; none when standard output is
    /// not a terminal).
    #[arg(long, env = "COLUMNS", value_name = "COLUMNS")]
    pub width: Option<u16>,
}

/// Arguments of `pending`.
#[derive(Debug, Clone, Args)]
pub struct PendingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this thread's request.
    #[arg(long)]
    pub thread: Option<String>,
    /// Only requests raised at this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only requests of runs of this brief (`brief_…`).
    #[arg(long)]
    pub brief: Option<String>,
    /// Only requests assigned to the credential's operator or groups.
    #[arg(long)]
    pub mine: bool,
    /// Only requests assigned to this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Requests per page, 1 to 500.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
    /// Start after this `nextCursor` of an earlier page.
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A run id (`run_…`), request id (`hitl_req_…`) or command id (`cmd_…`).
    #[arg(value_name = "RUN_OR_REQUEST_ID")]
    pub id: String,
}

/// How long to wait for a command's outcome, and how to say who acts and why.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// A note for the audit trail.
    #[arg(long)]
    pub note: Option<String>,
    /// Wait this long for a worker to apply the command (e.g. 10s, 2m); without it the
    /// client returns once the command is recorded. Running out exits 9.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<Millis>,
    /// The Idempotency-Key to send instead of a generated one (to repeat a call made
    /// before: the same key and answer return the command it recorded).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// Arguments of `resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pending request (`hitl_req_…`).
    #[arg(value_name = "REQUEST_ID")]
    pub request_id: String,
    /// Approve (every item that no --item names).
    #[arg(long, group = "decision")]
    pub approve: bool,
    /// Reject (every item that no --item names).
    #[arg(long, group = "decision")]
    pub reject: bool,
    /// Choose this option (every item that no --item names).
    #[arg(long, value_name = "OPTION_ID", group = "decision")]
    pub option: Option<String>,
    /// Answer one item: `ITEM_ID=approve`, `ITEM_ID=reject` or `ITEM_ID=option:OPTION_ID`
    /// (repeatable).
    #[arg(long = "item", value_name = "ITEM_ID=DECISION")]
    pub items: Vec<String>,
    /// Alone, a freeform answer; with a decision, the text sent with it.
    #[arg(long)]
    pub text: Option<String>,
    /// Send without asking for confirmation (when the client asked for the answer).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Answer even though another principal claimed the request (needs the supervise
    /// scope; the claim is broken, and the audit says so).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// Arguments of `remove`.
#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The run to remove (`run_…`), or its pending request (`hitl_req_…`).
    #[arg(value_name = "RUN_ID")]
    pub id: String,
    /// Why (stored as the request's denial reason).
    #[arg(long)]
    pub reason: String,
    /// Remove even though another principal claimed the pending request (needs the
    /// supervise scope).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// Arguments of `claim`.
#[derive(Debug, Clone, Args)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pending request (`hitl_req_…`).
    #[arg(value_name = "REQUEST_ID")]
    pub request_id: String,
    /// How long the claim lasts (1s to 24h; default 15m).
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<Millis>,
    /// Take the claim from another principal (needs the supervise scope).
    #[arg(long)]
    pub force: bool,
}

/// `audit verify` and `audit export`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a run's audit chain (or every run's, a page at a time): intact, or the
    /// first broken link — an edited, deleted, inserted or reordered event, a bad
    /// signature, an unknown key. Exits 10 when a chain is broken.
    #[command(after_help = AUDIT_EXAMPLES, after_long_help = with_exit_codes(AUDIT_EXAMPLES))]
    Verify(AuditVerifyArgs),
    /// Print every audit event after `--after` as NDJSON (one event per line, in the
    /// order they committed); with --follow, keep printing new ones.
    #[command(after_help = AUDIT_EXAMPLES, after_long_help = with_exit_codes(AUDIT_EXAMPLES))]
    Export(AuditExportArgs),
}

/// Arguments of `audit verify`.
#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The run to verify (`run_…`).
    #[arg(
        long,
        value_name = "RUN_ID",
        conflicts_with = "all",
        required_unless_present = "all"
    )]
    pub run: Option<String>,
    /// Every run (with --output json, one verdict per line).
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditExportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Start after this event id (the last `eventId` an earlier export printed).
    #[arg(long, value_name = "EVENT_ID", default_value_t = 0)]
    pub after: u64,
    /// Keep following: print events as they commit, until interrupted.
    #[arg(long)]
    pub follow: bool,
}

/// Arguments of `unclaim`.
#[derive(Debug, Clone, Args)]
pub struct UnclaimArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pending request (`hitl_req_…`).
    #[arg(value_name = "REQUEST_ID")]
    pub request_id: String,
    /// End another principal's claim (needs the supervise scope).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `retry`.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The failed run (`run_…`).
    #[arg(value_name = "RUN_ID")]
    pub run_id: String,
    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// Arguments of `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this run's events.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Start after this event (the `eventId` a previous watch printed last) instead of
    /// from now.
    #[arg(long, value_name = "EVENT_ID")]
    pub last_event_id: Option<u64>,
    /// Give up (exit 6) once the service has been unreachable this long without a break.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub reconnect_for: Millis,
}

/// Arguments of `completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl ClientCommand {
    /// The connection settings, for every command that talks to the service.
    pub fn client(&self) -> Option<&ClientArgs> {
        match self {
            ClientCommand::Pending(a) => Some(&a.client),
            ClientCommand::Show(a) => Some(&a.client),
            ClientCommand::Resume(a) => Some(&a.client),
            ClientCommand::Remove(a) => Some(&a.client),
            ClientCommand::Retry(a) => Some(&a.client),
            ClientCommand::Claim(a) => Some(&a.client),
            ClientCommand::Unclaim(a) => Some(&a.client),
            ClientCommand::Audit(AuditCommand::Verify(a)) => Some(&a.client),
            ClientCommand::Audit(AuditCommand::Export(a)) => Some(&a.client),
            ClientCommand::Watch(a) => Some(&a.client),
            ClientCommand::Completions(_) => None,
        }
    }
}
