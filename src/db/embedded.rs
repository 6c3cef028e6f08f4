//! A private PostgreSQL cluster run from the locally installed server binaries, so the
//! service (and the test suite) works on a fresh machine without a database server.
//!
//! Layout of the data directory:
//! - `pgdata/`: the cluster (owned by the `postgres` system user when we run as root,
//!   because PostgreSQL refuses to run as root); its server log is `pgdata/server.log`.
//! - `credentials`: the generated superuser password (mode 0600, never logged).
//! - `embedded.lock`: held (an exclusive file lock) by the process that owns the
//!   cluster. The owner starts and stops it; another process using the same directory
//!   only attaches. The kernel drops the lock when the owner dies, even by SIGKILL, so
//!   the next start can tell a cluster left running by a dead owner (taken over) from
//!   one whose owner is alive (shared).
//!
//! The server listens only on 127.0.0.1, on a port picked at each start, with password
//! (SCRAM) authentication, and no Unix socket: socket paths are limited to ~107 bytes,
//! which deep data directories exceed.
//!
//! Process control is synchronous (`std::process`): it runs once at start and once at
//! stop; async callers wrap it in `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};

/// The superuser the embedded cluster is created with.
pub const SUPERUSER: &str = "hitl";
/// The database the service uses inside the embedded cluster.
pub const DATABASE: &str = "hitl";

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// What can go wrong while starting or stopping the embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found; looked in: {searched}. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`, which provides \
         /usr/lib/postgresql/<version>/bin), point HITL_PG_BIN_DIR at the directory holding them, \
         or set DATABASE_URL to use an existing PostgreSQL server instead"
    )]
    BinariesNotFound { searched: String },
    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no `postgres` system \
         user to run it as; create one (`useradd --system postgres`), run as another user, or set \
         DATABASE_URL"
    )]
    NoPostgresUser,
    #[error("{action} failed: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },
    #[error(
        "the data directory {0} holds a PostgreSQL cluster but no `credentials` file, so the \
         service cannot log in; restore the file or remove the directory to start afresh"
    )]
    MissingCredentials(PathBuf),
    #[error("timed out after {0:?} waiting for the embedded PostgreSQL started by another process")]
    AttachTimeout(Duration),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let action = action.into();
    move |source| EmbeddedError::Io { action, source }
}

/// Where to look for the server binaries; the defaults are the real system locations,
/// tests point them elsewhere.
#[derive(Clone, Debug)]
pub struct BinarySearch {
    /// An explicit directory (HITL_PG_BIN_DIR); when set, it is the only place looked at.
    pub explicit: Option<PathBuf>,
    /// The `pg_config` program asked for `--bindir`.
    pub pg_config: PathBuf,
    /// The root holding versioned installs (`<root>/<version>/bin`).
    pub versioned_root: PathBuf,
    /// The PATH to search last; `None` means this process's PATH.
    pub path: Option<std::ffi::OsString>,
}

impl Default for BinarySearch {
    fn default() -> Self {
        Self {
            explicit: None,
            pg_config: PathBuf::from("pg_config"),
            versioned_root: PathBuf::from("/usr/lib/postgresql"),
            path: None,
        }
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Finds the directory holding initdb, pg_ctl and postgres: the explicit one if given,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`, else PATH.
pub fn find_server_binaries(search: &BinarySearch) -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = &search.explicit {
        return if has_server_binaries(dir) {
            Ok(dir.clone())
        } else {
            Err(EmbeddedError::BinariesNotFound {
                searched: format!("{} (HITL_PG_BIN_DIR)", dir.display()),
            })
        };
    }
    let mut searched = Vec::new();

    if let Ok(out) = Command::new(&search.pg_config).arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
    } else {
        searched.push(format!(
            "{} --bindir (not runnable)",
            search.pg_config.display()
        ));
    }

    // Newest major version first: "16" sorts after "15", and "9.6" must not beat "10".
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(&search.versioned_root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let key: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
                    key.map(|k| (k, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    if let Some((_, dir)) = versioned.iter().rev().find(|(_, d)| has_server_binaries(d)) {
        return Ok(dir.clone());
    }
    searched.push(format!("{}/*/bin", search.versioned_root.display()));

    let path = search.path.clone().or_else(|| std::env::var_os("PATH"));
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    searched.push("PATH".into());
    Err(EmbeddedError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

/// How to start the embedded cluster.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The directory the cluster lives in (created when missing).
    pub data_dir: PathBuf,
    /// Where to find the server binaries.
    pub binaries: BinarySearch,
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub ephemeral: bool,
    /// How long an attaching process waits for the owner to bring the cluster up.
    pub attach_timeout: Duration,
    /// More server settings, `name=value` each (the benchmark's `track_commit_timestamp`).
    pub settings: Vec<String>,
}

impl EmbeddedOptions {
    /// Options for a durable cluster in `data_dir`, binaries found the usual way.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            binaries: BinarySearch::default(),
            ephemeral: false,
            attach_timeout: Duration::from_secs(60),
            settings: Vec::new(),
        }
    }
}

/// A running embedded cluster. Call [`EmbeddedPostgres::stop`] to shut it down; dropping
/// the value leaves the server running (a later start takes it over).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(Uid, Gid)>,
    /// Present when this process owns the cluster (and so stops it).
    owner_lock: Option<File>,
}

impl EmbeddedPostgres {
    /// Starts the cluster in `opts.data_dir` (creating it on first use), takes over one
    /// left running by a dead owner, or attaches to one a live process owns.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_server_binaries(&opts.binaries)?;
        let run_as = postgres_user_if_root()?;

        fs::create_dir_all(&opts.data_dir)
            .map_err(io_err(format!("creating {}", opts.data_dir.display())))?;
        let data_dir = opts
            .data_dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", opts.data_dir.display())))?;
        let pgdata = data_dir.join("pgdata");

        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("embedded.lock"))
            .map_err(io_err("opening embedded.lock"))?;
        let owner_lock = match lock.try_lock() {
            Ok(()) => Some(lock),
            Err(fs::TryLockError::WouldBlock) => None,
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking embedded.lock")(e)),
        };

        let mut pg = Self {
            data_dir,
            pgdata,
            bin_dir,
            port: 0,
            password: String::new(),
            run_as,
            owner_lock,
        };
        if pg.owner_lock.is_some() {
            pg.start_as_owner(opts)?;
        } else {
            pg.attach(opts.attach_timeout)?;
        }
        Ok(pg)
    }

    fn start_as_owner(&mut self, opts: &EmbeddedOptions) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.run_as {
            grant_traversal(&self.data_dir, uid, gid)?;
        }
        if !self.pgdata.join("PG_VERSION").is_file() {
            self.init_cluster()?;
        }
        self.password = self.read_credentials()?;

        if let Some((pid, port)) = self.running_postmaster() {
            if port_accepts(port) {
                tracing::info!(pid, port, data_dir = %self.data_dir.display(),
                    "taking over the embedded PostgreSQL left running by an earlier start");
                self.port = port;
                return Ok(());
            }
            // A postmaster that does not answer is stopped and started afresh.
            tracing::warn!(
                pid,
                "the embedded PostgreSQL left running does not answer; restarting it"
            );
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        }

        let mut last_error = None;
        for _ in 0..3 {
            let port = free_loopback_port()?;
            let mut settings = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' \
                 -c max_connections=200"
            );
            if opts.ephemeral {
                settings
                    .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            for extra in &opts.settings {
                settings.push_str(&format!(" -c {extra}"));
            }
            let log = self.pgdata.join("server.log");
            let log = log.to_string_lossy().into_owned();
            match self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &settings]) {
                Ok(_) => {
                    self.port = port;
                    tracing::info!(port, data_dir = %self.data_dir.display(), "embedded PostgreSQL started");
                    return Ok(());
                }
                // Another process may have taken the port between our probe and the bind.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.map_or_else(
            || EmbeddedError::AttachTimeout(Duration::ZERO),
            |e| self.with_log_tail(e),
        ))
    }

    fn attach(&mut self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.pgdata.join("PG_VERSION").is_file()
                && let Some((_, port)) = self.running_postmaster()
                && port_accepts(port)
            {
                self.password = self.read_credentials()?;
                self.port = port;
                tracing::info!(
                    port,
                    "attached to the embedded PostgreSQL owned by another process"
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::AttachTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn init_cluster(&mut self) -> Result<(), EmbeddedError> {
        // A half-made cluster from an interrupted initdb is useless: start over.
        if self.pgdata.exists() {
            fs::remove_dir_all(&self.pgdata)
                .map_err(io_err("removing a half-initialised pgdata"))?;
        }
        fs::create_dir(&self.pgdata).map_err(io_err("creating pgdata"))?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting pgdata permissions"))?;
        self.chown_to_postgres(&self.pgdata)?;

        let password = random_hex(24)?;
        let pwfile = self.data_dir.join("initdb.pwfile");
        write_private_file(&pwfile, &password)?;
        self.chown_to_postgres(&pwfile)?;
        let pgdata = self.pgdata.to_string_lossy().into_owned();
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let result = self.run(
            "initdb",
            &[
                "-D",
                &pgdata,
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                &pwfile_arg,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        );
        let _ = fs::remove_file(&pwfile);
        result?;
        write_private_file(&self.data_dir.join("credentials"), &password)?;
        tracing::info!(data_dir = %self.data_dir.display(), "initialised a new embedded PostgreSQL cluster");
        Ok(())
    }

    fn read_credentials(&self) -> Result<String, EmbeddedError> {
        let path = self.data_dir.join("credentials");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(EmbeddedError::MissingCredentials(self.data_dir.clone()))
            }
            Err(e) => Err(io_err("reading credentials")(e)),
        }
    }

    /// The pid and port of a live postmaster of this cluster, from `postmaster.pid`. A pid
    /// file whose process is gone, or is not a postgres process (the pid was reused), is
    /// treated as stale; PostgreSQL itself removes a stale file at its next start.
    fn running_postmaster(&self) -> Option<(u32, u16)> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let port: u16 = lines.nth(2)?.trim().parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "postgres").then_some((pid, port))
    }

    /// The URL of the service database, with credentials.
    pub fn database_url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database in this cluster (e.g. `postgres` for administration).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (`<data_dir>/pgdata`).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The pid of the running postmaster, if any.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.running_postmaster().map(|(pid, _)| pid)
    }

    /// Whether this process owns the cluster (and so stops it).
    pub fn is_owner(&self) -> bool {
        self.owner_lock.is_some()
    }

    /// Stops the server (fast shutdown: sessions are ended, data is flushed) when this
    /// process owns it; an attached process leaves it to its owner.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        if self.owner_lock.is_none() {
            return Ok(());
        }
        let result = match self.running_postmaster() {
            Some(_) => self
                .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
                .map(|_| ()),
            None => Ok(()),
        };
        self.owner_lock.take();
        if result.is_ok() {
            tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL stopped");
        }
        result
    }

    /// Stops the server at once, without a shutdown checkpoint (crash-like; for tests).
    pub fn stop_immediately(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"])
            .map(|_| ())
    }

    /// Starts a server stopped by [`Self::stop_immediately`] again, on the same port.
    pub fn restart_after_stop(&self) -> Result<(), EmbeddedError> {
        let settings = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' -c max_connections=200",
            self.port
        );
        let log = self
            .pgdata
            .join("server.log")
            .to_string_lossy()
            .into_owned();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &settings])
            .map(|_| ())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, EmbeddedError> {
        let pgdata = self.pgdata.to_string_lossy().into_owned();
        let mut all = vec!["-D", pgdata.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, EmbeddedError> {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.args(args)
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env("LC_ALL", "C")
            // The child may not be allowed into our working directory once it runs as postgres.
            .current_dir("/");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        // pg_ctl start leaves the server holding its stdout; capturing it would block us
        // until the server exits, so the server's output goes to its log file instead.
        let out = if program == "pg_ctl" && args.contains(&"start") {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let child = cmd.spawn().map_err(io_err(format!("running {program}")))?;
            child.wait_with_output()
        } else {
            cmd.output()
        }
        .map_err(io_err(format!("running {program}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(EmbeddedError::Command {
                program: program.to_owned(),
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .trim()
                .to_owned(),
            })
        }
    }

    fn with_log_tail(&self, e: EmbeddedError) -> EmbeddedError {
        match e {
            EmbeddedError::Command {
                program,
                status,
                output,
            } => {
                let log = fs::read_to_string(self.pgdata.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                EmbeddedError::Command {
                    program,
                    status,
                    output: format!(
                        "{output}\nlast lines of the server log:\n{}",
                        tail.join("\n")
                    ),
                }
            }
            other => other,
        }
    }

    fn chown_to_postgres(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(
                io_err(format!("handing {} to the postgres user", path.display())),
            )?;
        }
        Ok(())
    }
}

/// When this process is root, the `postgres` user the cluster must run as.
fn postgres_user_if_root() -> Result<Option<(Uid, Gid)>, EmbeddedError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid, user.gid))),
        _ => Err(EmbeddedError::NoPostgresUser),
    }
}

/// Lets the `postgres` user reach `dir`: every ancestor it cannot search gets the search
/// bit (never the read bit) for the class that user falls in. Without this a data
/// directory under a private parent (a mode-700 temporary directory, a home directory)
/// cannot be used. Each change is logged.
fn grant_traversal(dir: &Path, uid: Uid, gid: Gid) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let meta =
            fs::metadata(ancestor).map_err(io_err(format!("inspecting {}", ancestor.display())))?;
        let mode = meta.mode();
        let bit = if meta.uid() == uid.as_raw() {
            0o100
        } else if meta.gid() == gid.as_raw() {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode((mode | bit) & 0o7777))
                .map_err(io_err(format!(
                    "letting the postgres user into {}",
                    ancestor.display()
                )))?;
            tracing::warn!(directory = %ancestor.display(),
                "added the search (x) permission so the postgres user can reach the data directory");
        }
    }
    Ok(())
}

fn free_loopback_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port();
    Ok(port)
}

fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_secs(2),
    )
    .is_ok()
}

fn random_hex(bytes: usize) -> Result<String, EmbeddedError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private_file(path: &Path, contents: &str) -> Result<(), EmbeddedError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_install_is_refused_with_what_to_install_and_the_alternative() {
        let empty = std::env::temp_dir().join(format!("hitl-empty-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        let search = BinarySearch {
            explicit: None,
            pg_config: empty.join("no-pg_config"),
            versioned_root: empty.clone(),
            path: Some(empty.clone().into_os_string()),
        };
        let message = find_server_binaries(&search).unwrap_err().to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
        fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn an_explicit_directory_without_binaries_is_refused() {
        let search = BinarySearch {
            explicit: Some(PathBuf::from("/nonexistent/bin")),
            ..BinarySearch::default()
        };
        let message = find_server_binaries(&search).unwrap_err().to_string();
        assert!(
            message.contains("/nonexistent/bin (HITL_PG_BIN_DIR)"),
            "{message}"
        );
    }
}
