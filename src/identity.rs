//! Who is asking: the principal a presented credential authenticates as, checked against
//! the configured tokens. Shared by every front end that authenticates (the JSON API's
//! bearer tokens today); the credentials themselves are parsed in `config::tokens`.
//!
//! A presented token is compared with every configured token in constant time (the time
//! depends on the configured tokens' lengths, never on how much of a guess was right),
//! and a token never appears in a log line, an error body or a message.

use std::sync::Arc;

pub use crate::config::tokens::{ApiToken, Scope, Scopes};
use crate::config::{Secret, tokens};

/// Who a request authenticated as.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's name.
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
}

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
        Ok(tokens::configured_tokens(api_key, api_tokens)?.map(Self::new))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tokens::parse_token_list;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa-operate";

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
    fn generated_tokens_are_long_and_different() {
        let (_, a) = Authenticator::generated().unwrap();
        let (_, b) = Authenticator::generated().unwrap();
        assert_eq!(a.expose().len(), 48);
        assert_ne!(a, b);
    }
}
