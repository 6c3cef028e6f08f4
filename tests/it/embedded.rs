//! The embedded PostgreSQL and the service process around it: first start under a
//! private parent directory, restart on the same data, recovery after SIGKILL, a clean
//! stop on Ctrl-C, `DATABASE_URL` bypassing it, and readiness while the database is down.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use hitl_orchestrator::api::{self, AppState};
use hitl_orchestrator::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use hitl_orchestrator::db::{self, PoolSettings};
use nix::sys::signal::Signal;
use sqlx::{Connection, PgConnection};

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hitl-embedded-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Stops a cluster even when an assertion fails half-way.
struct StopOnDrop(Option<EmbeddedPostgres>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pg) = self.0.take() {
            let _ = pg.stop();
        }
    }
}

#[tokio::test]
async fn the_cluster_starts_under_a_private_parent_and_restarts_on_the_same_data() {
    let parent = private_dir();
    let opts = EmbeddedOptions::new(parent.path().join("data"));

    let pg = StopOnDrop(Some(EmbeddedPostgres::start(&opts).unwrap()));
    let first = pg.0.as_ref().unwrap();
    assert!(first.is_owner());
    let admin = first.url_for("postgres");
    db::ensure_database(&admin, "hitl").await.unwrap();
    let mut conn = PgConnection::connect(&first.database_url()).await.unwrap();
    sqlx::query("create table kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("insert into kept values ('still here')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let pgdata = first.pgdata().to_path_buf();
    let mut pg = pg;
    pg.0.take().unwrap().stop().unwrap();
    assert!(
        crate::common::postgres_processes_for(&pgdata).is_empty(),
        "stopped means no process left"
    );

    let again = StopOnDrop(Some(EmbeddedPostgres::start(&opts).unwrap()));
    let second = again.0.as_ref().unwrap();
    let mut conn = PgConnection::connect(&second.database_url()).await.unwrap();
    let v: String = sqlx::query_scalar("select v from kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "still here");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_attaches_and_leaves_the_cluster_to_its_owner() {
    let parent = private_dir();
    let opts = EmbeddedOptions::new(parent.path().join("data"));
    let owner = StopOnDrop(Some(EmbeddedPostgres::start(&opts).unwrap()));
    let pgdata = owner.0.as_ref().unwrap().pgdata().to_path_buf();

    // The lock is per open file description, so a second start in this process behaves
    // like another process would.
    let attached = EmbeddedPostgres::start(&opts).unwrap();
    assert!(!attached.is_owner());
    assert_eq!(attached.port(), owner.0.as_ref().unwrap().port());
    attached.stop().unwrap();
    assert!(
        !crate::common::postgres_processes_for(&pgdata).is_empty(),
        "the owner's cluster keeps running"
    );
}

#[test]
fn serve_recovers_after_sigkill_and_leaves_no_postgres_after_ctrl_c() {
    let parent = private_dir();
    let data = parent.path().join("data");
    let data_s = data.to_string_lossy().into_owned();
    let env = [("HITL_DATA_DIR", data_s.as_str())];

    let mut first = crate::common::ServiceProcess::start(&["serve"], &env, parent.path());
    assert_eq!(
        crate::common::http_get(&first.base_url, "/readyz").0,
        200,
        "{}",
        first.log()
    );
    assert!(first.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10)));
    let pgdata = data.join("pgdata");
    let orphans = crate::common::postgres_processes_for(&pgdata);
    assert!(
        !orphans.is_empty(),
        "SIGKILL cannot stop PostgreSQL; the next start must deal with it"
    );

    let mut second = crate::common::ServiceProcess::start(&["serve"], &env, parent.path());
    assert_eq!(
        crate::common::http_get(&second.base_url, "/readyz").0,
        200,
        "{}",
        second.log()
    );
    assert!(second.log().contains("taking over"), "{}", second.log());
    assert!(
        !second.log().contains("initialised a new"),
        "the data is reused: {}",
        second.log()
    );

    assert!(
        second.signal_and_wait(Signal::SIGINT, Duration::from_secs(60)),
        "{}",
        second.log()
    );
    assert!(
        second.child.try_wait().unwrap().unwrap().success(),
        "{}",
        second.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::common::postgres_processes_for(&pgdata).is_empty() && Instant::now() < deadline {
        crate::common::poll_pause_blocking();
    }
    assert!(
        crate::common::postgres_processes_for(&pgdata).is_empty(),
        "Ctrl-C stops the service's PostgreSQL"
    );
}

#[tokio::test]
async fn with_database_url_the_service_uses_that_server_and_starts_none() {
    let db = crate::common::fresh_db().await;
    let parent = private_dir();
    let data = parent.path().join("data");
    let data_s = data.to_string_lossy().into_owned();
    let env = [
        ("HITL_DATA_DIR", data_s.as_str()),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let mut service = crate::common::ServiceProcess::start(&["serve"], &env, parent.path());
    let (status, _) = tokio::task::spawn_blocking({
        let url = service.base_url.clone();
        move || crate::common::http_get(&url, "/readyz")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", service.log());
    assert!(!data.exists(), "no embedded cluster was created");
    assert!(service.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30)));
}

#[test]
fn missing_server_binaries_stop_the_service_with_a_clear_message() {
    let parent = private_dir();
    let data = parent.path().join("data").to_string_lossy().into_owned();
    let out = std::process::Command::new(crate::common::service_binary())
        .args(["migrate"])
        .env_remove("DATABASE_URL")
        .env("HITL_DATA_DIR", &data)
        .env("HITL_PG_BIN_DIR", parent.path().join("no-such-bin"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn readyz_answers_503_within_two_seconds_while_the_database_is_down_and_recovers() {
    let parent = private_dir();
    // Durable settings: an immediate stop is a crash, and the migrations must survive it.
    let opts = EmbeddedOptions::new(parent.path().join("data"));
    let pg = StopOnDrop(Some(EmbeddedPostgres::start(&opts).unwrap()));
    let cluster = pg.0.as_ref().unwrap();
    db::ensure_database(&cluster.url_for("postgres"), "hitl")
        .await
        .unwrap();
    let pool = db::lazy_pool(&cluster.database_url(), PoolSettings::default()).unwrap();
    db::migrate(&pool).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = api::router(AppState::new(
        hitl_orchestrator::service::Service::new(
            pool.clone(),
            hitl_orchestrator::engine::Engine::with_builtins(true),
        ),
        api::Authenticator::new(vec![]),
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = crate::common::http_client();

    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    cluster.stop_immediately().unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 503);
        assert!(elapsed < Duration::from_secs(2), "answered in {elapsed:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    }
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    cluster.restart_after_stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        let body = response.text().await.unwrap();
        assert!(Instant::now() < deadline, "readyz did not recover: {body}");
        crate::common::poll_pause().await;
    }
}
