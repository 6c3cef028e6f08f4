//! Parsing a front end's raw input into the domain types the operations take, with one
//! rule per field and an error naming the field. Every front end (JSON API, console,
//! CLI) parses through these, so a value is refused alike whichever way it arrives.

use serde_json::{Value, json};

use super::PendingCursor;
use super::ServiceError;
use crate::domain::{BriefId, IdError, Operator, RequestId, RunId, ThreadId};
use crate::persistence::BriefInput;

/// Longest operator id, display name, email and idempotency key, in characters.
pub const MAX_SHORT_TEXT: usize = 256;
/// Longest note or removal reason, in characters.
pub const MAX_LONG_TEXT: usize = 4000;
/// Longest brief title, in characters.
pub const MAX_TITLE: usize = 500;

// The limits other parsers enforce, gathered here so a front end can state them (the
// OpenAPI document does) without reaching past the service layer.
pub use super::pending::{DEFAULT_LIMIT as DEFAULT_PAGE_SIZE, MAX_LIMIT as MAX_PAGE_SIZE};
pub use crate::domain::ids::THREAD_ID_MAX_CHARS;
pub use crate::engine::plan::{
    MAX_APPROVALS, MAX_ASSIGNEES, MAX_NODE_ID_LEN, MAX_NODES, MAX_TIMEOUT_SECONDS,
};

/// A client's key making a retried submission return the same command: 1 to 256
/// visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `raw` (surrounding blanks ignored), or 422 naming `Idempotency-Key`.
    pub fn parse(raw: &str) -> Result<Self, ServiceError> {
        let key = raw.trim();
        if key.is_empty()
            || key.len() > MAX_SHORT_TEXT
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ServiceError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {MAX_SHORT_TEXT} visible ASCII characters"),
            ));
        }
        Ok(Self(key.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An id of type `T` in `field`, or 422 naming it.
pub fn id<T>(
    field: &str,
    raw: &str,
    parse: fn(&str) -> Result<T, IdError>,
) -> Result<T, ServiceError> {
    parse(raw).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// An optional id of type `T` in `field`.
pub fn optional_id<T>(
    field: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Result<T, IdError>,
) -> Result<Option<T>, ServiceError> {
    raw.map(|r| id(field, r, parse)).transpose()
}

/// A request id in `field`.
pub fn request_id(field: &str, raw: Option<&str>) -> Result<Option<RequestId>, ServiceError> {
    optional_id(field, raw, RequestId::parse)
}

/// A thread id in `field`.
pub fn thread_id(field: &str, raw: Option<&str>) -> Result<Option<ThreadId>, ServiceError> {
    optional_id(field, raw, ThreadId::parse)
}

/// A brief id in `field`.
pub fn brief_id(field: &str, raw: Option<&str>) -> Result<Option<BriefId>, ServiceError> {
    optional_id(field, raw, BriefId::parse)
}

/// A run id in `field`.
pub fn run_id(field: &str, raw: Option<&str>) -> Result<Option<RunId>, ServiceError> {
    optional_id(field, raw, RunId::parse)
}

/// A page cursor of the pending inbox as `nextCursor` gives it: the hex (either case) of
/// `{micros}:{requestId}`, the micros 1 to 18 digits (a time after 1970 that PostgreSQL
/// can hold; a cursor naming one it cannot would fail the query). Else 422 `cursor`.
pub fn pending_cursor(raw: &str) -> Result<PendingCursor, ServiceError> {
    let refuse = || ServiceError::invalid("cursor", "is not a cursor this API returned");
    let hex = raw.as_bytes();
    if !hex.len().is_multiple_of(2) || hex.len() > 256 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(refuse());
    }
    let decoded: Vec<u8> = hex
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    let micros = decoded.split(|b| *b == b':').next().unwrap_or_default();
    if !(1..=18).contains(&micros.len()) || !micros.iter().all(u8::is_ascii_digit) {
        return Err(refuse());
    }
    PendingCursor::parse(raw)
}

/// The `Last-Event-ID` a client resumes after: an id the event stream sent, a whole
/// number of 1 to 18 digits (18 digits outlast any bigserial this service will reach);
/// 422 naming `Last-Event-ID` otherwise.
pub fn last_event_id(raw: Option<&[u8]>) -> Result<Option<i64>, ServiceError> {
    let Some(raw) = raw else { return Ok(None) };
    std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|s| (1..=18).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ServiceError::invalid("Last-Event-ID", "must be an event id sent by this stream")
        })
}

/// The longest "expiring within" window: a deadline further away is not urgent.
pub const MAX_EXPIRING_WITHIN: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A window like `15m`, `4h` or `2d` (a whole number of minutes, hours or days, at most
/// 30 days), for the requests whose deadline falls within it; 422 naming `field`
/// otherwise.
pub fn expiring_within(field: &str, raw: &str) -> Result<std::time::Duration, ServiceError> {
    let bad = || {
        ServiceError::invalid(
            field,
            "must be a whole number of minutes, hours or days, like 15m, 4h or 2d (at most 30d)",
        )
    };
    let raw = raw.trim();
    let unit = match raw.chars().last() {
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => return Err(bad()),
    };
    let digits = &raw[..raw.len() - 1];
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let window = std::time::Duration::from_secs(n * unit);
    if n == 0 || window > MAX_EXPIRING_WITHIN {
        return Err(bad());
    }
    Ok(window)
}

/// Refuses `text` in `field` when it is longer than `max` characters.
pub fn text(field: &str, text: Option<&str>, max: usize) -> Result<(), ServiceError> {
    match text {
        Some(t) if t.chars().count() > max => Err(ServiceError::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        _ => Ok(()),
    }
}

/// Who acts, as the runbook's `operator` object gives it (`operator.id` not blank, each
/// part at most 256 characters, an email with an `@`).
pub fn operator(
    id: &str,
    display_name: Option<&str>,
    email: Option<&str>,
) -> Result<Operator, ServiceError> {
    if id.trim().is_empty() {
        return Err(ServiceError::invalid("operator.id", "must not be blank"));
    }
    text("operator.id", Some(id), MAX_SHORT_TEXT)?;
    text("operator.displayName", display_name, MAX_SHORT_TEXT)?;
    text("operator.email", email, MAX_SHORT_TEXT)?;
    if email.is_some_and(|e| !e.contains('@')) {
        return Err(ServiceError::invalid(
            "operator.email",
            "is not an email address",
        ));
    }
    Ok(Operator {
        id: id.to_owned(),
        display_name: display_name.map(str::to_owned),
        email: email.map(str::to_owned),
    })
}

/// The operator a request acts as. A credential bound to an operator acts as that
/// operator: the body may leave `operator` out, and naming another is refused
/// (`OperatorMismatch`); an act-as credential (`API_KEY`, `API_TOKENS`, `actAs = true`)
/// acts as the operator the body names, which is then required.
pub fn acting_operator(
    principal: &crate::identity::Principal,
    given: Option<Operator>,
) -> Result<Operator, ServiceError> {
    match (&principal.operator, given) {
        (Some(bound), Some(given)) if given.id != bound.id => Err(ServiceError::OperatorMismatch {
            bound: bound.id.clone(),
        }),
        (Some(bound), _) => Ok(Operator {
            id: bound.id.clone(),
            display_name: bound.display_name.clone(),
            email: bound.email.clone(),
        }),
        (None, Some(given)) => Ok(given),
        (None, None) => Err(ServiceError::invalid(
            "operator",
            "is required: this credential acts for the operator the body names",
        )),
    }
}

/// The brief of a new run: a new one (`brief.title` not blank, at most 500
/// characters; `content` defaults to `{}`) or an existing one by id — exactly one.
pub fn brief(
    new: Option<(String, Option<Value>)>,
    existing: Option<&str>,
) -> Result<BriefInput, ServiceError> {
    match (new, existing) {
        (Some(_), Some(_)) => Err(ServiceError::invalid(
            "briefId",
            "give either brief or briefId, not both",
        )),
        (None, None) => Err(ServiceError::invalid(
            "brief",
            "either brief or briefId is required",
        )),
        (None, Some(id)) => Ok(BriefInput::Existing(self::id(
            "briefId",
            id,
            BriefId::parse,
        )?)),
        (Some((title, content)), None) => {
            if title.trim().is_empty() {
                return Err(ServiceError::invalid("brief.title", "must not be blank"));
            }
            text("brief.title", Some(&title), MAX_TITLE)?;
            Ok(BriefInput::New {
                title,
                content: content.unwrap_or_else(|| json!({})),
            })
        }
    }
}

/// A run's execution context: a JSON object, `{}` when absent.
pub fn execution_context(context: Option<Value>) -> Result<Value, ServiceError> {
    match context {
        None => Ok(json!({})),
        Some(c @ Value::Object(_)) => Ok(c),
        Some(_) => Err(ServiceError::invalid(
            "executionContext",
            "must be a JSON object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert_eq!(IdempotencyKey::parse(" k-1 ").unwrap().as_str(), "k-1");
        for bad in ["", "  ", "with space", "é", &"k".repeat(257)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_ok());
    }

    #[test]
    fn an_expiring_window_is_minutes_hours_or_days_up_to_thirty_days() {
        let secs = |raw: &str| expiring_within("expiring", raw).map(|d| d.as_secs());
        assert_eq!(secs("15m").unwrap(), 900);
        assert_eq!(secs(" 4h ").unwrap(), 4 * 3600);
        assert_eq!(secs("30d").unwrap(), 30 * 86_400);
        for bad in [
            "", "m", "0h", "31d", "721h", "1.5h", "-1h", "4 h", "4H", "1w", "9999999m", "é",
        ] {
            let e = expiring_within("expiring", bad).unwrap_err();
            assert!(e.to_string().starts_with("expiring:"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_last_event_id_is_one_to_eighteen_digits() {
        assert_eq!(last_event_id(None).unwrap(), None);
        assert_eq!(last_event_id(Some(b" 42 ")).unwrap(), Some(42));
        for bad in [&b""[..], b"x", b"-1", b"1234567890123456789", b"\xff"] {
            let e = last_event_id(Some(bad)).unwrap_err();
            assert!(e.to_string().starts_with("Last-Event-ID:"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_cursor_names_a_time_after_1970_in_at_most_18_digits() {
        let request = RequestId::new();
        let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02X}")).collect() };
        let at = chrono::Utc::now();
        let issued = PendingCursor::after(at, request.clone()).encode();
        assert!(pending_cursor(&issued).is_ok());
        assert!(pending_cursor(&hex(&format!("999999999999999999:{request}"))).is_ok());
        for micros in ["1000000000000000000", "-1", "+1", ""] {
            assert!(
                pending_cursor(&hex(&format!("{micros}:{request}"))).is_err(),
                "{micros}"
            );
        }
        assert!(pending_cursor("+3").is_err());
    }

    #[test]
    fn an_operator_needs_an_id_and_a_plausible_email() {
        assert!(operator(" ", None, None).is_err());
        assert!(operator("op", None, Some("nobody")).is_err());
        let op = operator("op", Some("Op"), Some("op@example.com")).unwrap();
        assert_eq!(op.display_name.as_deref(), Some("Op"));
    }
}
