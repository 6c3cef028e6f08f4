//! The operator console's settings: the address operators open the service at
//! (`HITL_PUBLIC_URL`), which decides whether the session cookie is `Secure` and which
//! origin its forms must come from, and how long a sign-in lasts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The shortest and longest console session.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(60);
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);

/// `HITL_PUBLIC_URL`: an `http://` or `https://` origin (scheme, host, optional port; no
/// path, query or user information), kept lowercased without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// `scheme://host[:port]`, as a browser's `Origin` header spells it.
    pub fn origin(&self) -> &str {
        &self.0
    }

    /// Whether operators reach the service over TLS (the cookie is then `Secure`).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || {
            "must be an http:// or https:// origin such as https://hitl.example.com (no path)"
                .to_owned()
        };
        let lower = s.trim().to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://").ok_or_else(refuse)?;
        if scheme != "http" && scheme != "https" {
            return Err(refuse());
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(refuse());
                }
                host
            }
            _ => authority,
        };
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b);
        if host.is_empty() || !host.bytes().all(allowed) {
            return Err(refuse());
        }
        Ok(Self(format!("{scheme}://{authority}")))
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Refuses a session lifetime outside [`MIN_SESSION_TTL`]..=[`MAX_SESSION_TTL`].
pub fn check_session_ttl(ttl: Duration) -> Result<Duration, String> {
    if (MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err("HITL_CONSOLE_SESSION_TTL must be between 1m and 30d".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_an_origin() {
        let url: PublicUrl = "HTTPS://Hitl.Example.com/".parse().unwrap();
        assert_eq!(url.origin(), "https://hitl.example.com");
        assert!(url.is_https());
        let url: PublicUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            (url.origin(), url.is_https()),
            ("http://127.0.0.1:8080", false)
        );
        assert!("http://[::1]:8080".parse::<PublicUrl>().is_ok());
        for bad in [
            "hitl.example.com",
            "ftp://x",
            "https://",
            "https://x/console",
            "https://user@x",
            "https://x:port",
            "https://x?y",
        ] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_session_lasts_between_a_minute_and_a_month() {
        assert!(check_session_ttl(Duration::from_secs(59)).is_err());
        assert!(check_session_ttl(Duration::from_secs(8 * 3600)).is_ok());
        assert!(check_session_ttl(MAX_SESSION_TTL + Duration::from_secs(1)).is_err());
    }
}
