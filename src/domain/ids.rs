//! Typed, prefixed identifiers for every kind of record the orchestrator stores.
//!
//! An id is `{prefix}_{32 lowercase hex digits}`, the hex being a UUIDv7 in
//! [`Uuid::simple`] form (`run_0193a4c0e2b77d3c8f1a2b3c4d5e6f70`). Each kind has its own
//! newtype so a command id can never be passed where a run id is expected, and parsing
//! checks the prefix so a client cannot swap them either. Clients treat ids as opaque:
//! parsing accepts any UUID version and checks only the shape.
//!
//! [`ThreadId`] is the exception: clients may bring their own thread id, so it accepts
//! any reasonable string and only generated ones carry the `thread_` prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Longest client-supplied thread id accepted, in characters.
pub const THREAD_ID_MAX_CHARS: usize = 256;

/// Number of hex digits after the prefix of a generated id.
const HEX_DIGITS: usize = 32;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is not `{prefix}_` followed by exactly 32 lowercase hex digits.
    #[error("expected an id of the form {prefix}_<32 hex digits>")]
    Malformed {
        /// The prefix the id kind requires, e.g. `run`.
        prefix: &'static str,
    },
    /// A client-supplied thread id breaks the thread id rules.
    #[error(
        "expected a thread id of 1 to {THREAD_ID_MAX_CHARS} characters, \
         not only whitespace, without control characters"
    )]
    InvalidThreadId,
}

/// True when `s` is `prefix` + `_` + exactly 32 lowercase hex digits.
fn has_prefixed_hex_shape(s: &str, prefix: &str) -> bool {
    let Some(hex) = s
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return false;
    };
    hex.len() == HEX_DIGITS
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Formats a generated id: `{prefix}_{uuid in simple form}`.
fn format_prefixed(prefix: &str, uuid: Uuid) -> String {
    format!("{prefix}_{}", uuid.simple())
}

/// Defines a prefixed id newtype with its constructors, parsing, formatting, serde and
/// sqlx support.
macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[doc = concat!(
            "\n\nFormat: `", $prefix, "_` followed by 32 lowercase hex digits. ",
            "Stored as TEXT; serialized as the plain string."
        )]
        // Decoding from the database skips `parse`: the column only ever receives ids
        // written through these types, and a CHECK there is the place to enforce more.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, utoipa::ToSchema)]
        #[sqlx(transparent)]
        pub struct $name(String);

        // A random `Default` would let `#[derive(Default)]` on a containing struct mint
        // ids silently; `new()` keeps minting explicit.
        #[allow(clippy::new_without_default)]
        impl $name {
            /// The prefix before the `_` that every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Generates a fresh id from a UUIDv7 (time-ordered).
            pub fn new() -> Self {
                Self::from_uuid(Uuid::now_v7())
            }

            /// Builds the id that wraps `uuid` (any version).
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(format_prefixed(Self::PREFIX, uuid))
            }

            /// Parses an id, checking the exact prefix and 32 lowercase hex digits.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if has_prefixed_hex_shape(s, Self::PREFIX) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::Malformed {
                        prefix: Self::PREFIX,
                    })
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        id_common_impls!($name);
    };
}

/// Formatting, parsing and serde impls shared by every id type (all delegate to
/// `as_str` and `parse`).
macro_rules! id_common_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// Identifies an orchestration run (`orchestrator_runs.run_id`).
    RunId,
    "run"
);
prefixed_id!(
    /// Identifies a brief, the input a run works from (`briefs.brief_id`).
    BriefId,
    "brief"
);
prefixed_id!(
    /// Identifies a HITL request raised by a paused run (`hitl_requests.request_id`).
    RequestId,
    "hitl_req"
);
prefixed_id!(
    /// Identifies one operator response to a HITL request (`hitl_responses.response_id`).
    ResponseId,
    "hitl_resp"
);
prefixed_id!(
    /// Identifies a resume or remove command submission (`hitl_commands.command_id`).
    CommandId,
    "cmd"
);

/// Identifies the conversation thread a run belongs to (`orchestrator_runs.thread_id`).
///
/// Clients may supply their own: any string of 1 to [`THREAD_ID_MAX_CHARS`] characters
/// with no control characters that is not only whitespace. Generated thread ids are
/// `thread_` followed by 32 lowercase hex digits. Stored as TEXT; serialized as the
/// plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, utoipa::ToSchema)]
#[sqlx(transparent)]
pub struct ThreadId(String);

// See `prefixed_id!`: minting stays explicit.
#[allow(clippy::new_without_default)]
impl ThreadId {
    /// The prefix of generated thread ids (client-supplied ones need not have it).
    pub const PREFIX: &'static str = "thread";

    /// Generates a fresh thread id, `thread_` + a UUIDv7 in simple form.
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Builds the generated-style thread id that wraps `uuid` (any version).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(format_prefixed(Self::PREFIX, uuid))
    }

    /// Parses a thread id by the client rules: 1 to [`THREAD_ID_MAX_CHARS`] characters,
    /// no control characters, not only whitespace.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        // Counting chars, not bytes, so the limit means the same for every script;
        // `take` bounds the work on a huge input.
        let chars = s.chars().take(THREAD_ID_MAX_CHARS + 1).count();
        let valid = (1..=THREAD_ID_MAX_CHARS).contains(&chars)
            && !s.chars().any(char::is_control)
            && !s.chars().all(char::is_whitespace);
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::InvalidThreadId)
        }
    }

    /// The thread id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

id_common_impls!(ThreadId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sqlx::postgres::{PgArgumentBuffer, Postgres};

    const HEX: &str = "0193a4c0e2b77d3c8f1a2b3c4d5e6f70";

    fn is_prefixed_hex(s: &str, prefix: &str) -> bool {
        has_prefixed_hex_shape(s, prefix)
    }

    #[test]
    fn new_ids_have_their_prefix_and_32_lowercase_hex_digits() {
        assert!(is_prefixed_hex(RunId::new().as_str(), "run"));
        assert!(is_prefixed_hex(BriefId::new().as_str(), "brief"));
        assert!(is_prefixed_hex(RequestId::new().as_str(), "hitl_req"));
        assert!(is_prefixed_hex(ResponseId::new().as_str(), "hitl_resp"));
        assert!(is_prefixed_hex(CommandId::new().as_str(), "cmd"));
        assert!(is_prefixed_hex(ThreadId::new().as_str(), "thread"));
    }

    #[test]
    fn new_ids_wrap_a_uuid_v7() {
        let id = RunId::new();
        let hex = &id.as_str()["run_".len()..];
        let uuid = Uuid::parse_str(hex).expect("hex is a uuid");
        assert_eq!(uuid.get_version_num(), 7);
    }

    #[test]
    fn new_ids_are_unique() {
        let a = CommandId::new();
        let b = CommandId::new();
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes_are_the_documented_ones() {
        assert_eq!(RunId::PREFIX, "run");
        assert_eq!(BriefId::PREFIX, "brief");
        assert_eq!(RequestId::PREFIX, "hitl_req");
        assert_eq!(ResponseId::PREFIX, "hitl_resp");
        assert_eq!(CommandId::PREFIX, "cmd");
        assert_eq!(ThreadId::PREFIX, "thread");
    }

    #[test]
    fn run_id_parses_a_well_formed_id() {
        let s = format!("run_{HEX}");
        let id = RunId::parse(&s).expect("valid");
        assert_eq!(id.as_str(), s);
        assert_eq!(id.to_string(), s);
        assert_eq!(id.as_ref(), s);
    }

    #[test]
    fn run_id_parses_through_from_str() {
        let id: RunId = format!("run_{HEX}").parse().expect("valid");
        assert_eq!(id, RunId::parse(&format!("run_{HEX}")).expect("valid"));
    }

    #[test]
    fn run_id_rejects_a_command_id() {
        let err = RunId::parse(&format!("cmd_{HEX}")).unwrap_err();
        assert_eq!(err, IdError::Malformed { prefix: "run" });
    }

    #[test]
    fn request_id_rejects_a_response_id_and_the_reverse() {
        assert!(RequestId::parse(&format!("hitl_resp_{HEX}")).is_err());
        assert!(ResponseId::parse(&format!("hitl_req_{HEX}")).is_err());
    }

    #[test]
    fn run_id_rejects_uppercase_hex() {
        assert!(RunId::parse(&format!("run_{}", HEX.to_uppercase())).is_err());
    }

    #[test]
    fn run_id_rejects_an_uppercase_prefix() {
        assert!(RunId::parse(&format!("RUN_{HEX}")).is_err());
    }

    #[test]
    fn run_id_rejects_too_few_or_too_many_hex_digits() {
        assert!(RunId::parse(&format!("run_{}", &HEX[..31])).is_err());
        assert!(RunId::parse(&format!("run_{HEX}0")).is_err());
        assert!(RunId::parse("run_").is_err());
        assert!(RunId::parse("").is_err());
    }

    #[test]
    fn run_id_rejects_a_hyphenated_uuid() {
        let uuid = Uuid::parse_str(HEX).expect("uuid");
        assert!(RunId::parse(&format!("run_{}", uuid.hyphenated())).is_err());
    }

    #[test]
    fn run_id_rejects_non_hex_and_non_ascii_characters() {
        assert!(RunId::parse("run_0193a4c0e2b77d3c8f1a2b3c4d5e6f7g").is_err());
        // 30 ASCII digits + one two-byte char is 32 bytes but not 32 hex digits.
        assert!(RunId::parse("run_000000000000000000000000000000é").is_err());
    }

    #[test]
    fn run_id_rejects_a_missing_separator_or_surrounding_whitespace() {
        assert!(RunId::parse(&format!("run{HEX}")).is_err());
        assert!(RunId::parse(&format!("run-{HEX}")).is_err());
        assert!(RunId::parse(&format!(" run_{HEX}")).is_err());
        assert!(RunId::parse(&format!("run_{HEX}\n")).is_err());
    }

    #[test]
    fn run_id_accepts_any_uuid_version() {
        // A v4 uuid: ids are opaque, only the shape is checked.
        assert!(RunId::parse("run_9f8b2c3a1d4e4f5a8b6c7d8e9f0a1b2c").is_ok());
        assert!(RunId::parse("run_00000000000000000000000000000000").is_ok());
    }

    #[test]
    fn malformed_id_error_names_the_expected_form() {
        let err = RequestId::parse("nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an id of the form hitl_req_<32 hex digits>"
        );
    }

    #[test]
    fn run_id_serializes_as_a_plain_string() {
        let id = RunId::parse(&format!("run_{HEX}")).expect("valid");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"run_{HEX}\""));
    }

    #[test]
    fn run_id_deserializes_from_a_plain_string() {
        let id: RunId = serde_json::from_str(&format!("\"run_{HEX}\"")).expect("deserialize");
        assert_eq!(id.as_str(), format!("run_{HEX}"));
    }

    #[test]
    fn deserializing_a_malformed_run_id_names_the_expected_prefix() {
        let err = serde_json::from_str::<RunId>(&format!("\"cmd_{HEX}\"")).unwrap_err();
        assert!(err.to_string().contains("run_<32 hex digits>"), "{err}");
    }

    #[test]
    fn deserializing_a_non_string_id_fails() {
        assert!(serde_json::from_str::<RunId>("42").is_err());
        assert!(serde_json::from_str::<ThreadId>("null").is_err());
    }

    #[test]
    fn ids_inside_a_struct_round_trip_through_json() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Pair {
            run: RunId,
            thread: ThreadId,
        }
        let pair = Pair {
            run: RunId::new(),
            thread: ThreadId::parse("customer-42").expect("valid"),
        };
        let json = serde_json::to_string(&pair).expect("serialize");
        let back: Pair = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, pair);
    }

    #[test]
    fn ids_order_by_creation_time() {
        let earlier = RunId::from_uuid(Uuid::from_u128(1));
        let later = RunId::from_uuid(Uuid::from_u128(2));
        assert!(earlier < later);
    }

    #[test]
    fn from_uuid_uses_the_simple_form() {
        let uuid = Uuid::parse_str(HEX).expect("uuid");
        assert_eq!(BriefId::from_uuid(uuid).as_str(), format!("brief_{HEX}"));
        assert_eq!(ThreadId::from_uuid(uuid).as_str(), format!("thread_{HEX}"));
    }

    #[test]
    fn ids_bind_as_postgres_text() {
        let id = CommandId::parse(&format!("cmd_{HEX}")).expect("valid");
        let mut buf = PgArgumentBuffer::default();
        let _ = <CommandId as sqlx::Encode<'_, Postgres>>::encode_by_ref(&id, &mut buf)
            .expect("encode");
        assert_eq!(&buf[..], id.as_str().as_bytes());
        let text = <String as sqlx::Type<Postgres>>::type_info();
        assert!(<CommandId as sqlx::Type<Postgres>>::compatible(&text));
        assert!(<ThreadId as sqlx::Type<Postgres>>::compatible(&text));
    }

    #[test]
    fn thread_id_accepts_a_client_supplied_string() {
        for s in [
            "optional-client-thread-id",
            "a",
            "café ☕",
            "  padded  ",
            "x y",
        ] {
            let id = ThreadId::parse(s).expect(s);
            assert_eq!(id.as_str(), s);
        }
    }

    #[test]
    fn thread_id_accepts_a_generated_thread_id() {
        let id = ThreadId::new();
        assert_eq!(ThreadId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn thread_id_rejects_an_empty_string() {
        assert_eq!(ThreadId::parse(""), Err(IdError::InvalidThreadId));
    }

    #[test]
    fn thread_id_rejects_whitespace_only() {
        assert!(ThreadId::parse(" ").is_err());
        assert!(ThreadId::parse("\u{3000}").is_err());
    }

    #[test]
    fn thread_id_rejects_control_characters() {
        for s in ["a\nb", "tab\there", "nul\0", "del\u{7f}", "\u{85}next-line"] {
            assert!(ThreadId::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn thread_id_allows_256_characters_but_not_257() {
        assert!(ThreadId::parse(&"é".repeat(256)).is_ok());
        assert!(ThreadId::parse(&"a".repeat(257)).is_err());
    }

    #[test]
    fn thread_id_error_states_the_rules() {
        let msg = ThreadId::parse("").unwrap_err().to_string();
        assert!(msg.contains("1 to 256 characters"), "{msg}");
    }

    #[test]
    fn deserializing_an_invalid_thread_id_fails() {
        assert!(serde_json::from_str::<ThreadId>("\"\"").is_err());
        assert!(serde_json::from_str::<ThreadId>("\"a\\u0000b\"").is_err());
    }

    proptest! {
        #[test]
        fn any_uuid_makes_an_id_that_parses_back_to_itself(n in any::<u128>()) {
            let id = RequestId::from_uuid(Uuid::from_u128(n));
            prop_assert_eq!(RequestId::parse(id.as_str()), Ok(id.clone()));
            let json = serde_json::to_string(&id).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<RequestId>(&json).expect("deserialize"), id);
        }

        #[test]
        fn a_string_that_parses_as_an_id_is_kept_verbatim(s in "(run|cmd)_[0-9a-fA-F]{31,33}") {
            if let Ok(id) = RunId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(s.starts_with("run_"));
                prop_assert_eq!(s.len(), 36);
                prop_assert!(!s.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }

        #[test]
        fn thread_id_parse_never_panics_and_keeps_what_it_accepts(s in any::<String>()) {
            if let Ok(id) = ThreadId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!s.chars().any(char::is_control));
                prop_assert!(s.chars().count() <= THREAD_ID_MAX_CHARS);
            }
        }
    }
}
