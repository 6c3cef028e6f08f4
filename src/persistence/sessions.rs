//! The operator console's sign-in sessions (`console_sessions`): rows keyed by the
//! SHA-256 of a session id that only the browser holds, with the credential sealed under a
//! key derived from that id (the console seals and opens it; this module stores bytes).
//! A session ends when its row is deleted or its `expires_at` passes: every read compares
//! it with the database's clock, so nothing has to sweep for the session to end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::PersistenceError;
use crate::domain::Operator;

/// A session to store.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// SHA-256 of the session id.
    pub session_hash: [u8; 32],
    /// The credential, sealed.
    pub sealed_credential: Vec<u8>,
    /// The credential's name.
    pub principal: String,
    /// The operator an act-as credential declared at sign-in.
    pub operator: Option<Operator>,
    /// How long it lasts from now.
    pub lifetime: Duration,
}

/// A stored session that has not expired.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionRecord {
    pub sealed_credential: Vec<u8>,
    pub principal: String,
    pub operator: Option<sqlx::types::Json<Operator>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Stores `new`, and deletes the sessions that have expired (each sign-in clears up after
/// the ones before it, through the index on `expires_at`, so no job is needed).
pub async fn insert_session(
    conn: &mut sqlx::PgConnection,
    new: &NewSession,
) -> Result<SessionRecord, PersistenceError> {
    crate::db::query("delete from console_sessions where expires_at <= now()")
        .execute(&mut *conn)
        .await?;
    let lifetime_ms = i64::try_from(new.lifetime.as_millis()).unwrap_or(i64::MAX);
    let record = crate::db::query_as::<SessionRecord>(
        "insert into console_sessions (session_hash, sealed_credential, principal, operator, expires_at) \
         values ($1, $2, $3, $4, now() + make_interval(secs => $5::double precision / 1000)) \
         returning sealed_credential, principal, operator, created_at, expires_at",
    )
    .bind(&new.session_hash[..])
    .bind(&new.sealed_credential)
    .bind(&new.principal)
    .bind(new.operator.as_ref().map(sqlx::types::Json))
    .bind(lifetime_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(record)
}

/// The session whose id hashes to `session_hash`, unless it has ended.
pub async fn find_session(
    executor: impl PgExecutor<'_>,
    session_hash: &[u8; 32],
) -> Result<Option<SessionRecord>, PersistenceError> {
    Ok(crate::db::query_as::<SessionRecord>(
        "select sealed_credential, principal, operator, created_at, expires_at \
         from console_sessions where session_hash = $1 and expires_at > now()",
    )
    .bind(&session_hash[..])
    .fetch_optional(executor)
    .await?)
}

/// Ends the session whose id hashes to `session_hash` (nothing when there is none).
pub async fn delete_session(
    executor: impl PgExecutor<'_>,
    session_hash: &[u8; 32],
) -> Result<(), PersistenceError> {
    crate::db::query("delete from console_sessions where session_hash = $1")
        .bind(&session_hash[..])
        .execute(executor)
        .await?;
    Ok(())
}
