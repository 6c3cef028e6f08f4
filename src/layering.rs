//! The direction of dependencies between top-level modules, checked on the source.
//!
//! Each module may name (`crate::<module>`) only the modules listed for it below, so
//! dependencies point one way and no cycle can form: domain and config at the bottom,
//! then telemetry, db, identity and the operator's HTTP client (`cli`), persistence
//! (which holds the queue's store), engine, service, the front ends and the job
//! handlers, and `app` on top. A new top-level module
//! must be given its place here before the test passes. docs/ARCHITECTURE.md shows the
//! same picture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("domain", &[]),
    ("tls", &[]),
    ("telemetry", &["config", "tls"]),
    // The operator's client talks to a service over HTTP: it knows the command line, the
    // ids and statuses, and nothing of how the service keeps them.
    ("cli", &["config", "domain", "tls"]),
    ("db", &["config"]),
    ("identity", &["config", "tls"]),
    ("persistence", &["db", "domain", "telemetry"]),
    (
        "engine",
        &["config", "db", "domain", "persistence", "telemetry", "tls"],
    ),
    (
        "service",
        &[
            "config",
            "db",
            "domain",
            "engine",
            "identity",
            "persistence",
            "telemetry",
        ],
    ),
    // The console is a front end like the JSON API, which mounts it under /console.
    (
        "console",
        &["config", "domain", "identity", "service", "telemetry"],
    ),
    (
        "api",
        &[
            "config",
            "console",
            "domain",
            "identity",
            "service",
            "telemetry",
        ],
    ),
    (
        "jobs",
        &[
            "config",
            "db",
            "domain",
            "engine",
            "persistence",
            "service",
            "telemetry",
            // Notification deliveries are HTTPS requests of the worker's own.
            "tls",
        ],
    ),
    (
        "app",
        &[
            "api",
            "config",
            "console",
            "db",
            "domain",
            "engine",
            "identity",
            "jobs",
            "persistence",
            "service",
            "telemetry",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of top-level module `name` (`src/name.rs` and `src/name/**`).
fn files_of(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src().join(format!("{name}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src().join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The code of a file without its comments (doc links are not dependencies).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names through `crate::…`, including `use crate::{a, b}`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_top_level_module_has_a_place_in_the_layers() {
    let lib = code(&src().join("lib.rs"));
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let placed: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    assert_eq!(declared, placed, "lib.rs modules vs ALLOWED");
}

#[test]
fn the_allowed_directions_have_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Kahn's algorithm: repeatedly remove modules whose every dependency is removed.
    let mut left: BTreeSet<&str> = allowed.keys().copied().collect();
    while !left.is_empty() {
        let ready: Vec<&str> = left
            .iter()
            .copied()
            .filter(|m| allowed[m].iter().all(|d| !left.contains(d)))
            .collect();
        assert!(!ready.is_empty(), "a cycle among {left:?}");
        for m in ready {
            left.remove(m);
        }
    }
}

#[test]
fn each_top_level_module_uses_only_the_modules_below_it() {
    let mut violations = Vec::new();
    for (module, allowed) in ALLOWED {
        for file in files_of(module) {
            for used in named_modules(&code(&file)) {
                if used != *module && !allowed.contains(&used.as_str()) {
                    violations.push(format!("{}: crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_front_ends_hold_no_sql_and_open_no_transaction() {
    for file in files_of("api").into_iter().chain(files_of("console")) {
        let text = code(&file);
        for forbidden in ["sqlx::", ".begin()", "PgPool", "PgListener"] {
            assert!(
                !text.contains(forbidden),
                "{} contains {forbidden}",
                file.display()
            );
        }
    }
}

#[test]
fn the_scanner_reads_grouped_and_inline_paths() {
    let names =
        named_modules("use crate::{domain::RunId, persistence};\nlet x = crate::telemetry::f();");
    assert_eq!(
        names,
        ["domain", "persistence", "telemetry"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
