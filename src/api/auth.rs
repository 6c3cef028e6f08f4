//! Bearer-token authentication and scopes, checked before anything else on every `/api`
//! route.
//!
//! Tokens come from `API_KEY` (one token with every scope) and `API_TOKENS`
//! (`name:token:scope,scope` entries separated by `;`). A presented token is compared
//! with every configured token in constant time (the time depends on the configured
//! tokens' lengths, never on how much of a guess was right), and a token never appears
//! in a log line, an error body or a message about the settings: refusals name entries
//! by position only.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::config::{ApiKey, Secret};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// List pending requests, resume, remove, read runs and commands.
    Operate,
    /// Create runs.
    Submit,
}

impl Scope {
    /// Every scope, as `API_TOKENS` spells them.
    pub const ALL: [Scope; 2] = [Scope::Operate, Scope::Submit];

    /// The scope's name in settings and error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Operate => "operate",
            Scope::Submit => "submit",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    operate: bool,
    submit: bool,
}

impl Scopes {
    /// Every scope (the `API_KEY` token, a generated token).
    pub const ALL: Scopes = Scopes {
        operate: true,
        submit: true,
    };

    /// These scopes plus `scope`.
    pub const fn with(mut self, scope: Scope) -> Self {
        match scope {
            Scope::Operate => self.operate = true,
            Scope::Submit => self.submit = true,
        }
        self
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        match scope {
            Scope::Operate => self.operate,
            Scope::Submit => self.submit,
        }
    }
}

/// One configured token.
#[derive(Clone, Debug)]
pub struct ApiToken {
    /// A name for logs and audits (never the token).
    pub name: String,
    /// The token itself.
    pub secret: Secret,
    /// What it may do.
    pub scopes: Scopes,
}

/// Who a request authenticated as; handlers read it from the request's extensions.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's name.
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
}

/// Name of the token `API_KEY` configures.
pub const API_KEY_TOKEN_NAME: &str = "api-key";

/// The configured tokens.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: Vec<ApiToken>,
}

impl Authenticator {
    /// Accepts exactly `tokens`.
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self { tokens }
    }

    /// The tokens of `API_KEY` and `API_TOKENS`, or `None` when neither is set. Errors
    /// name the setting's problem without quoting any value.
    pub fn from_settings(
        api_key: Option<&Secret>,
        api_tokens: Option<&Secret>,
    ) -> Result<Option<Self>, String> {
        let mut tokens = Vec::new();
        if let Some(key) = api_key {
            let key: ApiKey = key.expose().parse()?;
            tokens.push(ApiToken {
                name: API_KEY_TOKEN_NAME.to_owned(),
                secret: key.0,
                scopes: Scopes::ALL,
            });
        }
        if let Some(list) = api_tokens {
            for token in parse_token_list(list.expose())? {
                if tokens.iter().any(|t| t.secret == token.secret) {
                    return Err("an entry of API_TOKENS repeats the API_KEY token".into());
                }
                if tokens.iter().any(|t| t.name == token.name) {
                    return Err(format!(
                        "the name `{API_KEY_TOKEN_NAME}` is reserved for API_KEY"
                    ));
                }
                tokens.push(token);
            }
        }
        Ok((!tokens.is_empty()).then(|| Self::new(tokens)))
    }

    /// An authenticator with one freshly generated all-scopes token, for a local run
    /// started without any token configured; returns the token so it can be shown once.
    pub fn generated() -> std::io::Result<(Self, Secret)> {
        use std::io::Read;
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = Secret::new(token);
        let auth = Self::new(vec![ApiToken {
            name: "generated".to_owned(),
            secret: secret.clone(),
            scopes: Scopes::ALL,
        }]);
        Ok((auth, secret))
    }

    /// The principal `presented` authenticates as. Every configured token is compared,
    /// each in constant time, whatever matched first.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Principal> {
        let mut found: Option<&ApiToken> = None;
        for token in &self.tokens {
            let equal = constant_time_eq(presented, token.secret.expose().as_bytes());
            if equal && found.is_none() {
                found = Some(token);
            }
        }
        found.map(|t| Principal {
            name: Arc::from(t.name.as_str()),
            scopes: t.scopes,
        })
    }
}

/// Compares without an early exit: the loop runs over all of `expected` and folds every
/// difference, so the time says nothing about where `presented` first differs.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= presented.get(i).copied().unwrap_or(0) ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// Parses `API_TOKENS`: `name:token:scope,scope` entries separated by `;` (an empty
/// entry, e.g. after a trailing `;`, is skipped). Names are 1 to 64 letters, digits,
/// `_`, `.` or `-`, and unique; tokens follow the `API_KEY` rules and are unique.
pub fn parse_token_list(s: &str) -> Result<Vec<ApiToken>, String> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, entry) in s.split(';').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let n = i + 1;
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(token), Some(scopes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "entry {n} is not of the form name:token:scope,scope"
            ));
        };
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(format!(
                "entry {n}: the name must be 1 to 64 letters, digits, `_`, `.` or `-`"
            ));
        }
        let secret = token
            .parse::<ApiKey>()
            .map_err(|why| format!("entry {n}: the token {why}"))?
            .0;
        let mut set = Scopes::default();
        for scope in scopes.split(',').map(str::trim) {
            let scope = Scope::parse(scope).ok_or_else(|| {
                format!("entry {n}: scopes are a comma-separated list of `operate` and `submit`")
            })?;
            set = set.with(scope);
        }
        if let Some(j) = tokens.iter().position(|t| t.name == name) {
            return Err(format!("entries {} and {n} have the same name", j + 1));
        }
        if let Some(j) = tokens.iter().position(|t| t.secret == secret) {
            return Err(format!("entries {} and {n} have the same token", j + 1));
        }
        tokens.push(ApiToken {
            name: name.to_owned(),
            secret,
            scopes: set,
        });
    }
    if tokens.is_empty() {
        return Err("lists no token".into());
    }
    Ok(tokens)
}

/// Middleware on every `/api` route: a known bearer token or 401 (the same answer for
/// a missing, malformed or unknown token). The principal goes into the request's
/// extensions for the scope check.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .and_then(|token| state.auth.authenticate(token));
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

impl RequiredScope for Operate {
    const SCOPE: Scope = Scope::Operate;
}
impl RequiredScope for Submit {
    const SCOPE: Scope = Scope::Submit;
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

    const A: &str = "aaaaaaaaaaaaaaaaaaaa-operate";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb-submit";

    #[test]
    fn a_token_list_gives_each_token_its_scopes() {
        let list = parse_token_list(&format!("ops:{A}:operate; ci:{B}:submit,operate;")).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "ops");
        assert!(list[0].scopes.contains(Scope::Operate));
        assert!(!list[0].scopes.contains(Scope::Submit));
        assert_eq!(list[1].scopes, Scopes::ALL);
    }

    #[test]
    fn token_list_errors_never_quote_a_token() {
        for bad in [
            format!("ops:{A}"),
            format!("ops:{A}:admin"),
            format!("ops:operate:{A}"),
            format!("{A}:{B}:everything"),
            format!("ops:{A}:operate;ops:{B}:submit"),
            format!("ops:{A}:operate;ci:{A}:submit"),
            "ops:short:operate".to_owned(),
            String::new(),
        ] {
            let why = parse_token_list(&bad).unwrap_err();
            assert!(!why.contains(A) && !why.contains(B), "{why}");
            assert!(!why.contains("aaaa") && !why.contains("bbbb"), "{why}");
        }
    }

    #[test]
    fn only_a_configured_token_authenticates() {
        let auth = Authenticator::new(parse_token_list(&format!("ops:{A}:operate")).unwrap());
        assert_eq!(&*auth.authenticate(A.as_bytes()).unwrap().name, "ops");
        assert!(auth.authenticate(b"aaaaaaaaaaaaaaaaaaaa-operat").is_none());
        assert!(
            auth.authenticate(b"aaaaaaaaaaaaaaaaaaaa-operatee")
                .is_none()
        );
        assert!(auth.authenticate(b"").is_none());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn generated_tokens_are_long_and_different() {
        let (_, a) = Authenticator::generated().unwrap();
        let (_, b) = Authenticator::generated().unwrap();
        assert_eq!(a.expose().len(), 48);
        assert_ne!(a, b);
    }
}
