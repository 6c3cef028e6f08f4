//! The one HTTP error type: each variant maps to one status code in a single match, every
//! answer is the envelope `{"error": {"code", "message", "details"}}`, and 5xx bodies
//! never carry internal detail (the cause is logged once, here).
//!
//! The status contract: 400 malformed JSON or query, 401 no or unknown token, 403 the
//! token lacks the scope, 404 unknown run, request, brief, command or route, 405 wrong
//! method, 408 a body that stopped arriving, 409 not pending / conflict / terminal run / thread taken, 413 body over the
//! limit, 415 not JSON, 422 a field is invalid (`details.field` names it), 500 a fault of
//! ours or a command that failed for good, 503 database unavailable or HITL disabled.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::{CommandId, Refusal};
use crate::identity::Scope;
use crate::service::ServiceError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body or query cannot be read at all (not JSON, truncated, too deep).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no token, or not one we know (one answer for both).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 403: a known token without the scope the route needs.
    #[error("this token lacks the `{}` scope", scope.as_str())]
    Forbidden { scope: Scope },
    /// 403: the credential may not act as it asked (`operator_mismatch`: it is bound to
    /// another operator; `not_assignee`: the request is assigned to others).
    #[error("{message}")]
    Denied {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 404: the route or the thing named does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 405: the route exists, not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 408: the body stopped arriving (no progress for the body timeout).
    #[error("the request body stopped arriving")]
    RequestTimeout,
    /// 409: the state moved on (request not pending, run ended, lost race, thread taken).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 413: the body is larger than the configured limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: the body is not declared as JSON.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 422: a field is invalid; `details.field` names it.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 503: the service cannot serve now (database down, not migrated, HITL disabled).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 500: the command was applied and failed for good (its job died).
    #[error("command {command_id} failed")]
    CommandFailed { command_id: String },
    /// 500: a fault of ours; the cause is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// 422 for `field`, with the field named in the message and in `details.field`.
    pub fn invalid(field: impl Into<String>, message: impl AsRef<str>) -> Self {
        let field = field.into();
        ApiError::Invalid {
            code: "invalid_field",
            message: format!("{field}: {}", message.as_ref()),
            details: json!({ "field": field }),
        }
    }

    /// 404 with a code naming what was not found.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    /// 503: the database could not be reached.
    pub fn database_unavailable() -> Self {
        ApiError::Unavailable {
            code: "database_unavailable",
            message: "the database is unavailable; retry later".into(),
            details: Value::Null,
        }
    }

    /// The status and the stable `code` string: the single place a status is chosen.
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Denied { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::CommandFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "command_failed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let (message, details) = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                ("internal error".to_owned(), Value::Null)
            }
            ApiError::Forbidden { scope } => {
                (self.to_string(), json!({ "requiredScope": scope.as_str() }))
            }
            ApiError::Denied {
                message, details, ..
            } => (message.clone(), details.clone()),
            ApiError::PayloadTooLarge { limit } => (self.to_string(), json!({ "limit": limit })),
            ApiError::CommandFailed { command_id } => (
                format!("command {command_id} failed; see GET /api/hitl/commands/{command_id}"),
                json!({ "commandId": command_id }),
            ),
            ApiError::Conflict {
                message, details, ..
            }
            | ApiError::Invalid {
                message, details, ..
            }
            | ApiError::Unavailable {
                message, details, ..
            } => (message.clone(), details.clone()),
            other => (other.to_string(), Value::Null),
        };
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is never read: do not keep the connection for more.
            ApiError::PayloadTooLarge { .. } | ApiError::RequestTimeout => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        // The service's wording is the client's message.
        let message = e.to_string();
        match e {
            ServiceError::Invalid { field, message } => ApiError::invalid(field, message),
            ServiceError::InvalidPlan(plan) => ApiError::Invalid {
                code: "invalid_plan",
                message: format!("{}: {}", plan.field, plan.message),
                details: json!({ "field": plan.field, "node": plan.node }),
            },
            ServiceError::NotFound { entity, message } => {
                ApiError::not_found(entity.not_found_code(), message)
            }
            ServiceError::Refused(refusal) => ApiError::refused(*refusal, None),
            ServiceError::Conflict(message) => ApiError::Conflict {
                code: "conflict",
                message,
                details: Value::Null,
            },
            ServiceError::ThreadTaken(thread) => ApiError::Conflict {
                code: "thread_taken",
                message: format!("thread id {thread} is already used by another run"),
                details: json!({ "field": "threadId", "threadId": thread }),
            },
            e @ ServiceError::IdempotencyKeyReused => ApiError::Invalid {
                code: "idempotency_key_reused",
                message: e.to_string(),
                details: json!({ "field": "Idempotency-Key" }),
            },
            e @ ServiceError::HitlDisabled => ApiError::Unavailable {
                code: "hitl_disabled",
                message: e.to_string(),
                details: Value::Null,
            },
            ServiceError::NotAssignee { request_id } => ApiError::Denied {
                code: "not_assignee",
                message,
                details: json!({ "requestId": request_id }),
            },
            ServiceError::ForceNeedsSupervise => ApiError::Denied {
                code: "supervise_required",
                message,
                details: json!({ "field": "force", "scope": "supervise" }),
            },
            ServiceError::OperatorMismatch { bound } => ApiError::Denied {
                code: "operator_mismatch",
                message,
                details: json!({ "field": "operator.id", "boundOperator": bound }),
            },
            ServiceError::Unavailable => ApiError::database_unavailable(),
            ServiceError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl ApiError {
    /// A refused command: 409 with the refusal's reason as the code (`conflict` naming
    /// the winner, `not_pending`, `run_terminal`), or 422 `invalid_response` when the
    /// answer itself did not fit the request. `details` is the refusal less its message,
    /// with `winner` always present and the command's id when one was recorded.
    pub fn refused(refusal: Refusal, command_id: Option<&CommandId>) -> Self {
        let message = refusal.message().to_owned();
        let conflict = refusal.is_conflict();
        let code = refusal.reason();
        let mut details = match refusal.to_json() {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        details.remove("message");
        if conflict {
            details.entry("winner").or_insert(Value::Null);
        }
        if let Some(id) = command_id {
            details.insert("commandId".into(), json!(id));
        }
        let details = Value::Object(details);
        if conflict {
            ApiError::Conflict {
                code,
                message,
                details,
            }
        } else {
            ApiError::Invalid {
                code: "invalid_response",
                message,
                details,
            }
        }
    }
}

/// The answer for a path no route serves.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// The answer for a known path with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
