//! A real PgBouncer (Debian's `pgbouncer`) in front of a test PostgreSQL, for the tests
//! that run the service behind a transaction pooler.
//!
//! Each [`PgBouncer`] is a process of its own on a free loopback port, configured from a
//! file in a temporary directory, forwarding every database name to the same database of
//! one upstream server; it is killed when dropped. When the binary is missing the tests
//! cannot prove anything: with `CI` set that is a failure, elsewhere a loud notice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, Row};

/// Server connections per database for a PgBouncer in session mode: each client holds
/// one for as long as it is connected and the others wait for one (seen: a job stalled
/// past the shutdown grace after a restart, with 20 for two workers of 16 connections
/// each), so this covers every connection the processes of one test may open.
pub const SESSION_POOL: u32 = 80;

/// Server connections per database for a PgBouncer in transaction mode: far fewer than
/// the clients of a test's processes (two workers of 16 connections each, an API's), so
/// that clients really share server connections between transactions — where a
/// statement outside a transaction, or a named one, would go wrong.
pub const TRANSACTION_POOL: u32 = 6;

/// A running PgBouncer; killed when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    pool_mode: String,
    user: String,
    password: String,
    _dir: tempfile::TempDir,
}

/// Where the `pgbouncer` binary is: on `PATH`, or where Debian installs it.
pub fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/pgbouncer");
        debian.is_file().then_some(debian)
    })
}

/// The binary, or `None` after saying loudly that the caller's test did not run.
/// Panics instead when `CI` is set: there a missing PgBouncer must fail the build.
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(path) = binary() {
        return Some(path);
    }
    let why = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)";
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why}, and CI is set"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of a
    // passing test, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! NOT RUN: {test}\n!! {why}\n{bar}\n",
        bar = "!".repeat(78)
    );
    None
}

/// The pieces of a `postgres://user:password@host:port/db` URL PgBouncer needs.
fn upstream_parts(url: &str) -> (String, String, String, u16) {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("upstream URL");
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let userinfo = rest.split_once('@').map_or("", |(u, _)| u);
    let password = userinfo.split_once(':').map_or("", |(_, p)| p).to_owned();
    (
        options.get_username().to_owned(),
        password,
        options.get_host().to_owned(),
        options.get_port(),
    )
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` (`transaction` or `session`) in front of the server
    /// of `upstream_url`, with `pool_size` server connections per database. `None` when
    /// the binary is missing (see [`binary_or_skip`]).
    pub fn start(test: &str, upstream_url: &str, pool_mode: &str, pool_size: u32) -> Option<Self> {
        let binary = binary_or_skip(test)?;
        let (user, password, host, port) = upstream_parts(upstream_url);
        let dir = tempfile::Builder::new()
            .prefix("hitl-test-pgbouncer-")
            .tempdir()
            .unwrap();
        let mut last_log = String::new();
        // A free port is found by binding port 0 and letting it go; another process may
        // take it meanwhile, so a failed start is retried on a new one.
        for _ in 0..5 {
            let listen_port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = write_config(
                dir.path(),
                &Settings {
                    listen_port,
                    pool_mode,
                    pool_size,
                    user: &user,
                    password: &password,
                    host: &host,
                    port,
                },
            );
            let log = dir.path().join("pgbouncer.log");
            let mut cmd = Command::new(&binary);
            // PgBouncer refuses to run as root: as root it runs as the `postgres` user,
            // the one the test cluster runs as, and must own its directory.
            if nix::unistd::Uid::effective().is_root() {
                let user = nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .expect("running as root needs a `postgres` user for pgbouncer");
                chown_tree(dir.path(), user.uid.as_raw(), user.gid.as_raw());
                cmd.args(["-u", "postgres"]);
            }
            let mut child = cmd
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start pgbouncer");
            if wait_listening(&mut child, listen_port, Duration::from_secs(10)) {
                return Some(Self {
                    child,
                    port: listen_port,
                    pool_mode: pool_mode.to_owned(),
                    user,
                    password,
                    _dir: dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("pgbouncer did not start; its log:\n{last_log}");
    }

    /// The URL of `database` through this PgBouncer.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{database}",
            self.user, self.password, self.port
        )
    }

    /// `direct_url` (a database on the upstream server) as reached through this PgBouncer.
    pub fn url_through(&self, direct_url: &str) -> String {
        let database = direct_url
            .rsplit_once('/')
            .map_or("", |(_, d)| d)
            .split('?')
            .next()
            .unwrap_or("");
        self.url_for(database)
    }

    /// How a service process reaches the database of `direct_url` through this
    /// PgBouncer: pooled connections through it (`HITL_DB_POOLER` is its pool mode),
    /// LISTEN and migrations straight.
    pub fn route(&self, direct_url: &str) -> super::Route {
        vec![
            ("DATABASE_URL", self.url_through(direct_url)),
            ("HITL_DB_POOLER", self.pool_mode.clone()),
            ("HITL_DIRECT_DATABASE_URL", direct_url.to_owned()),
        ]
    }

    /// Waits (up to 5 s: statistics are totalled every second) until PgBouncer has
    /// carried at least `at_least` transactions to `database`, and panics if it has not:
    /// the proof that traffic really went through it.
    pub async fn assert_carried(&self, database: &str, at_least: i64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let carried = self.transactions_carried(database).await;
            if carried >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PgBouncer carried {carried} transactions to {database}, expected at least {at_least}"
            );
            super::poll_pause().await;
        }
    }

    /// Transactions PgBouncer has carried to `database` since it started (from
    /// `SHOW STATS` on its admin console).
    pub async fn transactions_carried(&self, database: &str) -> i64 {
        let options: sqlx::postgres::PgConnectOptions = self.url_for("pgbouncer").parse().unwrap();
        let mut admin = PgConnection::connect_with(&options.extra_float_digits(None))
            .await
            .expect("connect to the pgbouncer admin console");
        // The admin console speaks only the simple query protocol.
        let rows = sqlx::raw_sql("show stats")
            .fetch_all(&mut admin)
            .await
            .expect("show stats");
        let total = rows
            .iter()
            .filter(|r| r.try_get::<String, _>("database").ok().as_deref() == Some(database))
            // Declared numeric, sent as text: read as the text it is.
            .map(|r| {
                r.try_get_unchecked::<String, _>("total_xact_count")
                    .ok()
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        let _ = admin.close().await;
        total
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).unwrap();
    }
}

fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        super::poll_pause_blocking();
    }
    false
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Settings<'a> {
    listen_port: u16,
    pool_mode: &'a str,
    pool_size: u32,
    user: &'a str,
    password: &'a str,
    host: &'a str,
    port: u16,
}

fn write_config(dir: &Path, s: &Settings<'_>) -> PathBuf {
    let users = dir.join("users.txt");
    std::fs::write(&users, format!("\"{}\" \"{}\"\n", s.user, s.password)).unwrap();
    let config = dir.join("pgbouncer.ini");
    let mut file = std::fs::File::create(&config).unwrap();
    // `*` forwards every database name to the same database upstream, so each test's
    // fresh database is reachable without listing it. sqlx sends extra_float_digits at
    // start, which PgBouncer does not track: the service leaves it out behind a pooler,
    // and the probe of transaction pooling does too. A restarted server is logged into
    // again after 1 s, not the default 15 s; statistics are totalled every second (not
    // every minute) so a test can read them at its end.
    write!(
        file,
        "[databases]\n\
         * = host={host} port={port} user={user} password={password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {listen_port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {users}\n\
         admin_users = {user}\n\
         pool_mode = {pool_mode}\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 1000\n\
         server_login_retry = 1\n\
         server_connect_timeout = 5\n\
         query_wait_timeout = 30\n\
         stats_period = 1\n\
         logfile = {log}\n\
         pidfile = {pid}\n",
        host = s.host,
        port = s.port,
        user = s.user,
        password = s.password,
        listen_port = s.listen_port,
        users = users.display(),
        pool_mode = s.pool_mode,
        pool_size = s.pool_size,
        log = dir.join("pgbouncer-file.log").display(),
        pid = dir.join("pgbouncer.pid").display(),
    )
    .unwrap();
    config
}
