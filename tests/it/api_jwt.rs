//! JWT bearer tokens from an identity provider, through the real API: a JWKS served on
//! port 0 with keys the test generates (ES256 with rcgen, RS256 with the openssl
//! command); valid tokens work with their scopes and act as the operator their claims
//! name; expired, foreign-issuer, foreign-audience, `alg: none` and HS256-with-the-public-
//! key tokens are 401; an unknown `kid` makes one JWKS refresh, and a second unknown one
//! within the minute makes none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hitl_orchestrator::identity::jwt::{ClaimNames, JwksSource, JwtSettings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::api::{AppOptions, OPERATOR, TestApp, approval};

pub(crate) const ISSUER: &str = "https://idp.example";
pub(crate) const AUDIENCE: &str = "hitl-orchestrator";

struct Jwks {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
}

async fn serve_jwks(State(jwks): State<Arc<Jwks>>) -> axum::Json<Value> {
    jwks.fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "keys": *jwks.keys.lock().unwrap() }))
}

/// An ES256 key: its signing key and its JWK.
pub(crate) fn es256(kid: &str) -> (EncodingKey, Value) {
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                      "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]) });
    (
        EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        jwk,
    )
}

/// An RS256 key made by the openssl command: its signing key and its JWK.
fn rs256(kid: &str, dir: &std::path::Path) -> (EncodingKey, Value) {
    let pem = dir.join(format!("{kid}.pem"));
    let ran = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hex = String::from_utf8(modulus.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwk = json!({ "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                      "n": B64.encode(&n), "e": "AQAB" });
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap();
    (key, jwk)
}

pub(crate) fn claims(sub: &str, scope: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "name": format!("{sub} (idp)"),
            "email": format!("{sub}@example.com"), "groups": ["ops"], "scope": scope,
            "iat": now, "exp": now + 600 })
}

pub(crate) fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn tokens_of_the_identity_provider_are_verified_against_its_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let (es_key, es_jwk) = es256("es-1");
    let (rs_key, rs_jwk) = rs256("rs-1", dir.path());
    let jwks = Arc::new(Jwks {
        keys: Mutex::new(vec![es_jwk.clone(), rs_jwk]),
        fetches: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/jwks", get(serve_jwks))
        .with_state(jwks.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = TestApp::spawn_with(AppOptions {
        jwt: Some(JwtSettings {
            jwks: JwksSource::parse(&url).unwrap(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            claims: ClaimNames::default(),
        }),
        ..AppOptions::default()
    })
    .await;
    let pending = |token: String| {
        let app = &app;
        async move { app.get("/api/hitl/pending", &token).await.status }
    };

    let valid = sign(
        Algorithm::ES256,
        "es-1",
        &es_key,
        &claims("dana", "operate"),
    );
    assert_eq!(pending(valid.clone()).await, 200);
    let rsa = sign(
        Algorithm::RS256,
        "rs-1",
        &rs_key,
        &claims("rui", "operate submit"),
    );
    assert_eq!(pending(rsa).await, 200);
    let no_scope = sign(Algorithm::ES256, "es-1", &es_key, &claims("dana", "submit"));
    assert_eq!(
        pending(no_scope).await,
        403,
        "the scopes come from the `scope` claim"
    );

    // Refused, each with 401.
    let mut expired = claims("dana", "operate");
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let mut foreign_issuer = claims("dana", "operate");
    foreign_issuer["iss"] = json!("https://evil.example");
    let mut foreign_audience = claims("dana", "operate");
    foreign_audience["aud"] = json!("someone-else");
    let unsigned = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims("dana", "operate").to_string())
    );
    let public_as_secret = sign(
        Algorithm::HS256,
        "es-1",
        &EncodingKey::from_secret(es_jwk.to_string().as_bytes()),
        &claims("dana", "operate"),
    );
    for (what, token) in [
        ("expired", sign(Algorithm::ES256, "es-1", &es_key, &expired)),
        (
            "wrong issuer",
            sign(Algorithm::ES256, "es-1", &es_key, &foreign_issuer),
        ),
        (
            "wrong audience",
            sign(Algorithm::ES256, "es-1", &es_key, &foreign_audience),
        ),
        ("alg none", unsigned),
        ("HS256 with the public key", public_as_secret),
        (
            "a signature of another key",
            sign(
                Algorithm::ES256,
                "es-1",
                &es256("x").0,
                &claims("dana", "operate"),
            ),
        ),
    ] {
        assert_eq!(pending(token).await, 401, "{what}");
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        1,
        "the set is fetched once and kept"
    );

    // A rotated key: its unknown kid makes one refresh, then it works.
    let (new_key, new_jwk) = es256("es-2");
    jwks.keys.lock().unwrap().push(new_jwk);
    let rotated = sign(
        Algorithm::ES256,
        "es-2",
        &new_key,
        &claims("dana", "operate"),
    );
    assert_eq!(pending(rotated).await, 200);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    let (ghost_key, _) = es256("es-3");
    let ghost = sign(
        Algorithm::ES256,
        "es-3",
        &ghost_key,
        &claims("dana", "operate"),
    );
    assert_eq!(pending(ghost).await, 401);
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        2,
        "at most one refresh a minute"
    );

    // A JWT is bound to the operator its claims name.
    let (run, request) = app.parked_run().await;
    let mut body = approval(&run, &request, "dana");
    body.as_object_mut().unwrap().remove("operator");
    let accepted = app.post("/api/hitl/resume", &valid, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = app.wait_for_run(&run, "completed").await;
    let resume = crate::common::api::audit_event(&done, "resume");
    assert_eq!(resume["operator"]["id"], "dana");
    assert_eq!(resume["operator"]["email"], "dana@example.com");
    assert_eq!(resume["principal"], "jwt:dana");
    let (run, request) = app.parked_run().await;
    let refused = app
        .post(
            "/api/hitl/resume",
            &valid,
            &approval(&run, &request, "mallory"),
        )
        .await;
    assert_eq!((refused.status, refused.code()), (403, "operator_mismatch"));
    // The static tokens still work beside it.
    assert_eq!(app.get("/api/hitl/pending", OPERATOR).await.status, 200);
    app.stop().await;
}
