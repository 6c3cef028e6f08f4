//! Reading the console's forms: an `application/x-www-form-urlencoded` body within the
//! body limit and timeout, and the answer form turned into the service's responses, one
//! per item, from the item's stored response types and options (the form names items and
//! options by their position, so no agent-chosen id ever becomes a field name).

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::pages;
use crate::domain::{Operator, ResponseType};
use crate::service::{RequestItem, ResponseInput};

/// A form's fields, in the order sent.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` with surrounding blanks removed, `None` when empty.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Reads a form body: 415 unless it is `application/x-www-form-urlencoded`, 413 past
/// `limit` bytes (declared, or while it arrives), 408 when it has not arrived within
/// `timeout`, 400 when it does not decode.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Fields, Response> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(pages::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Form refused",
            "The console accepts only its own HTML forms.",
        ));
    }
    let too_large = || {
        pages::refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "The form is larger than this service accepts.",
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            return Err(pages::refused(
                StatusCode::REQUEST_TIMEOUT,
                "Too slow",
                "The form took too long to arrive.",
            ));
        }
        // Past the limit while arriving (a chunked body), or cut off.
        Ok(Err(_)) => return Err(too_large()),
        Ok(Ok(bytes)) => bytes,
    };
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .map(Fields)
        .map_err(|_| {
            pages::refused(
                StatusCode::BAD_REQUEST,
                "Form refused",
                "The form could not be read.",
            )
        })
}

/// The answers the form gives to `items` (fields `decision-N`, `text-N`, `arguments-N`
/// for the item at position N), or what is missing, naming the item.
pub fn responses(
    items: &[RequestItem],
    form: &Fields,
    request_id: &str,
    operator: &Operator,
) -> Result<Vec<ResponseInput>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let decision = form.get(&format!("decision-{i}")).unwrap_or("");
            let text = form.text(&format!("text-{i}"));
            let offered = |t: ResponseType| item.response_types.contains(&t);
            let mut answer = ResponseInput {
                request_id: Some(request_id.to_owned()),
                item_id: Some(item.item_id.clone()),
                response_type: ResponseType::Approval,
                edited_arguments: None,
                approved: None,
                option_id: None,
                freeform_text: text.clone(),
                responder_id: Some(operator.id.clone()),
                responder_display_name: operator.display_name.clone(),
            };
            match decision {
                "approve" if offered(ResponseType::Approval) => answer.approved = Some(true),
                "reject" if offered(ResponseType::Rejection) => {
                    answer.response_type = ResponseType::Rejection;
                    answer.approved = Some(false);
                }
                "freeform" if offered(ResponseType::Freeform) => {
                    answer.response_type = ResponseType::Freeform;
                    if text.is_none() {
                        return Err(format!(
                            "“{}”: write the answer in its text field.",
                            item.title
                        ));
                    }
                }
                "edit" if offered(ResponseType::Edit) => {
                    answer.response_type = ResponseType::Edit;
                    let raw = form.get(&format!("arguments-{i}")).unwrap_or("");
                    match serde_json::from_str::<Value>(raw) {
                        Ok(v @ Value::Object(_)) => answer.edited_arguments = Some(v),
                        _ => {
                            return Err(format!(
                                "“{}”: the edited arguments must be a JSON object.",
                                item.title
                            ));
                        }
                    }
                }
                choice if offered(ResponseType::Option) => {
                    let option = choice
                        .strip_prefix("option-")
                        .and_then(|k| k.parse::<usize>().ok())
                        .and_then(|k| item.options.get(k));
                    match option {
                        Some(option) => {
                            answer.response_type = ResponseType::Option;
                            answer.option_id = Some(option.id.clone());
                        }
                        None => return Err(format!("“{}”: choose an answer.", item.title)),
                    }
                }
                _ => return Err(format!("“{}”: choose an answer.", item.title)),
            }
            Ok(answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ItemKind, ItemOption};

    fn item(types: &[ResponseType]) -> RequestItem {
        RequestItem {
            item_id: "call_1".into(),
            kind: ItemKind::ToolApproval,
            title: "Send".into(),
            tool: None,
            response_types: types.to_vec(),
            options: vec![ItemOption {
                id: "short".into(),
                label: "Shorter".into(),
            }],
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn each_decision_becomes_the_answer_the_item_offers() {
        let op = Operator {
            id: "alice".into(),
            ..Operator::default()
        };
        let all = [
            ResponseType::Approval,
            ResponseType::Rejection,
            ResponseType::Option,
            ResponseType::Freeform,
            ResponseType::Edit,
        ];
        let one = |pairs: &[(&str, &str)]| responses(&[item(&all)], &fields(pairs), "r", &op);
        let approved = one(&[("decision-0", "approve")]).unwrap();
        assert_eq!(approved[0].approved, Some(true));
        assert_eq!(approved[0].item_id.as_deref(), Some("call_1"));
        let rejected = one(&[("decision-0", "reject"), ("text-0", " too risky ")]).unwrap();
        assert_eq!(rejected[0].response_type, ResponseType::Rejection);
        assert_eq!(rejected[0].freeform_text.as_deref(), Some("too risky"));
        let chosen = one(&[("decision-0", "option-0")]).unwrap();
        assert_eq!(chosen[0].option_id.as_deref(), Some("short"));
        assert!(one(&[("decision-0", "option-1")]).is_err());
        assert!(one(&[("decision-0", "freeform")]).is_err());
        let edited = one(&[("decision-0", "edit"), ("arguments-0", r#"{"to": "x"}"#)]).unwrap();
        assert_eq!(
            edited[0].edited_arguments,
            Some(serde_json::json!({ "to": "x" }))
        );
        assert!(one(&[("decision-0", "edit"), ("arguments-0", "[1]")]).is_err());
        assert!(one(&[]).is_err());
        let approve_only = responses(
            &[item(&[ResponseType::Approval])],
            &fields(&[("decision-0", "reject")]),
            "r",
            &op,
        );
        assert!(approve_only.is_err(), "not offered");
    }
}
