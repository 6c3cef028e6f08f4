//! The database: connection pool, migrations (the job queue's and ours), the readiness
//! check, and the embedded PostgreSQL used when no `DATABASE_URL` is given. Behind a
//! connection pooler (`HITL_DB_POOLER`) what needs a session of its own — LISTEN and the
//! migrations' advisory lock — may use a second, direct pool (`HITL_DIRECT_DATABASE_URL`).

pub mod embedded;
mod statements;

pub use statements::{
    Session, query, query_as, query_scalar, session, transaction_pooled, unnamed_if_pooled,
    use_transaction_pooling,
};

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::{CommonArgs, DbPooler};
use embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};

/// The orchestrator's own migrations (`migrations/`), recorded in `public._sqlx_migrations`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors of this layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job queue migration failed: {0}")]
    QueueMigrate(String),
    #[error("the database was not reachable within {timeout:?}: {last_error}")]
    Unreachable {
        timeout: Duration,
        last_error: String,
    },
    #[error("the embedded PostgreSQL task panicked")]
    Join(#[from] tokio::task::JoinError),
}

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Largest number of connections.
    pub max_connections: u32,
    /// How long `acquire` waits (including connecting) before it fails.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_millis(1500),
        }
    }
}

/// Builds a pool without connecting: the first use connects, and every acquire is
/// bounded by `acquire_timeout`, so a database outage turns into quick errors, not hangs.
pub fn lazy_pool(url: &str, settings: PoolSettings) -> Result<PgPool, sqlx::Error> {
    lazy_pool_behind(url, settings, DbPooler::None)
}

/// [`lazy_pool`] for a URL with `pooler` in front of PostgreSQL.
pub fn lazy_pool_behind(
    url: &str,
    settings: PoolSettings,
    pooler: DbPooler,
) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?.application_name("hitl-orchestrator");
    if pooler == DbPooler::Transaction {
        use_transaction_pooling();
    }
    if pooler != DbPooler::None {
        // sqlx sends extra_float_digits at start; PgBouncer refuses a startup parameter it
        // does not track unless told to ignore it. Our floats are read in binary, where
        // the setting has no effect, so it is left out rather than configured there.
        options = options.extra_float_digits(None);
    }
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options))
}

/// Applies the job queue's migrations, then ours. Each set takes PostgreSQL's advisory
/// migration lock, so processes starting at once apply each migration exactly once;
/// re-running is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .map_err(|e| DbError::QueueMigrate(e.to_string()))?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Why the service is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("database unreachable: {0}")]
    Database(String),
    #[error("migrations not applied: {0}")]
    Migrations(String),
}

/// Readiness: the database answers and every migration this binary knows is applied.
pub async fn check_ready(pool: &PgPool) -> Result<(), NotReady> {
    let mut conn = session(pool)
        .await
        .map_err(|e| NotReady::Database(e.to_string()))?;
    let expected = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let expected_queue = apalis_postgres::PostgresStorage::migrations()
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let (ours, queue): (Option<i64>, Option<i64>) = query_as(
        "select (select max(version) from public._sqlx_migrations where success), \
                (select max(version) from apalis._sqlx_migrations where success)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| NotReady::Migrations(e.to_string()))?;
    conn.close()
        .await
        .map_err(|e| NotReady::Database(e.to_string()))?;
    if ours.unwrap_or(0) < expected {
        return Err(NotReady::Migrations(format!(
            "orchestrator schema at {}, this binary needs {expected}",
            ours.unwrap_or(0)
        )));
    }
    if queue.unwrap_or(0) < expected_queue {
        return Err(NotReady::Migrations(format!(
            "job queue schema at {}, this binary needs {expected_queue}",
            queue.unwrap_or(0)
        )));
    }
    Ok(())
}

/// The database a process runs against: a pool, a direct pool when the first goes
/// through a pooler and a direct URL was given, and the embedded server when this
/// process started or attached to one.
pub struct Database {
    /// The connection pool.
    pub pool: PgPool,
    direct: Option<PgPool>,
    embedded: Option<EmbeddedPostgres>,
}

/// Connections the direct pool opens at most: one LISTEN each for the worker and the
/// event hub, one for migrations, one spare.
const DIRECT_CONNECTIONS: u32 = 4;

impl Database {
    /// Connects to `DATABASE_URL`, or starts the embedded PostgreSQL when it is unset;
    /// waits (up to the start-up timeout) for the server, then applies migrations.
    pub async fn open(common: &CommonArgs) -> Result<Self, DbError> {
        let settings = PoolSettings {
            max_connections: common.db_max_connections,
            acquire_timeout: common.db_acquire_timeout.0,
        };
        let (url, embedded) = match &common.database_url {
            Some(url) => (url.expose().to_owned(), None),
            None => {
                let mut opts = EmbeddedOptions::new(common.data_dir.clone());
                opts.binaries.explicit = common.pg_bin_dir.clone();
                let pg =
                    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
                let admin = pg.url_for("postgres");
                ensure_database(&admin, embedded::DATABASE).await?;
                (pg.database_url(), Some(pg))
            }
        };
        let pool = lazy_pool_behind(&url, settings, common.db_pooler)?;
        let direct = match &common.direct_database_url {
            Some(url) => Some(lazy_pool(
                url.expose(),
                PoolSettings {
                    max_connections: DIRECT_CONNECTIONS,
                    ..settings
                },
            )?),
            None => None,
        };
        wait_until_reachable(&pool, common.db_startup_timeout.0).await?;
        if let Some(direct) = &direct {
            wait_until_reachable(direct, common.db_startup_timeout.0).await?;
        }
        let db = Self {
            pool,
            direct,
            embedded,
        };
        migrate(db.session_pool()).await?;
        Ok(db)
    }

    /// The pool for what needs a session of its own (LISTEN, session advisory locks):
    /// the direct one when there is one, else [`Self::pool`].
    pub fn session_pool(&self) -> &PgPool {
        self.direct.as_ref().unwrap_or(&self.pool)
    }

    /// Closes the pool, then stops the embedded server if this process owns it.
    pub async fn shutdown(self) -> Result<(), DbError> {
        self.pool.close().await;
        if let Some(direct) = self.direct {
            direct.close().await;
        }
        if let Some(pg) = self.embedded {
            tokio::task::spawn_blocking(move || pg.stop()).await??;
        }
        Ok(())
    }
}

/// `url` with its database replaced by `database` (credentials, host and query kept).
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, String::new()), |(b, q)| (b, format!("?{q}")));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    format!("{}/{database}{query}", &base[..host_end])
}

/// Creates `name` in the server behind `admin_url` unless it exists. Safe when several
/// processes race: a concurrent creation's duplicate error counts as success.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<(), DbError> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool = query_scalar("select exists(select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is ours, never user input, and is quoted.
        let sql = format!("create database \"{}\"", name.replace('"', "\"\""));
        match query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

async fn wait_until_reachable(pool: &PgPool, timeout: Duration) -> Result<(), DbError> {
    let started = Instant::now();
    loop {
        match sqlx::raw_sql("select 1").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() < timeout => {
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(DbError::Unreachable {
                    timeout,
                    last_error: e.to_string(),
                });
            }
        }
    }
}
