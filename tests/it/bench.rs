//! The benchmark command stays runnable: every scenario at a tiny size, on the test
//! server, prints its JSON, and writes its file where `--out` says. (Figures come from full runs, never from
//! tests: see docs/BENCHMARKS.md.)

use serde_json::Value;

/// `bench scale` at a size that only shows it runs.
pub(crate) const TINY_SCALE: &[&str] = &["scale", "--n", "40", "--concurrency", "2"];

fn bench(args: &[&str], database_url: &str) -> Value {
    bench_with(args, &[("DATABASE_URL", database_url)])
}

/// Runs `bench` with `args` and the settings `env`; returns its JSON.
pub(crate) fn bench_with(args: &[&str], env: &[(&str, &str)]) -> Value {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::common::service_binary())
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "bench wrote under its working directory"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Nothing but the result on stdout, so it can be piped to jq.
    serde_json::from_str(stdout.trim()).expect("stdout is one JSON object")
}

#[tokio::test]
async fn every_scenario_runs_and_reports() {
    let db = crate::common::fresh_db().await;
    let baseline = bench(&["baseline", "--n", "50", "--concurrency", "4"], &db.url);
    assert_eq!(baseline["resumes"], 50);
    assert!(baseline["resumes_per_second"].as_f64().unwrap() > 0.0);
    let completing = bench(
        &[
            "baseline",
            "--n",
            "20",
            "--concurrency",
            "2",
            "--with-completion",
        ],
        &db.url,
    );
    assert_eq!(
        (
            completing["resumes"].clone(),
            completing["with_completion"].clone()
        ),
        (20.into(), true.into())
    );

    // The floor does the same writes as the statements it stands beside, with and without
    // the run's completion.
    for completion in [&[][..], &["--with-completion"][..]] {
        let args = [
            &["baseline", "--n", "20", "--concurrency", "2"][..],
            completion,
        ]
        .concat();
        let statements = bench(&args, &db.url);
        let floor = bench(&[&args[..], &["--floor"]].concat(), &db.url);
        assert_eq!(
            (floor["resumes"].clone(), floor["floor"].clone()),
            (20.into(), true.into()),
            "{floor}"
        );
        assert_eq!(floor["written"], statements["written"], "{floor}");
        assert_eq!(floor["written"]["responses"], 20, "{floor}");
    }

    let drain = bench(
        &["drain", "--n", "50", "--concurrency", "4", "--updates"],
        &db.url,
    );
    assert_eq!(
        (drain["commands"].clone(), drain["succeeded"].clone()),
        (50.into(), 50.into())
    );
    // Each command ends with one update, reported once the server's counts are in.
    assert_eq!(
        drain["updates"]["public.hitl_commands"]["updates"], 50,
        "{drain}"
    );

    // Time-boxed: stops measuring after --seconds even though work is left.
    let boxed = bench(
        &[
            "drain",
            "--n",
            "3000",
            "--concurrency",
            "2",
            "--seconds",
            "1",
        ],
        &db.url,
    );
    assert!(boxed["ended"].as_i64().unwrap() < 3000, "{boxed}");

    let out_dir = tempfile::tempdir().unwrap();
    let processes = bench(
        &[
            "drain",
            "--n",
            "50",
            "--concurrency",
            "4",
            "--workers",
            "2",
            "--processes",
            "--out",
            out_dir.path().to_str().unwrap(),
        ],
        &db.url,
    );
    assert_eq!(processes["succeeded"], 50);
    let submit = bench(&["submit", "--n", "40", "--concurrency", "4"], &db.url);
    assert!(submit["accepted_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(submit["latency"]["samples"], 40);

    let e2e = bench(
        &[
            "e2e",
            "--rate",
            "20",
            "--seconds",
            "1",
            "--concurrency",
            "4",
        ],
        &db.url,
    );
    assert_eq!(e2e["applied"], 20);
    assert!(e2e["submit_to_applied"]["p99_ms"].as_f64().unwrap() > 0.0);

    let rehydrate = bench(&["rehydrate", "--n", "300", "--stranded", "20"], &db.url);
    assert_eq!(rehydrate["parked_left_untouched"], 300);
    assert!(rehydrate["peak_rss_mb"].as_f64().unwrap() > 0.0);

    let pending = bench(&["pending", "--n", "300", "--samples", "5"], &db.url);
    assert_eq!(pending["latency"]["deep_page"]["samples"], 5);

    let scale = bench(
        &[TINY_SCALE, &["--process-counts", "1,2"]].concat(),
        &db.url,
    );
    let summary = scale["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2, "{scale}");
    assert!(summary.iter().all(|r| r["exactly_once"] == true), "{scale}");
    assert!(scale["runs"][1]["cpu"]["workers_cores"].as_f64().unwrap() > 0.0);

    let file = out_dir.path().join("drain.json");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(written["processes"], true);
}
