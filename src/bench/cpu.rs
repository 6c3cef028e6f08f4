//! CPU time of what a benchmark measures, read from `/proc`: PostgreSQL (its postmaster
//! and every backend), the service's `worker` processes, PgBouncer, this process, and the
//! whole machine (so a reader sees how much of it was someone else's).
//!
//! A backend that exits during the measurement is not lost: once reaped its time is in
//! the postmaster's children's time, which is counted too.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Value, json};
use sqlx::PgPool;

/// `(utime + stime, cutime + cstime)` of `pid`, in clock ticks.
fn ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after its end.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let at = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // After the name: state (0), ppid (1), … utime (11), stime (12), cutime (13), cstime (14).
    Some((at(11)? + at(12)?, at(13)? + at(14)?))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process with its parent and command name.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, parent_of(pid)?, comm.trim().to_owned()))
        })
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's USER_HZ, when it cannot say).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Busy ticks of the whole machine (every CPU), from `/proc/stat`.
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    cpu.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// The postmaster of the server behind `pool` when it runs on this machine: the parent
/// of the backend serving this query.
pub(super) async fn postmaster_of(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let parent = parent_of(backend as u32)?;
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    (comm.trim() == "postgres").then_some(parent)
}

/// A reading of every counter, to subtract from a later one.
struct Reading {
    at: Instant,
    postgres: Option<u64>,
    workers: HashMap<u32, u64>,
    pgbouncer: u64,
    this: u64,
    machine: u64,
}

/// CPU used between [`CpuWatch::start`] and [`CpuWatch::report`].
pub(super) struct CpuWatch {
    postmaster: Option<u32>,
    start: Reading,
}

impl CpuWatch {
    /// Starts watching PostgreSQL (when `postmaster` is known) and the processes `workers`.
    pub(super) fn start(postmaster: Option<u32>, workers: &[u32]) -> Self {
        Self {
            postmaster,
            start: read(postmaster, workers),
        }
    }

    /// Cores used on average since the start, by each party; `workers` as at the start
    /// (call this before they exit: a reaped process's time is no longer its own).
    pub(super) fn report(&self, workers: &[u32]) -> Value {
        let end = read(self.postmaster, workers);
        let seconds = end.at.duration_since(self.start.at).as_secs_f64().max(1e-9);
        let per_second = clock_ticks() * seconds;
        let cores = |end: u64, start: u64| end.saturating_sub(start) as f64 / per_second;
        let worker_ticks: u64 = end
            .workers
            .iter()
            .map(|(pid, t)| t.saturating_sub(*self.start.workers.get(pid).unwrap_or(&0)))
            .sum();
        let postgres = match (end.postgres, self.start.postgres) {
            (Some(e), Some(s)) => json!(cores(e, s)),
            _ => Value::Null,
        };
        json!({
            "postgres_cores": postgres,
            "workers_cores": worker_ticks as f64 / per_second,
            "pgbouncer_cores": cores(end.pgbouncer, self.start.pgbouncer),
            "bench_cores": cores(end.this, self.start.this),
            "machine_busy_cores": cores(end.machine, self.start.machine),
        })
    }
}

fn read(postmaster: Option<u32>, workers: &[u32]) -> Reading {
    let all = processes();
    let postgres = postmaster.and_then(|pm| {
        let (own, children) = ticks(pm)?;
        let backends: u64 = all
            .iter()
            .filter(|(_, parent, _)| *parent == pm)
            .filter_map(|(pid, _, _)| ticks(*pid).map(|t| t.0))
            .sum();
        Some(own + children + backends)
    });
    Reading {
        at: Instant::now(),
        postgres,
        workers: workers
            .iter()
            .filter_map(|pid| ticks(*pid).map(|t| (*pid, t.0)))
            .collect(),
        pgbouncer: all
            .iter()
            .filter(|(_, _, comm)| comm == "pgbouncer")
            .filter_map(|(pid, _, _)| ticks(*pid).map(|t| t.0))
            .sum(),
        this: ticks(std::process::id()).map_or(0, |t| t.0),
        machine: machine_busy(),
    }
}
