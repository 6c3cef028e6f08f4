//! Reading requests: a JSON body extractor that enforces the content type (415) and the
//! size limit (413, before and while the body arrives), and turns serde's errors into 400
//! (not JSON: syntax, truncation, nesting deeper than serde_json's recursion limit) or
//! 422 naming the field (`responses[1].optionId`); and query-string parameters that
//! refuse unknown or repeated names.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::{ApiError, AppState};
use crate::domain::storable;

/// A JSON body of type `T`, read within the configured size limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let headers = request.headers();
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.max_body;
        // Refuse a declared oversize body before reading a byte of it.
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = read_limited(request.into_body(), limit, state.body_timeout).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `application/json` or `application/<something>+json`, parameters allowed.
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// Reads the body, stopping with 413 as soon as it grows past `limit` (a chunked body
/// declares no length), and with 408 when it makes no progress for `timeout`.
async fn read_limited(body: Body, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout(timeout, stream.next()).await else {
            return Err(ApiError::RequestTimeout);
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|_| ApiError::BadRequest {
            code: "unreadable_body",
            message: "the request body could not be read".into(),
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses a JSON object into `T`: 400 when it is not JSON, 422 naming the field when it
/// is JSON of the wrong shape or holds what cannot be stored as sent (U+0000, a key
/// given twice, an integer beyond 64 bits; `invalid_plan` naming the node inside a
/// plan). Every body of this API is an object: anything else is refused before serde
/// could read a struct from an array's positions.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tell JSON from not-JSON (and too deep to read) apart first.
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| shape_error(".", e))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    if let Err(u) = storable::check(bytes) {
        return Err(unstorable(bytes, u));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        shape_error(&path, e.into_inner())
    })?;
    de.end().map_err(|e| shape_error(".", e))?;
    Ok(value)
}

/// 422 for an unstorable value: `invalid_plan` naming the node when it is inside the
/// plan, `invalid_field` otherwise.
fn unstorable(bytes: &[u8], u: storable::Unstorable) -> ApiError {
    let Some(rest) = u.path.strip_prefix("plan.") else {
        return ApiError::invalid(u.path, u.message);
    };
    let node = rest
        .strip_prefix("nodes[")
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| {
            let body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            body["plan"]["nodes"][i]["id"].as_str().map(str::to_owned)
        });
    ApiError::Invalid {
        code: "invalid_plan",
        message: format!("{}: {}", u.path, u.message),
        details: serde_json::json!({ "field": u.path, "node": node }),
    }
}

fn shape_error(path: &str, e: serde_json::Error) -> ApiError {
    match e.classify() {
        Category::Data => {
            let message = e.to_string();
            // serde reports a missing field at its parent; name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let message = strip_position(&message);
            let field = match (path, missing) {
                (".", Some(name)) => name.to_owned(),
                (parent, Some(name)) => format!("{parent}.{name}"),
                (".", None) => "body".to_owned(),
                (path, None) => path.to_owned(),
            };
            ApiError::invalid(field, message)
        }
        Category::Syntax | Category::Eof | Category::Io => ApiError::BadRequest {
            code: "malformed_json",
            message: format!("the request body is not valid JSON: {e}"),
        },
    }
}

/// serde_json appends ` at line L column C`; the field path says more to a client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The query string's parameters, in order.
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(|_| {
                ApiError::BadRequest {
                    code: "malformed_query",
                    message: "the query string cannot be decoded".into(),
                }
            })?;
        // PostgreSQL stores no U+0000, and a name holding one names nothing we know.
        if let Some((name, _)) = pairs
            .iter()
            .find(|(n, v)| n.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::invalid(
                name.clone(),
                "must not contain U+0000 (it cannot be stored)",
            ));
        }
        Ok(Self(pairs))
    }
}

impl QueryParams {
    /// Refuses (422) any parameter not in `allowed`, and any given twice (every route
    /// is checked against `api::QUERY_PARAMETERS` before its handler runs).
    pub fn allow_only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("unknown parameter (accepted: {})", allowed.join(", ")),
                ));
            }
            if self.0[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::invalid(name.clone(), "given more than once"));
            }
        }
        Ok(())
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Item>,
        owner: Owner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        option_id: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Owner {
        id: String,
    }

    fn field_of(body: &str) -> (u16, serde_json::Value) {
        let e = parse_json::<Body>(body.as_bytes()).unwrap_err();
        let status = match &e {
            ApiError::BadRequest { .. } => 400,
            ApiError::Invalid { .. } => 422,
            _ => 0,
        };
        let details = match e {
            ApiError::Invalid { details, .. } => details["field"].clone(),
            _ => serde_json::Value::Null,
        };
        (status, details)
    }

    #[test]
    fn shape_errors_name_the_field_by_its_path() {
        let owner = r#""owner": {"id": "x"}"#;
        assert_eq!(
            field_of(&format!(
                r#"{{"items": [{{"optionId": "a"}}, {{"optionId": 3}}], {owner}}}"#
            )),
            (422, json!("items[1].optionId"))
        );
        assert_eq!(
            field_of(r#"{"items": [], "owner": {}}"#),
            (422, json!("owner.id"))
        );
        assert_eq!(field_of(r#"{"items": []}"#), (422, json!("owner")));
        assert_eq!(
            field_of(&format!(r#"{{"items": [], {owner}, "extra": 1}}"#)),
            (422, json!("extra"))
        );
        assert_eq!(field_of(r#""text""#), (422, json!("body")));
        assert_eq!(field_of("[1]"), (422, json!("body")));
    }

    #[test]
    fn text_that_is_not_json_is_a_bad_request() {
        assert_eq!(field_of("{").0, 400);
        assert_eq!(field_of("").0, 400);
        assert_eq!(
            field_of(r#"{"items": [], "owner": {"id": "x"}} trailing"#).0,
            400
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { .. }), "{e:?}");
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/merge-patch+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/jsonx"));
    }
}
