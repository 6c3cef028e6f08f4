//! The operator console: server-rendered HTML under `/console/` for the people who answer
//! requests — sign in, see what waits (the inbox, searched and filtered, kept live by
//! the `live` event stream), read a request in full and answer or remove it, see the
//! outcome, read a run and retry it. A front end like the JSON API: it parses forms into the
//! `service` layer's inputs and renders what the service returns; it holds no SQL and no
//! rule of its own (who may answer, what an answer must hold, who won: all the service's).
//!
//! Safety, in one place each: pages come from askama templates (`templates/console/`),
//! which HTML-escape every value; the one script (`assets/console.js`: live updates and
//! keys) is a file of this origin that sets data only as text; every response carries a
//! strict Content-Security-Policy (no inline script or style, no framing) and
//! `nosniff`/`no-referrer`
//! ([`security_headers`]); every state-changing request must come from the console's own
//! origin ([`guard::same_origin`]) and, once signed in, carry the session's CSRF token;
//! sign-in is rate-limited per client address ([`guard::SignInLimiter`]). Sessions are
//! [`session`]'s; the credential behind one is checked again on every request
//! ([`Console::signed`]), so a revoked token or an expired JWT ends it. `/api` never reads
//! the cookie.

// Handlers return early with the page that says why (`Result<_, Response>`): a response
// is 128 bytes, moved once per request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

mod form;
pub mod guard;
mod inbox;
mod live;
mod outcome;
mod pages;
mod request;
mod runs;
mod session;
mod sign_in;
mod views;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::config::console::PublicUrl;
use crate::domain::Operator;
use crate::identity::{Authenticator, Principal, Scope};
use crate::service::{Service, input};
use session::SessionId;

/// The console's settings (`HITL_PUBLIC_URL`, `HITL_CONSOLE_SESSION_TTL`).
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// Where operators open the service; decides the cookie's `Secure` and the origin
    /// forms must come from.
    pub public_url: Option<PublicUrl>,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            public_url: None,
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

impl ConsoleSettings {
    fn secure(&self) -> bool {
        self.public_url.as_ref().is_some_and(PublicUrl::is_https)
    }
}

/// What the console's handlers reach.
#[derive(Clone)]
pub struct Console {
    service: Service,
    auth: Arc<Authenticator>,
    settings: Arc<ConsoleSettings>,
    limiter: Arc<guard::SignInLimiter>,
    max_body: usize,
    body_timeout: Duration,
}

impl Console {
    /// The console over `service`, accepting `auth`'s credentials; forms are read within
    /// `max_body` bytes and `body_timeout`, as the API's bodies are.
    pub fn new(
        service: Service,
        auth: Arc<Authenticator>,
        settings: ConsoleSettings,
        max_body: usize,
        body_timeout: Duration,
    ) -> Self {
        Self {
            service,
            auth,
            settings: Arc::new(settings),
            limiter: Arc::default(),
            max_body,
            body_timeout,
        }
    }

    fn cookie_name(&self) -> &'static str {
        session::cookie_name(self.settings.secure())
    }

    /// The signed-in operator of this request, with the credential checked again now;
    /// otherwise the way to the sign-in page (ending a session whose credential is no
    /// longer accepted).
    async fn signed(&self, headers: &HeaderMap) -> Result<Signed, Response> {
        let Some(id) = SessionId::from_headers(headers, self.cookie_name()) else {
            return Err(to_sign_in(None, None));
        };
        let lookup = id.lookup();
        let stored = match self.service.session(&lookup).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(to_sign_in(Some("expired"), Some(self.clear_cookie()))),
            Err(e) => return Err(pages::service_error(e, None)),
        };
        let principal = match id.open(&stored.sealed_credential) {
            Some(credential) => self.auth.authenticate_bearer(&credential).await,
            None => None,
        };
        let acting = principal
            .filter(|p| p.scopes.contains(Scope::Operate))
            .and_then(|p| {
                let declared = stored.operator.map(|o| o.0);
                let operator = input::acting_operator(&p, declared).ok()?;
                Some((p, operator))
            });
        let Some((principal, operator)) = acting else {
            if let Err(e) = self.service.end_session(&lookup).await {
                return Err(pages::service_error(e, None));
            }
            tracing::info!(principal = %stored.principal, "console session ended: its credential is no longer accepted");
            return Err(to_sign_in(Some("ended"), Some(self.clear_cookie())));
        };
        Ok(Signed {
            principal,
            operator,
            id,
        })
    }

    fn clear_cookie(&self) -> String {
        session::clear_cookie(self.settings.secure())
    }
}

/// A request from a signed-in operator, its credential accepted just now.
pub struct Signed {
    pub principal: Principal,
    /// Who acts: the credential's bound operator, or the one declared at sign-in.
    pub operator: Operator,
    id: SessionId,
}

impl Signed {
    /// The session's CSRF token, for the forms of a page.
    fn csrf(&self) -> String {
        self.id.csrf_token()
    }

    /// Refuses a form that does not carry this session's CSRF token (403).
    fn check_csrf(&self, form: &form::Fields) -> Result<(), Response> {
        match form.get("csrf") {
            Some(token) if self.id.csrf_matches(token) => Ok(()),
            _ => Err(pages::refused(
                StatusCode::FORBIDDEN,
                "Form refused",
                "The form did not carry this session's security token. Reload the page and try again.",
            )),
        }
    }
}

/// The console's routes, all under `/console` (merged into the server's router; an
/// unknown page under it is the console's own 404 page).
pub fn router<S: Clone + Send + Sync + 'static>(console: Console) -> Router<S> {
    Router::new()
        .route("/console", get(to_inbox))
        .route("/console/", get(inbox::show))
        .route("/console/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/requests/{request_id}", get(request::show))
        .route(
            "/console/requests/{request_id}/answer",
            post(request::answer),
        )
        .route(
            "/console/requests/{request_id}/remove",
            post(request::remove),
        )
        .route("/console/requests/{request_id}/claim", post(request::claim))
        .route(
            "/console/requests/{request_id}/unclaim",
            post(request::unclaim),
        )
        .route("/console/commands/{command_id}", get(outcome::show))
        .route("/console/runs", get(runs::find))
        .route("/console/runs/{run_id}", get(runs::show))
        .route("/console/runs/{run_id}/retry", post(runs::retry))
        .route("/console/events", get(live::stream))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/static/console.js", get(script))
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(from_fn_with_state(console.clone(), only_from_own_origin))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// Where a browser lands at `/` and `/console`.
pub async fn to_inbox() -> Redirect {
    Redirect::to("/console/")
}

/// Refuses any request but GET and HEAD that does not come from the console's origin.
async fn only_from_own_origin(
    State(console): State<Console>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let public = console.settings.public_url.as_ref().map(PublicUrl::origin);
    if safe || guard::same_origin(request.headers(), public) {
        return next.run(request).await;
    }
    pages::refused(
        StatusCode::FORBIDDEN,
        "Form refused",
        "The form was not sent from this console's own pages.",
    )
}

/// The Content-Security-Policy of every console response: nothing but this origin's own
/// stylesheet and scripts, forms posting only here, no framing, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every console response; pages are not cached (they show
/// who is signed in and what they may answer).
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    response
}

/// The stylesheet, compiled into the binary.
async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/console.css"),
    )
        .into_response()
}

/// The console's script (live updates, keys), compiled into the binary.
async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/console.js"),
    )
        .into_response()
}

async fn not_found() -> Response {
    pages::refused(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page in the console.",
    )
}

/// 303 to the sign-in page, saying why (`reason` is one of the fixed words the page
/// knows), and clearing the cookie when asked.
fn to_sign_in(reason: Option<&str>, set_cookie: Option<String>) -> Response {
    let location = match reason {
        Some(r) => format!("/console/sign-in?reason={r}"),
        None => "/console/sign-in".to_owned(),
    };
    let mut response = Redirect::to(&location).into_response();
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The client's address: the TCP peer the server put on the request (no forwarded header
/// is trusted), or one shared address when there is none.
fn client_address(connect: Option<ConnectInfo<SocketAddr>>) -> IpAddr {
    connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}
