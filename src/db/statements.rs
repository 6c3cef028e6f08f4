//! How this process sends SQL, so that it is correct behind a transaction pooler
//! (`HITL_DB_POOLER=transaction`) as well as straight to PostgreSQL.
//!
//! A transaction pooler (PgBouncer `pool_mode = transaction`) gives a client a server
//! connection for one transaction and takes it back when the server reports it idle.
//! sqlx prepares a statement in one round trip (Parse/Describe/Sync) and executes it in
//! the next (Bind/Execute/Sync); outside a transaction the server is idle between the two,
//! so the pooler may run the second on another server connection, where another client's
//! unnamed statement is (measured with PgBouncer 1.18: wrong answers, not errors). And a
//! named statement outlives the transaction on a server connection other clients share.
//! So behind such a pooler:
//!
//! - every statement is unnamed ([`query`], [`query_as`], [`query_scalar`] and
//!   [`unnamed_if_pooled`] set it; straight to PostgreSQL they stay named and cached);
//! - a statement outside the caller's transaction runs in one of its own: [`session`]
//!   hands out a connection that is a transaction behind a transaction pooler and a plain
//!   pooled connection otherwise, and [`Session::close`] commits it.
//!
//! Whether statements are unnamed is a property of the process, set once at start
//! ([`use_transaction_pooling`]) from `HITL_DB_POOLER`.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction};

static TRANSACTION_POOLED: AtomicBool = AtomicBool::new(false);

/// From now on this process's statements are unnamed and every statement outside a
/// caller's transaction gets one of its own. Called at start with
/// `HITL_DB_POOLER=transaction`; there is no way back, since pools made before may
/// already be in use.
pub fn use_transaction_pooling() {
    TRANSACTION_POOLED.store(true, Ordering::Relaxed);
}

/// Whether [`use_transaction_pooling`] was called.
pub fn transaction_pooled() -> bool {
    TRANSACTION_POOLED.load(Ordering::Relaxed)
}

/// `sqlx::query`, unnamed behind a transaction pooler.
pub fn query<'a>(sql: impl SqlSafeStr) -> Query<'a, Postgres, PgArguments> {
    sqlx::query(sql).persistent(!transaction_pooled())
}

/// `sqlx::query_as`, unnamed behind a transaction pooler.
pub fn query_as<'a, O>(sql: impl SqlSafeStr) -> QueryAs<'a, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(!transaction_pooled())
}

/// `sqlx::query_scalar`, unnamed behind a transaction pooler.
pub fn query_scalar<'a, O>(sql: impl SqlSafeStr) -> QueryScalar<'a, Postgres, O, PgArguments>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(!transaction_pooled())
}

/// A query built elsewhere (a `QueryBuilder`'s), unnamed behind a transaction pooler.
pub fn unnamed_if_pooled<'a>(
    query: Query<'a, Postgres, PgArguments>,
) -> Query<'a, Postgres, PgArguments> {
    query.persistent(!transaction_pooled())
}

/// A connection for statements that are not part of a caller's transaction: its own
/// transaction behind a transaction pooler, a plain pooled connection otherwise. Dropped
/// without [`Session::close`], that transaction rolls back — so a writer closes it.
pub struct Session(Held);

enum Held {
    Connection(PoolConnection<Postgres>),
    Transaction(Transaction<'static, Postgres>),
}

/// A [`Session`] from `pool`.
pub async fn session(pool: &PgPool) -> Result<Session, sqlx::Error> {
    Ok(Session(if transaction_pooled() {
        Held::Transaction(pool.begin().await?)
    } else {
        Held::Connection(pool.acquire().await?)
    }))
}

impl Session {
    /// Ends the session: commits its transaction, if it has one.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        match self.0 {
            Held::Connection(_) => Ok(()),
            Held::Transaction(tx) => tx.commit().await,
        }
    }
}

impl Deref for Session {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.0 {
            Held::Connection(c) => c,
            Held::Transaction(t) => t,
        }
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.0 {
            Held::Connection(c) => c,
            Held::Transaction(t) => t,
        }
    }
}
