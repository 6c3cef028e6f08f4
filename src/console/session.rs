//! Session ids and what is derived from them: the cookie that carries one, the SHA-256
//! the database keys the session by, the key the credential is sealed under, and the
//! CSRF token of the session's forms.
//!
//! The id is 32 random bytes that only the browser keeps. Everything the server stores or
//! sends back is derived from it one way (SHA-256, HMAC-SHA256 with the id as key), so a
//! copy of the sessions table yields neither an id nor a credential, and a CSRF token
//! cannot be computed without the cookie the attacker's page cannot read.

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

/// The cookie's name: with the `__Host-` prefix under https, so that no other host of the
/// domain (nor a plain-http page) can plant one.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-hitl_console"
    } else {
        "hitl_console"
    }
}

/// A session id. `Debug` never shows it.
pub struct SessionId([u8; 32]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    /// A new random id (the operating system's generator).
    pub fn generate() -> Option<Self> {
        let mut id = [0u8; 32];
        SystemRandom::new().fill(&mut id).ok()?;
        Some(Self(id))
    }

    /// The id in the request's cookie named `name`, if it holds a well-formed one.
    pub fn from_headers(headers: &HeaderMap, name: &str) -> Option<Self> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .and_then(|(_, value)| Self::parse(value))
    }

    fn parse(hex: &str) -> Option<Self> {
        Some(Self(decode_hex(hex)?.try_into().ok()?))
    }

    /// The cookie's value.
    pub fn cookie_value(&self) -> String {
        encode_hex(&self.0)
    }

    /// What the database keys the session by: SHA-256 of the id.
    pub fn lookup(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.0).as_ref());
        out
    }

    fn derive(&self, purpose: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), purpose)
    }

    /// The session's CSRF token (a synchronizer token: the same for every form of the
    /// session, unknown to anyone without the cookie).
    pub fn csrf_token(&self) -> String {
        encode_hex(self.derive(CSRF).as_ref())
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let Some(tag) = decode_hex(presented) else {
            return false;
        };
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), CSRF, &tag).is_ok()
    }

    fn sealing_key(&self) -> LessSafeKey {
        let key = self.derive(SEALING);
        // 32 bytes of HMAC-SHA256 output: exactly a ChaCha20-Poly1305 key.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key.as_ref()).expect("a 32-byte key"))
    }

    /// `credential` sealed under this session's key: nonce, ciphertext and tag; the
    /// lookup hash is bound in as associated data, so a sealed value cannot be moved to
    /// another row.
    pub fn seal(&self, credential: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut sealed = credential.to_vec();
        self.sealing_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.lookup()),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The credential `sealed` holds, if it was sealed under this session's key.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .sealing_key()
            .open_in_place(nonce, Aad::from(self.lookup()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

const CSRF: &[u8] = b"hitl console csrf token v1";
const SEALING: &[u8] = b"hitl console credential key v1";

/// A random value for a form's idempotency key (so a form sent twice is one command).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // Without randomness the key is only less unique; the service still checks the body.
    let _ = SystemRandom::new().fill(&mut buf);
    encode_hex(&buf)
}

/// `Set-Cookie` for the session `id`, lasting `max_age` seconds.
pub fn set_cookie(id: &SessionId, secure: bool, max_age: u64) -> String {
    cookie(cookie_name(secure), &id.cookie_value(), secure, max_age)
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    cookie(cookie_name(secure), "", secure, 0)
}

fn cookie(name: &str, value: &str, secure: bool, max_age: u64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_sealed_credential_opens_only_with_its_own_session() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        let sealed = a.seal(b"the-token").unwrap();
        assert_eq!(a.open(&sealed).as_deref(), Some(&b"the-token"[..]));
        assert_eq!(b.open(&sealed), None);
        assert!(!sealed.windows(9).any(|w| w == b"the-token"));
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(a.open(&tampered), None);
        assert_ne!(a.lookup(), b.lookup());
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert!(a.csrf_matches(&a.csrf_token()));
        assert!(!a.csrf_matches(&b.csrf_token()));
        assert!(!a.csrf_matches(""));
        assert!(!a.csrf_matches("zz"));
    }

    #[test]
    fn the_id_is_read_from_its_cookie_only() {
        let id = SessionId::generate().unwrap();
        let mut headers = HeaderMap::new();
        let value = format!("other=1; hitl_console={}; x=y", id.cookie_value());
        headers.insert(COOKIE, HeaderValue::from_str(&value).unwrap());
        let read = SessionId::from_headers(&headers, "hitl_console").unwrap();
        assert_eq!(read.lookup(), id.lookup());
        assert!(SessionId::from_headers(&headers, "__Host-hitl_console").is_none());
        headers.insert(COOKIE, HeaderValue::from_static("hitl_console=abc"));
        assert!(SessionId::from_headers(&headers, "hitl_console").is_none());
        assert!(!format!("{id:?}").contains(&id.cookie_value()));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_https() {
        let id = SessionId::generate().unwrap();
        let plain = set_cookie(&id, false, 60);
        assert!(plain.starts_with("hitl_console="));
        assert!(plain.contains("; HttpOnly; SameSite=Strict; Max-Age=60"));
        assert!(!plain.contains("Secure"));
        let secure = set_cookie(&id, true, 60);
        assert!(secure.starts_with("__Host-hitl_console=") && secure.ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
