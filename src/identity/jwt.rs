//! JWT bearer tokens from an identity provider: RS256 or ES256, verified against the
//! provider's JWKS (`HITL_JWKS_URL`: an `https://` URL, an `http://` loopback URL, or a
//! file), with the issuer and audience checked and 60 s of clock skew allowed. The claims
//! name the operator (by default `sub`, `name`, `email`, `groups`) and the scopes
//! (`scope`, space-separated, as OAuth 2 spells it). `alg: none` and the symmetric
//! algorithms are refused before any key is looked at, so a token "signed" with the
//! public key as an HMAC secret gets nowhere.
//!
//! Keys are fetched on first use and again when a token names a key id (`kid`) the set
//! lacks — at most once a minute, so tokens with made-up key ids cannot make us hammer
//! the provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{BoundOperator, Principal, Scope, Scopes};

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl JwksSource {
    /// `https://…`, `http://` on a loopback host, or a file path; anything else is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.contains("://") {
            return Ok(Self::File(PathBuf::from(s)));
        }
        let url = reqwest::Url::parse(s).map_err(|e| format!("is not a URL ({e})"))?;
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        match url.scheme() {
            "https" => Ok(Self::Url(s.to_owned())),
            "http" if loopback => Ok(Self::Url(s.to_owned())),
            _ => Err("must be an https:// URL, an http:// loopback URL or a file path".into()),
        }
    }
}

/// The claims a token's operator and scopes are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    pub id: String,
    pub name: String,
    pub email: String,
    pub groups: String,
    pub scope: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            id: "sub".into(),
            name: "name".into(),
            email: "email".into(),
            groups: "groups".into(),
            scope: "scope".into(),
        }
    }
}

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub jwks: JwksSource,
    pub issuer: String,
    pub audience: String,
    pub claims: ClaimNames,
}

/// The clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// The least time between two fetches for an unknown key id.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

struct Keys {
    set: Option<JwkSet>,
    /// When a token's unknown key id last made us fetch.
    refreshed_for_unknown: Option<Instant>,
}

/// Verifies bearer JWTs.
pub struct JwtVerifier {
    settings: JwtSettings,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Arc<Self> {
        crate::tls::install_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            settings,
            client,
            keys: tokio::sync::Mutex::new(Keys {
                set: None,
                refreshed_for_unknown: None,
            }),
        })
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let text = match &self.settings.jwks {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            JwksSource::Url(url) => {
                let response = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("HTTP {}", response.status()));
                }
                response.text().await.map_err(|e| e.to_string())?
            }
        };
        serde_json::from_str(&text).map_err(|e| format!("not a JWK set: {e}"))
    }

    /// The key named `kid` (or the only key, for a token without one), fetching the set
    /// on first use and, for an unknown `kid`, again at most once a minute.
    async fn key(&self, kid: Option<&str>) -> Option<Jwk> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let mut keys = self.keys.lock().await;
        if keys.set.is_none() {
            match self.fetch().await {
                Ok(set) => keys.set = Some(set),
                Err(why) => {
                    tracing::warn!(error = %why, "cannot read the JWKS");
                    return None;
                }
            }
        }
        if let Some(found) = keys.set.as_ref().and_then(find) {
            return Some(found);
        }
        if keys
            .refreshed_for_unknown
            .is_some_and(|at| at.elapsed() < REFRESH_EVERY)
        {
            return None;
        }
        keys.refreshed_for_unknown = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let found = find(&set);
                keys.set = Some(set);
                found
            }
            Err(why) => {
                tracing::warn!(error = %why, "cannot refresh the JWKS");
                None
            }
        }
    }

    /// The principal a valid token names, or `None` (the caller answers 401 alike for
    /// every reason, and logs none of the token).
    pub async fn verify(&self, token: &str) -> Option<Principal> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return None;
        }
        let jwk = self.key(header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .ok()?
            .claims;
        let names = &self.settings.claims;
        let text = |claim: &str| claims.get(claim).and_then(Value::as_str).map(str::to_owned);
        let id = text(&names.id).filter(|id| !id.trim().is_empty() && id.len() <= 256)?;
        let groups: Vec<String> = claims
            .get(&names.groups)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let scopes = text(&names.scope)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(Scope::parse)
            .fold(Scopes::default(), Scopes::with);
        // The audit's principal column holds at most 64 characters.
        let name: String = format!("jwt:{id}").chars().take(64).collect();
        Some(Principal {
            name: Arc::from(name),
            scopes,
            operator: Some(Arc::new(BoundOperator {
                id,
                display_name: text(&names.name),
                email: text(&names.email),
            })),
            groups: Arc::from(groups),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_comes_from_https_a_loopback_http_url_or_a_file() {
        assert!(JwksSource::parse("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(JwksSource::parse("http://127.0.0.1:8081/jwks").is_ok());
        assert!(JwksSource::parse("http://localhost/jwks").is_ok());
        assert_eq!(
            JwksSource::parse("/etc/hitl/jwks.json"),
            Ok(JwksSource::File("/etc/hitl/jwks.json".into()))
        );
        assert!(JwksSource::parse("http://idp.example/jwks").is_err());
        assert!(JwksSource::parse("ftp://idp.example/jwks").is_err());
    }
}
