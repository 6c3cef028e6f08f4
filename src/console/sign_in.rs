//! Signing in and out. A sign-in checks the token as `/api` would (`Authenticator`), needs
//! the `operate` scope, settles who acts (`input::acting_operator`: an act-as token must
//! name an operator, a bound one may not name another), and starts a new session with a
//! new id, ending the one the browser had. Attempts are limited per client address.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::{ExtensionRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{self, Chrome, SignInPage};
use super::session::{self, SessionId};
use super::{Console, client_address, form};
use crate::identity::Scope;
use crate::service::{NewSession, input};

/// Why the sign-in page is shown (`?reason=`): only these words, each with a fixed text.
#[derive(Deserialize)]
pub struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

fn notice(reason: Option<&str>) -> Option<&'static str> {
    match reason? {
        "ended" => Some(
            "Your session ended: the credential you signed in with is no longer accepted (revoked, expired or changed).",
        ),
        "expired" => Some("Your session has expired. Sign in again."),
        "signed-out" => Some("You are signed out."),
        _ => None,
    }
}

/// `GET /console/sign-in`.
pub async fn form(query: Result<Query<Reason>, QueryRejection>) -> Response {
    let reason = query.as_ref().ok().and_then(|q| q.reason.as_deref());
    page(StatusCode::OK, notice(reason), None, "", "")
}

fn page(
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    operator_id: &str,
    operator_name: &str,
) -> Response {
    pages::render(
        status,
        &SignInPage {
            chrome: Chrome::default(),
            notice,
            error,
            operator_id: operator_id.to_owned(),
            operator_name: operator_name.to_owned(),
        },
    )
}

/// `POST /console/sign-in` (fields `token`, and `operator_id`, `operator_name` for an
/// act-as token).
pub async fn submit(
    State(console): State<Console>,
    connect: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(wait) = console.limiter.attempt(client_address(connect.ok())) {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(format!(
                "Too many sign-in attempts from your address. Try again in {} s.",
                wait.as_secs().max(1)
            )),
            "",
            "",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let fields = match form::read(&headers, body, console.max_body, console.body_timeout).await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let operator_id = fields.text("operator_id").unwrap_or_default();
    let operator_name = fields.text("operator_name").unwrap_or_default();
    let again = |status, error: &str| {
        page(
            status,
            None,
            Some(error.to_owned()),
            &operator_id,
            &operator_name,
        )
    };
    let token = fields.get("token").map(str::trim).unwrap_or("");
    let principal = match console.auth.authenticate_bearer(token.as_bytes()).await {
        Some(p) if !token.is_empty() => p,
        _ => return again(StatusCode::UNAUTHORIZED, "This token is not accepted."),
    };
    if !principal.scopes.contains(Scope::Operate) {
        return again(
            StatusCode::FORBIDDEN,
            "This token lacks the operate scope, which the console needs.",
        );
    }
    let declared = if principal.operator.is_none() {
        if operator_id.is_empty() || operator_name.is_empty() {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                "This token is shared (act-as): enter your operator id and your name.",
            );
        }
        match input::operator(&operator_id, Some(&operator_name), None) {
            Ok(o) => Some(o),
            Err(e) => return again(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        }
    } else {
        let given = match operator_id.is_empty() {
            true => None,
            false => match input::operator(&operator_id, None, None) {
                Ok(o) => Some(o),
                Err(e) => return again(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
            },
        };
        if let Err(e) = input::acting_operator(&principal, given) {
            return again(StatusCode::FORBIDDEN, &e.to_string());
        }
        None
    };
    let sealed = SessionId::generate().and_then(|id| {
        let sealed = id.seal(token.as_bytes())?;
        Some((id, sealed))
    });
    let Some((id, sealed)) = sealed else {
        tracing::error!("no randomness for a console session: none started");
        return pages::refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The service could not start a session.",
        );
    };
    // A new id at every sign-in: the session the browser had (if any) ends.
    if let Some(old) = SessionId::from_headers(&headers, console.cookie_name())
        && let Err(e) = console.service.end_session(&old.lookup()).await
    {
        return pages::service_error(e, None);
    }
    let ttl = console.settings.session_ttl;
    let new = NewSession {
        session_hash: id.lookup(),
        sealed_credential: sealed,
        principal: principal.name.to_string(),
        operator: declared,
        lifetime: ttl,
    };
    if let Err(e) = console.service.open_session(new).await {
        return pages::service_error(e, None);
    }
    tracing::info!(principal = %principal.name, "console sign-in");
    let mut response = Redirect::to("/console/").into_response();
    let cookie = session::set_cookie(&id, console.settings.secure(), ttl.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /console/sign-out`: ends the session (its CSRF token required) and clears the
/// cookie.
pub async fn sign_out(State(console): State<Console>, headers: HeaderMap, body: Body) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let fields = match form::read(&headers, body, console.max_body, console.body_timeout).await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    if let Err(refused) = signed.check_csrf(&fields) {
        return refused;
    }
    if let Err(e) = console.service.end_session(&signed.id.lookup()).await {
        return pages::service_error(e, Some(&signed));
    }
    super::to_sign_in(Some("signed-out"), Some(console.clear_cookie()))
}
