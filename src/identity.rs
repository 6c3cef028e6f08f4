//! Who is asking: the principal a presented credential authenticates as, checked against
//! the configured tokens — `API_KEY` / `API_TOKENS` (act-as principals: the body names the
//! operator) and the hashed entries of `HITL_TOKENS_FILE` (each bound to an operator, or
//! act-as for a service principal). Shared by every front end that authenticates; the
//! settings themselves are parsed in `config::tokens`.
//!
//! A presented token is compared with every configured token in constant time (the time
//! depends on the configured tokens' lengths, never on how much of a guess was right), and
//! with the file's hashes by its SHA-256; a token or hash never appears in a log line, an
//! error body or a message. The file can be reloaded while the service runs (SIGHUP); a
//! file that does not parse leaves the tokens in force as they were.

pub mod jwt;

use std::path::Path;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

pub use crate::config::tokens::{ApiToken, BoundOperator, HashedToken, Scope, Scopes};
use crate::config::{Secret, tokens};

/// Who a request authenticated as.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The credential's name (recorded in the audit beside the operator).
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
    /// The operator it is bound to; `None`: it acts as the operator a body names.
    pub operator: Option<Arc<BoundOperator>>,
    /// The bound operator's groups.
    pub groups: Arc<[String]>,
}

impl Principal {
    /// Who this principal's approval counts as: its operator when it is bound to one
    /// (however many credentials that operator holds), itself when it acts as the
    /// operators bodies name (however many it names: one credential is one approver).
    pub fn approver(&self) -> String {
        match &self.operator {
            Some(operator) => format!("operator:{}", operator.id),
            None => format!("principal:{}", self.name),
        }
    }
}

/// The configured credentials; clones share them, so a reload reaches every holder.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: Arc<Vec<ApiToken>>,
    hashed: Arc<RwLock<Arc<Vec<HashedToken>>>>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
}

impl Authenticator {
    /// Accepts exactly `tokens`.
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            hashed: Arc::default(),
            jwt: None,
        }
    }

    /// These credentials plus JWT bearer tokens checked by `verifier`.
    pub fn with_jwt(mut self, verifier: Arc<jwt::JwtVerifier>) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// The principal a bearer token authenticates as: a configured or listed token, or
    /// (when one is configured) a valid JWT.
    pub async fn authenticate_bearer(&self, presented: &[u8]) -> Option<Principal> {
        if let Some(principal) = self.authenticate(presented) {
            return Some(principal);
        }
        let verifier = self.jwt.as_ref()?;
        let token = std::str::from_utf8(presented).ok()?;
        if token.matches('.').count() != 2 {
            return None;
        }
        verifier.verify(token).await
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
        let secret = Secret::new(random_token()?);
        let auth = Self::new(vec![ApiToken {
            name: "generated".to_owned(),
            secret: secret.clone(),
            scopes: Scopes::ALL,
        }]);
        Ok((auth, secret))
    }

    /// Reads the tokens file at `path` and puts its entries in force (replacing the
    /// file's previous ones); returns how many there are. On an error nothing changes.
    pub fn load_tokens_file(&self, path: &Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let entries =
            tokens::parse_tokens_file(&text).map_err(|why| format!("{}: {why}", path.display()))?;
        let count = entries.len();
        *self.hashed.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(entries);
        Ok(count)
    }

    /// The principal `presented` authenticates as. Every configured token is compared,
    /// each in constant time, whatever matched first; then the file's hashes.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Principal> {
        let mut found: Option<&ApiToken> = None;
        for token in self.tokens.iter() {
            let equal = constant_time_eq(presented, token.secret.expose().as_bytes());
            if equal && found.is_none() {
                found = Some(token);
            }
        }
        if let Some(t) = found {
            return Some(Principal {
                name: Arc::from(t.name.as_str()),
                scopes: t.scopes,
                operator: None,
                groups: Arc::from(Vec::new()),
            });
        }
        if presented.len() < tokens::MIN_HASHED_TOKEN_LEN {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let hashed = self
            .hashed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut found: Option<&HashedToken> = None;
        for entry in hashed.iter() {
            if constant_time_eq(&digest, &entry.sha256) && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|t| Principal {
            name: Arc::from(t.name.as_str()),
            scopes: t.scopes,
            operator: t.operator.clone().map(Arc::new),
            groups: Arc::from(t.groups.clone()),
        })
    }
}

/// A new random token (64 hex digits) and its tokens-file entry's `sha256`.
pub fn new_token() -> std::io::Result<(String, String)> {
    let token = random_token()?;
    let digest = Sha256::digest(token.as_bytes());
    Ok((token, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// A new token and its `[[token]]` entry (TOML) for the tokens file: bound to
/// `operator` when given, else `actAs = true`. The entry is checked by the file's own
/// parser before it is returned.
pub fn token_entry(
    name: &str,
    scopes: &[String],
    operator: Option<&str>,
    operator_name: Option<&str>,
) -> Result<(String, String), String> {
    let (token, sha256) = new_token().map_err(|e| format!("no randomness: {e}"))?;
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let scopes: Vec<String> = scopes.iter().map(|s| quote(s.trim())).collect();
    let mut entry = format!(
        "[[token]]\nname = {}\nsha256 = \"{sha256}\"\nscopes = [{}]\n",
        quote(name),
        scopes.join(", ")
    );
    match operator {
        Some(id) => {
            let name = operator_name
                .map(|n| format!(", displayName = {}", quote(n)))
                .unwrap_or_default();
            entry.push_str(&format!("operator = {{ id = {}{name} }}\n", quote(id)));
        }
        None => entry.push_str("actAs = true\n"),
    }
    tokens::parse_tokens_file(&entry).map_err(|why| why.replacen("line ", "entry line ", 1))?;
    Ok((token, entry))
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn a_file_token_authenticates_by_its_hash_and_a_reload_that_fails_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("hitl-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let (token, hash) = new_token().unwrap();
        let entry = |name: &str, hash: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [\"operate\"]\noperator = {{ id = \"alice\" }}\n"
            )
        };
        std::fs::write(&path, entry("alice", &hash)).unwrap();
        let auth = Authenticator::new(vec![]);
        assert_eq!(auth.load_tokens_file(&path).unwrap(), 1);
        let p = auth.authenticate(token.as_bytes()).unwrap();
        assert_eq!(
            (&*p.name, p.operator.as_ref().unwrap().id.as_str()),
            ("alice", "alice")
        );
        assert!(auth.authenticate(&token.as_bytes()[..31]).is_none());
        std::fs::write(&path, "[[token]]\nname = 1\n").unwrap();
        assert!(auth.load_tokens_file(&path).unwrap_err().contains("line 2"));
        assert!(
            auth.authenticate(token.as_bytes()).is_some(),
            "the old file stays in force"
        );
        std::fs::write(&path, entry("bob", &new_token().unwrap().1)).unwrap();
        auth.load_tokens_file(&path).unwrap();
        assert!(auth.authenticate(token.as_bytes()).is_none(), "revoked");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
