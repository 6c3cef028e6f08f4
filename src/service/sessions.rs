//! Sign-in sessions of the operator console, as stored: open one, find one, end one. The
//! console owns the session id, its hash and the sealing of the credential (none of which
//! the service or the database ever see in clear); this keeps the rows.

use super::{Service, ServiceError};
use crate::persistence::{self, NewSession, SessionRecord};

impl Service {
    /// Stores a new session (and deletes the ones that have expired).
    pub async fn open_session(&self, new: NewSession) -> Result<SessionRecord, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let session = persistence::insert_session(&mut conn, &new).await?;
        conn.close().await?;
        Ok(session)
    }

    /// The session whose id hashes to `session_hash`, unless it has ended.
    pub async fn session(
        &self,
        session_hash: &[u8; 32],
    ) -> Result<Option<SessionRecord>, ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        let session = persistence::find_session(&mut *conn, session_hash).await?;
        conn.close().await?;
        Ok(session)
    }

    /// Ends a session (nothing when it has ended already).
    pub async fn end_session(&self, session_hash: &[u8; 32]) -> Result<(), ServiceError> {
        let mut conn = crate::db::session(&self.pool).await?;
        persistence::delete_session(&mut *conn, session_hash).await?;
        conn.close().await?;
        Ok(())
    }
}
