//! Bearer-token authentication and scopes, checked before anything else on every `/api`
//! route: the middleware finds the principal a token authenticates as (`identity`), and
//! each handler's first extractor checks the scope it needs.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
pub use crate::identity::{Principal, Scope};

/// Middleware on every `/api` route: a known bearer token or 401 (the same answer for
/// a missing, malformed or unknown token). The principal goes into the request's
/// extensions for the scope check.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .map(<[u8]>::to_vec);
    let principal = match token {
        Some(token) => state.auth.authenticate_bearer(&token).await,
        None => None,
    };
    match principal {
        Some(p) => {
            request.extensions_mut().insert(p);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// A scope a handler requires, as a type.
pub trait RequiredScope {
    const SCOPE: Scope;
}

/// Marker: the `operate` scope.
pub struct Operate;
/// Marker: the `submit` scope.
pub struct Submit;
/// Marker: the `audit` scope.
pub struct Audit;
/// Marker: the `supervise` scope.
pub struct Supervise;

impl RequiredScope for Operate {
    const SCOPE: Scope = Scope::Operate;
}
impl RequiredScope for Submit {
    const SCOPE: Scope = Scope::Submit;
}
impl RequiredScope for Audit {
    const SCOPE: Scope = Scope::Audit;
}
impl RequiredScope for Supervise {
    const SCOPE: Scope = Scope::Supervise;
}

/// Extractor: the request's principal, which holds scope `S` (403 otherwise). Put it
/// first among a handler's arguments so the scope is checked before the body is read.
pub struct Authorized<S> {
    /// Who the request authenticated as.
    pub principal: Principal,
    scope: PhantomData<S>,
}

impl<S: RequiredScope, St: Send + Sync> FromRequestParts<St> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        if !principal.scopes.contains(S::SCOPE) {
            return Err(ApiError::Forbidden { scope: S::SCOPE });
        }
        Ok(Self {
            principal,
            scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }
}
