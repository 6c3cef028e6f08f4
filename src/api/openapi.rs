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
    #[response(status = 403, description = "the token lacks the scope")]
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
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "hitl-orchestrator", description = "Durable human-in-the-loop orchestration. \
        Bearer tokens with scopes `operate` and `submit`; see docs/API.md."),
    paths(
        super::pending::list,
        super::commands::resume,
        super::commands::remove,
        super::commands::show,
        super::runs::create,
        super::runs::list,
        super::runs::show,
        super::events::stream,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody, CommandAccepted, RunAccepted, PendingPage, RunPage,
        crate::service::StreamEvent)),
    modifiers(&BearerAuth),
    tags((name = "hitl", description = "the pending inbox, resume, remove, commands"),
         (name = "runs", description = "creating and reading runs"),
         (name = "events", description = "live Server-Sent Events"),
         (name = "probes", description = "liveness, readiness, this document")),
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "this document (OpenAPI 3.1)")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
