//! `GET /openapi.json`: the OpenAPI 3.1 description of this API, generated from the
//! code: every route's `#[utoipa::path]` next to its handler, and the schemas derived
//! from the types the handlers read and write. A test checks that the router serves
//! exactly the documented routes and that the document validates.

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::service::{PendingItem, RunSnapshot};

mod constraints;
pub use constraints::CAPABILITIES;

/// Every error: one envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// The error itself.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_field`, `conflict`, `run_not_found`, …).
    code: String,
    /// For people.
    message: String,
    /// Structured context (`field`, `winner`, `pendingRequestId`, …), or null.
    details: Option<Value>,
}

/// The answers every `/api` route can give before its own: no token, wrong scope, no
/// database.
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No token, or one nobody configured.
    #[response(status = 401, description = "no or unknown token")]
    Unauthorized(ErrorBody),
    /// The token lacks the route's scope.
    #[response(
        status = 403,
        description = "the token lacks the scope (`forbidden`), a token bound to an operator named another one (`operator_mismatch`), the request is assigned to others (`not_assignee`), or `force` without the supervise scope (`supervise_required`)"
    )]
    Forbidden(ErrorBody),
    /// The database is unreachable.
    #[response(status = 503, description = "database unavailable")]
    Unavailable(ErrorBody),
}

/// The answers to a bad JSON body.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    /// Not JSON.
    #[response(status = 400, description = "malformed JSON")]
    Malformed(ErrorBody),
    /// Larger than `HITL_MAX_BODY`.
    #[response(status = 413, description = "body over the limit")]
    TooLarge(ErrorBody),
    /// Not `application/json`.
    #[response(status = 415, description = "not application/json")]
    WrongType(ErrorBody),
    /// A field is invalid; `details.field` names it.
    #[response(
        status = 422,
        description = "a field is invalid (named in details.field)"
    )]
    Invalid(ErrorBody),
}

/// `202 Accepted` for a resume or remove.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandAccepted {
    command_id: String,
    status: crate::domain::CommandStatus,
    kind: crate::domain::CommandKind,
    run_id: String,
    request_id: Option<String>,
}

/// `202 Accepted` for a new run.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAccepted {
    run_id: String,
    thread_id: String,
    brief_id: String,
    status: crate::domain::RunStatus,
}

/// One page of the pending inbox.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingPage {
    items: Vec<PendingItem>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// Runs found by thread.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    items: Vec<RunSnapshot>,
    next_cursor: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API_KEY / API_TOKENS token (acts for the body's `operator`), a \
                         HITL_TOKENS_FILE token (bound to its operator, or act-as), or an \
                         identity provider's RS256/ES256 JWT (bound to the operator its \
                         claims name); see docs/API.md, \"Who acts\".",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "hitl-orchestrator", description = "Durable human-in-the-loop orchestration. \
        Bearer tokens (static, hashed in a tokens file, or an identity provider's JWTs) with \
        scopes `operate`, `submit`, `supervise` and `audit`; see docs/API.md."),
    paths(
        super::pending::list,
        super::commands::resume,
        super::commands::remove,
        super::claims::claim,
        super::claims::unclaim,
        super::commands::show,
        super::requests::show,
        super::runs::create,
        super::runs::list,
        super::runs::show,
        super::commands::retry,
        super::events::stream,
        super::audit::keys,
        super::audit::verify_run,
        super::audit::verify_all,
        super::audit::export,
        super::notifications::list,
        super::notifications::resend,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody, CommandAccepted, RunAccepted, PendingPage, RunPage,
        crate::service::StreamEvent)),
    modifiers(&BearerAuth),
    tags((name = "hitl", description = "the pending inbox, resume, remove, claims, commands"),
         (name = "runs", description = "creating and reading runs"),
         (name = "events", description = "live Server-Sent Events"),
         (name = "audit", description = "the tamper-evident audit trail: keys, verification, export"),
         (name = "notifications", description = "notification deliveries: failed ones listed and re-sent"),
         (name = "probes", description = "liveness, readiness, this document")),
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "this document (OpenAPI 3.1)")))]
pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// The operation ids, one per route, unique.
const OPERATION_IDS: &[(&str, &str, &str)] = &[
    ("get", "/api/hitl/pending", "listPending"),
    ("post", "/api/hitl/resume", "resume"),
    ("post", "/api/hitl/remove", "remove"),
    ("post", "/api/hitl/claim", "claim"),
    ("post", "/api/hitl/unclaim", "unclaim"),
    ("get", "/api/hitl/commands/{commandId}", "showCommand"),
    ("get", "/api/hitl/requests/{requestId}", "showRequest"),
    ("post", "/api/runs", "createRun"),
    ("get", "/api/runs", "listRunsOfThread"),
    ("get", "/api/runs/{runId}", "showRun"),
    ("post", "/api/runs/{runId}/retry", "retryRun"),
    ("get", "/api/events", "streamEvents"),
    ("get", "/api/audit/keys", "auditKeys"),
    ("get", "/api/audit/verify", "verifyAllAudit"),
    ("get", "/api/runs/{runId}/audit/verify", "verifyRunAudit"),
    ("get", "/api/audit", "exportAudit"),
    ("get", "/api/notifications", "listNotifications"),
    (
        "post",
        "/api/notifications/{deliveryId}/resend",
        "resendNotification",
    ),
    ("get", "/healthz", "healthz"),
    ("get", "/readyz", "readyz"),
    ("get", "/metrics", "metrics"),
    ("get", "/openapi.json", "openapi"),
];

/// The document as served: what the handlers' annotations say, completed with what
/// every route of its kind enforces, stated once here rather than on each handler:
/// unique operation ids, the 422 every route answers for an unknown or repeated query
/// parameter, the 500 any route may answer, 408 for a body that stalls, and the
/// response headers (`Location`, `Preference-Applied`, `Idempotent-Replayed`,
/// `WWW-Authenticate`); and what the parsers enforce (see `constraints`).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // A rule that finds nothing is caught by `constraints`' tests, not here.
    let _ = constraints::apply(&mut doc);
    let error = serde_json::json!({ "application/json": {
        "schema": { "$ref": "#/components/schemas/ErrorBody" } } });
    let header = |description: &str| serde_json::json!({ "description": description, "schema": { "type": "string" } });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, op) in operations.iter_mut() {
            if let Some((_, _, id)) = OPERATION_IDS
                .iter()
                .find(|(m, p, _)| m == method && p == path)
            {
                op["operationId"] = Value::from(*id);
            }
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            responses.entry("422").or_insert_with(|| {
                serde_json::json!({ "description": "an unknown or repeated query parameter (named in details.field)",
                                    "content": error.clone() })
            });
            responses.entry("500").or_insert_with(|| {
                serde_json::json!({ "description": "a fault of ours (the cause is logged)", "content": error.clone() })
            });
            if method == "post" {
                responses.entry("408").or_insert_with(|| {
                    serde_json::json!({ "description": "the body stopped arriving", "content": error.clone() })
                });
            }
            if let Some(unauthorized) = responses.get_mut("401") {
                unauthorized["headers"]["WWW-Authenticate"] = header("`Bearer`");
            }
            let is_command = path == "/api/hitl/resume"
                || path == "/api/hitl/remove"
                || path.ends_with("/retry");
            for (status, response) in responses.iter_mut() {
                let status = status.as_str();
                if is_command && matches!(status, "200" | "202" | "409" | "422" | "500") {
                    response["headers"]["Location"] =
                        header("`/api/hitl/commands/{commandId}`: where to poll the command");
                    response["headers"]["Preference-Applied"] =
                        header("`wait=N` when the request asked to wait");
                    response["headers"]["Idempotent-Replayed"] = header(
                        "`true` when an earlier request with the same key recorded the command",
                    );
                }
                if path == "/api/runs" && method == "post" && status == "202" {
                    response["headers"]["Location"] = header("`/api/runs/{runId}`: the new run");
                }
            }
        }
    }
    doc
}
