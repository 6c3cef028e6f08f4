//! What the console checks before a form is read: that it comes from the console's own
//! origin (so another site cannot make a signed-in browser post it), and, for sign-in,
//! that the client has attempts left.
//!
//! The sign-in limit is kept in this process's memory, per client address (the TCP
//! peer: no forwarded header is trusted, so behind a reverse proxy every client shares
//! the proxy's budget). Several API processes each keep their own; a restart forgets.
//! That bounds guessing well enough for tokens of 128 bits or more, and needs no table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

/// Whether a state-changing request comes from the console's own pages.
///
/// `Sec-Fetch-Site`, which every current browser sends, must say `same-origin`. Without
/// it, an `Origin` header must name `public_origin` (`HITL_PUBLIC_URL`) or, when that is
/// unset, the request's own `Host`; `Origin: null` (a sandboxed frame, a privacy mode) is
/// refused. A request with neither header is not from a browser, so no other site can
/// have caused it; the session's CSRF token still has to be right.
pub fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site.eq_ignore_ascii_case("same-origin");
    }
    let Some(origin) = header(ORIGIN.as_str()) else {
        return true;
    };
    match public_origin {
        Some(expected) => origin.eq_ignore_ascii_case(expected),
        None => {
            let host = header(HOST.as_str()).unwrap_or("");
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            !host.is_empty() && authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
        }
    }
}

/// Sign-in attempts a client may make at once.
pub const SIGN_IN_BURST: u32 = 10;
/// One more attempt comes back this often (10 a minute, sustained).
pub const SIGN_IN_REFILL: Duration = Duration::from_secs(6);
/// Clients tracked at once; past it, a new client waits until one is forgotten.
const MAX_CLIENTS: usize = 10_000;

/// A token bucket per client address.
#[derive(Debug, Default)]
pub struct SignInLimiter {
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    attempts: f64,
    at: Instant,
}

impl SignInLimiter {
    /// Takes one attempt for `client`, or says how long until it has one.
    pub fn attempt(&self, client: IpAddr) -> Result<(), Duration> {
        self.attempt_at(client, Instant::now())
    }

    fn attempt_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let burst = f64::from(SIGN_IN_BURST);
        let refill = |b: &Bucket| {
            let earned =
                now.saturating_duration_since(b.at).as_secs_f64() / SIGN_IN_REFILL.as_secs_f64();
            (b.attempts + earned).min(burst)
        };
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // A full bucket is the same as no bucket: forget those.
            clients.retain(|_, b| refill(b) < burst);
            if clients.len() >= MAX_CLIENTS {
                return Err(SIGN_IN_REFILL);
            }
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            attempts: burst,
            at: now,
        });
        let attempts = refill(bucket);
        if attempts < 1.0 {
            let missing = (1.0 - attempts) * SIGN_IN_REFILL.as_secs_f64();
            return Err(Duration::from_secs_f64(missing).max(Duration::from_secs(1)));
        }
        *bucket = Bucket {
            attempts: attempts - 1.0,
            at: now,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_form_must_come_from_the_consoles_origin() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(
            &headers(&[host, ("sec-fetch-site", "same-origin")]),
            None
        ));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "cross-site")]),
            None
        ));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "same-site")]),
            None
        ));
        assert!(same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            None
        ));
        assert!(!same_origin(
            &headers(&[host, ("origin", "http://evil.example")]),
            None
        ));
        assert!(!same_origin(&headers(&[host, ("origin", "null")]), None));
        assert!(same_origin(&headers(&[host]), None), "not a browser");
        let public = Some("https://hitl.example.com");
        assert!(same_origin(
            &headers(&[("origin", "https://hitl.example.com")]),
            public
        ));
        assert!(!same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            public
        ));
    }

    #[test]
    fn a_client_gets_ten_attempts_then_one_every_six_seconds() {
        let limiter = SignInLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..SIGN_IN_BURST {
            assert!(limiter.attempt_at(a, t0).is_ok());
        }
        let wait = limiter.attempt_at(a, t0).unwrap_err();
        assert!(
            wait <= SIGN_IN_REFILL && wait >= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.attempt_at(b, t0).is_ok(),
            "another client is not affected"
        );
        assert!(limiter.attempt_at(a, t0 + SIGN_IN_REFILL).is_ok());
        assert!(limiter.attempt_at(a, t0 + SIGN_IN_REFILL).is_err());
    }
}
