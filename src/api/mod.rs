//! The HTTP API: the axum router, its shared state, and the error envelope every route
//! answers with (`{"error": {"code", "message", "details"}}`).
//!
//! Every `/api` route sits behind the bearer-token middleware ([`auth::require_token`]),
//! so authentication comes before routing, parsing or any database work; each handler
//! then checks its scope first among its extractors, before the body is read.

mod audit;
pub mod auth;
mod claims;
mod commands;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod listener;
mod notifications;
pub mod openapi;
mod outcome;
mod pending;
mod requests;
mod runs;
mod tracing_layer;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

pub use crate::identity::Authenticator;
use crate::service::Service;
pub use error::ApiError;

/// The default largest request body: 256 KiB.
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The operations; its shutdown token ends waits and event streams.
    pub service: Service,
    /// The accepted bearer tokens.
    pub auth: Arc<Authenticator>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// A body that makes no progress this long is refused (408).
    pub body_timeout: Duration,
    /// The operator console's settings (it is served under `/console/`).
    pub console: crate::console::ConsoleSettings,
}

impl AppState {
    /// State with the default body limit and body timeout.
    pub fn new(service: Service, auth: Authenticator) -> Self {
        Self {
            service,
            auth: Arc::new(auth),
            max_body: DEFAULT_MAX_BODY,
            body_timeout: HttpLimits::default().body_timeout,
            console: crate::console::ConsoleSettings::default(),
        }
    }
}

/// Every (method, path) of the API the router serves. `tests/openapi.rs` checks that this
/// is exactly what `/openapi.json` documents, that each is served, and that other methods
/// are not. The operator console (`/console/…`, and `/` redirecting there) is HTML for
/// people, not part of the API: it is left out of both.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/hitl/pending"),
    ("POST", "/api/hitl/resume"),
    ("POST", "/api/hitl/remove"),
    ("POST", "/api/hitl/claim"),
    ("POST", "/api/hitl/unclaim"),
    ("GET", "/api/hitl/commands/{commandId}"),
    ("GET", "/api/hitl/requests/{requestId}"),
    ("POST", "/api/runs"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/{runId}"),
    ("POST", "/api/runs/{runId}/retry"),
    ("GET", "/api/events"),
    ("GET", "/api/audit/keys"),
    ("GET", "/api/audit/verify"),
    ("GET", "/api/runs/{runId}/audit/verify"),
    ("GET", "/api/audit"),
    ("GET", "/api/notifications"),
    ("POST", "/api/notifications/{deliveryId}/resend"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
];

/// What one connection may take: how long its request head and a stalled body may take,
/// how long its writes may stall, and how many connections are served at once.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A request head must arrive within this once the connection waits for it: a new
    /// connection that sends nothing, a stalled head and an idle keep-alive connection
    /// are all closed after this long (hyper's header read timeout).
    pub header_timeout: Duration,
    /// A body that makes no progress this long is refused with 408.
    pub body_timeout: Duration,
    /// A write that makes no progress this long closes the connection (a client that
    /// stopped reading, such as a stalled event stream).
    pub write_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the accept queue.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Serves the API on `listener` until the service's shutdown token is cancelled, then
/// lets open connections finish (a caller bounds that with its grace period). Each
/// connection is HTTP/1.1 under `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let stop = state.service.shutdown().clone();
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        // A free slot first: beyond the cap, connections wait in the kernel's queue.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait and go on accepting.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io =
            hyper_util::rt::TokioIo::new(listener::WriteTimeout::new(stream, limits.write_timeout));
        // The peer's address travels with each request (the console limits sign-ins per
        // client address).
        let service =
            hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                app.clone(),
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                },
            ));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A failed connection (a client gone, a timeout) concerns only that client.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The query parameters each route accepts; every other route accepts none. A parameter
/// not listed, or given twice, is 422 `invalid_field` naming it, on every route.
pub const QUERY_PARAMETERS: &[(&str, &[&str])] = &[
    (
        "/api/hitl/pending",
        &[
            "limit", "cursor", "threadId", "briefId", "nodeId", "assignee", "group",
        ],
    ),
    ("/api/runs", &["threadId"]),
    ("/api/events", &["runId"]),
    ("/api/audit", &["after", "limit"]),
    ("/api/audit/verify", &["after", "limit"]),
    ("/api/notifications", &["status", "after", "limit"]),
];

/// Refuses a query parameter the matched route does not accept (after authentication,
/// before the handler).
async fn check_query(
    matched: Option<axum::extract::MatchedPath>,
    query: extract::QueryParams,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let full = if request.uri().path().starts_with("/api/") && !path.starts_with("/api") {
        format!("/api{path}")
    } else {
        path.to_owned()
    };
    let allowed = QUERY_PARAMETERS
        .iter()
        .find(|(p, _)| *p == full)
        .map_or(&[][..], |(_, names)| *names);
    match query.allow_only(allowed) {
        Ok(()) => next.run(request).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

/// The console over the same service and credentials as the API.
fn console(state: &AppState) -> crate::console::Console {
    crate::console::Console::new(
        state.service.clone(),
        state.auth.clone(),
        state.console.clone(),
        state.max_body,
        state.body_timeout,
    )
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/hitl/pending", get(pending::list))
        .route("/hitl/resume", post(commands::resume))
        .route("/hitl/remove", post(commands::remove))
        .route("/hitl/claim", post(claims::claim))
        .route("/hitl/unclaim", post(claims::unclaim))
        .route("/hitl/commands/{command_id}", get(commands::show))
        .route("/hitl/requests/{request_id}", get(requests::show))
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{run_id}", get(runs::show))
        .route("/runs/{run_id}/retry", post(commands::retry))
        .route("/events", get(events::stream))
        .route("/audit", get(audit::export))
        .route("/audit/verify", get(audit::verify_all))
        .route("/runs/{run_id}/audit/verify", get(audit::verify_run))
        .route("/notifications", get(notifications::list))
        .route(
            "/notifications/{delivery_id}/resend",
            post(notifications::resend),
        )
        .route_layer(axum::middleware::from_fn(check_query))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(health::metrics))
        // Public keys need no token: anyone holding them can check a signature.
        .route("/api/audit/keys", get(audit::keys))
        .route_layer(axum::middleware::from_fn(check_query))
        .route("/", get(crate::console::to_inbox))
        .merge(crate::console::router(console(&state)))
        .nest("/api", api)
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(tracing_layer::trace_request))
        .with_state(state)
}
