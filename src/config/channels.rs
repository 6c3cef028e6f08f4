//! The notification channels file (`HITL_NOTIFY_CHANNELS_FILE`): where events are sent,
//! in which format, signed with which secret, and which events and requests each channel
//! wants. Parsed and checked at start, naming the line of a bad entry and never quoting
//! a secret.

use super::Secret;

/// The events a channel may ask for: the SSE event names of `/api/events` that this
/// version delivers.
pub const NOTIFY_EVENTS: &[&str] = &[
    "request_raised",
    "request_claimed",
    "request_released",
    "claim_broken",
    "approval_recorded",
    "resumed",
    "removed",
    "expired",
    "run_failed",
    "run_completed",
    "run_cancelled",
    "agent_unreachable",
    "reminded",
    "escalated",
    "request_expiring",
];

/// How long before a deadline `request_expiring` is sent when a channel does not say.
pub const DEFAULT_EXPIRING_NOTICE_SECONDS: u32 = 300;

/// The longest notice accepted (a week, as the database's check).
pub const MAX_EXPIRING_NOTICE_SECONDS: u32 = 604_800;

/// How a channel's bodies are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelFormat {
    /// The service's event document (the `/api/events` data plus the request).
    Json,
    /// A Slack incoming-webhook body with blocks.
    Slack,
}

impl ChannelFormat {
    /// The format's name in the file and the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChannelFormat::Json => "json",
            ChannelFormat::Slack => "slack",
        }
    }

    /// The format named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(ChannelFormat::Json),
            "slack" => Some(ChannelFormat::Slack),
            _ => None,
        }
    }
}

/// One channel.
#[derive(Clone, Debug)]
pub struct Channel {
    pub name: String,
    pub url: String,
    pub format: ChannelFormat,
    /// Signs every body (`X-Hitl-Signature`); only in this process's memory.
    pub secret: Secret,
    /// The events it wants (names of [`NOTIFY_EVENTS`]).
    pub events: Vec<String>,
    /// Only requests of these nodes (empty: every node).
    pub nodes: Vec<String>,
    /// Only requests assigned to one of these groups (empty: every request).
    pub groups: Vec<String>,
    /// Whether tool arguments are sent (default false: they stay out of chat).
    pub include_arguments: bool,
    /// How long before a pending request's deadline `request_expiring` is sent; `Some`
    /// exactly when the channel wants that event.
    pub expiring_notice_seconds: Option<u32>,
}

/// The shortest signing secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsFile {
    #[serde(default)]
    channel: Vec<toml::Spanned<FileEntry>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEntry {
    name: String,
    url: String,
    format: String,
    secret: String,
    events: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    include_arguments: bool,
    expiring_notice_seconds: Option<i64>,
}

/// Parses a channels file; `allowed(url)` says whether a URL passes
/// `HITL_NOTIFY_ALLOWED_URLS` (and why not):
///
/// ```toml
/// [[channel]]
/// name = "payments-slack"
/// url = "https://hooks.slack.com/services/T000/B000/XXXX"
/// format = "slack"                 # or "json"
/// secret = "…at least 16 characters…"
/// events = ["request_raised", "expired"]
/// nodes = ["approve-refund"]       # optional: only these nodes' requests
/// groups = ["payments-ops"]        # optional: only requests assigned to these groups
/// includeArguments = false         # tool arguments stay out of chat unless true
/// expiringNoticeSeconds = 600      # with "request_expiring" in events (default 300)
/// ```
pub fn parse_channels_file(
    text: &str,
    allowed: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Vec<Channel>, String> {
    let file: ChannelsFile = super::parse_toml(text)?;
    let mut out: Vec<Channel> = Vec::new();
    for spanned in file.channel {
        let line = super::line_of(text, spanned.span().start);
        let bad = |why: String| Err(format!("line {line}: {why}"));
        let entry = spanned.into_inner();
        let name_ok = (1..=64).contains(&entry.name.len())
            && entry
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return bad("`name` must be 1 to 64 letters, digits, `_`, `.` or `-`".into());
        }
        if out.iter().any(|c| c.name == entry.name) {
            return bad("another channel has the same `name`".into());
        }
        if let Err(why) = allowed(&entry.url) {
            return bad(format!("`url` {why}"));
        }
        let Some(format) = ChannelFormat::parse(&entry.format) else {
            return bad("`format` is `json` or `slack`".into());
        };
        if entry.secret.chars().count() < MIN_SECRET_LEN {
            return bad(format!(
                "`secret` must be at least {MIN_SECRET_LEN} characters"
            ));
        }
        if entry.events.is_empty() {
            return bad("`events` must name at least one event".into());
        }
        if let Some(unknown) = entry
            .events
            .iter()
            .find(|e| !NOTIFY_EVENTS.contains(&e.as_str()))
        {
            return bad(format!(
                "`events`: {unknown:?} is not one of {}",
                NOTIFY_EVENTS.join(", ")
            ));
        }
        if entry
            .nodes
            .iter()
            .chain(&entry.groups)
            .any(|s| s.is_empty() || s.len() > 256)
        {
            return bad("`nodes` and `groups` entries are 1 to 256 characters".into());
        }
        let wants_expiring = entry.events.iter().any(|e| e == "request_expiring");
        let expiring_notice_seconds = match (entry.expiring_notice_seconds, wants_expiring) {
            (None, false) => None,
            (None, true) => Some(DEFAULT_EXPIRING_NOTICE_SECONDS),
            (Some(_), false) => {
                return bad(
                    "`expiringNoticeSeconds` needs \"request_expiring\" in `events`".into(),
                );
            }
            (Some(n), true) => match u32::try_from(n) {
                Ok(n) if (1..=MAX_EXPIRING_NOTICE_SECONDS).contains(&n) => Some(n),
                _ => {
                    return bad(format!(
                        "`expiringNoticeSeconds` is 1 to {MAX_EXPIRING_NOTICE_SECONDS}"
                    ));
                }
            },
        };
        out.push(Channel {
            name: entry.name,
            url: entry.url,
            format,
            secret: Secret::new(entry.secret),
            events: entry.events,
            nodes: entry.nodes,
            groups: entry.groups,
            include_arguments: entry.include_arguments,
            expiring_notice_seconds,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_local(url: &str) -> Result<(), String> {
        if url.starts_with("http://127.0.0.1:") {
            Ok(())
        } else {
            Err("is not under an allowed notification URL (HITL_NOTIFY_ALLOWED_URLS)".into())
        }
    }

    const GOOD: &str = r#"
[[channel]]
name = "ops"
url = "http://127.0.0.1:9000/hook"
format = "slack"
secret = "0123456789abcdef-secret"
events = ["request_raised", "resumed"]
groups = ["payments-ops"]

[[channel]]
name = "audit-sink"
url = "http://127.0.0.1:9001/"
format = "json"
secret = "another-secret-of-length"
events = ["run_failed", "request_expiring"]
includeArguments = true
expiringNoticeSeconds = 600
"#;

    #[test]
    fn a_good_file_parses() {
        let channels = parse_channels_file(GOOD, &allow_local).unwrap();
        assert_eq!(channels.len(), 2);
        assert_eq!(channels[0].format, ChannelFormat::Slack);
        assert_eq!(channels[0].groups, ["payments-ops"]);
        assert!(!channels[0].include_arguments);
        assert!(channels[1].include_arguments);
        assert_eq!(channels[0].expiring_notice_seconds, None);
        assert_eq!(channels[1].expiring_notice_seconds, Some(600));
        let default = GOOD.replace("expiringNoticeSeconds = 600\n", "");
        let channels = parse_channels_file(&default, &allow_local).unwrap();
        assert_eq!(
            channels[1].expiring_notice_seconds,
            Some(DEFAULT_EXPIRING_NOTICE_SECONDS)
        );
        assert!(parse_channels_file("", &allow_local).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_name_their_line_and_never_the_secret() {
        let cases = [
            (
                GOOD.replace("format = \"slack\"", "format = \"xml\""),
                "line 2: `format`",
            ),
            (
                GOOD.replace("9000/hook", "9000/hook\"\nurl2 = \"x"),
                "line 5: unknown field `url2`",
            ),
            (
                GOOD.replace("http://127.0.0.1:9001/", "https://evil.example/"),
                "line 10: `url` is not under an allowed",
            ),
            (
                GOOD.replace("0123456789abcdef-secret", "short"),
                "line 2: `secret` must be at least 16",
            ),
            (
                GOOD.replace("\"run_failed\"", "\"run_exploded\""),
                "line 10: `events`: \"run_exploded\"",
            ),
            (
                GOOD.replace("audit-sink", "ops"),
                "line 10: another channel",
            ),
            (
                GOOD.replace("name = \"ops\"", "name = \"o p\""),
                "line 2: `name`",
            ),
            (
                GOOD.replace(
                    "events = [\"run_failed\", \"request_expiring\"]",
                    "events = []",
                ),
                "line 10: `events`",
            ),
            (
                GOOD.replace(", \"request_expiring\"]", "]"),
                "line 10: `expiringNoticeSeconds` needs",
            ),
            (
                GOOD.replace("= 600", "= 0"),
                "line 10: `expiringNoticeSeconds` is 1 to",
            ),
            (
                GOOD.replace("= 600", "= 9999999999"),
                "line 10: `expiringNoticeSeconds` is 1 to",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_channels_file(&text, &allow_local).unwrap_err();
            assert!(err.starts_with(expected), "{err} (expected {expected})");
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
    }
}
