//! Process roles (`serve`, `api`, `worker`, `migrate`): open the database, start what
//! the role runs, and shut everything down in order on Ctrl-C or SIGTERM — HTTP server
//! and workers first (each within the grace period), then the pool, then the embedded
//! PostgreSQL if this process owns it.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{HttpArgs, Role, WorkerOptions};
use crate::db::{Database, DbError};
use crate::engine::Engine;
use crate::identity::Authenticator;
use crate::jobs::{Notifier, NotifySettings, Worker, WorkerSettings};
use crate::service::Service;

/// Errors that end the process.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("invalid API token settings: {0}")]
    Tokens(String),
    #[error("invalid console settings: {0}")]
    Console(String),
    #[error("invalid agent settings: {0}")]
    Agent(String),
    #[error("HITL_NOTIFY_CHANNELS_FILE: {0}")]
    Notify(String),
    #[error("cannot publish the notification channels: {0}")]
    NotifyPublish(#[source] crate::persistence::PersistenceError),
    #[error("HITL_AUDIT_SIGNING_KEY_FILE: {0}")]
    AuditKey(String),
    #[error("cannot chain the audit trail: {0}")]
    AuditChain(#[source] crate::persistence::PersistenceError),
}

/// Installs the audit signing key (when one is set) and, once the database is open,
/// lists its public key and chains every event written without a hash (by an earlier
/// version).
pub fn install_audit_signer(common: &crate::config::CommonArgs) -> Result<(), AppError> {
    use crate::persistence::audit;
    let signer = match &common.audit_signing_key_file {
        None => None,
        Some(path) => Some(Arc::new(
            audit::Signer::from_pem_file(path).map_err(AppError::AuditKey)?,
        )),
    };
    if let Some(s) = &signer {
        tracing::info!(key_id = s.key_id(), "audit events are signed");
    }
    audit::install_signer(signer);
    Ok(())
}

/// See [`install_audit_signer`].
pub async fn prepare_audit(pool: &sqlx::PgPool) -> Result<(), AppError> {
    use crate::persistence::audit;
    audit::register_signer(pool)
        .await
        .map_err(AppError::AuditChain)?;
    let chained = audit::chain_unhashed(pool)
        .await
        .map_err(AppError::AuditChain)?;
    if chained > 0 {
        tracing::info!(events = chained, "audit events chained");
    }
    Ok(())
}

/// A process's channels (published at start) and the notifier its workers deliver with.
pub type Notifying = (Vec<crate::config::channels::Channel>, Arc<Notifier>);

/// The channels of `HITL_NOTIFY_CHANNELS_FILE`, checked against
/// `HITL_NOTIFY_ALLOWED_URLS`, and the notifier that delivers them; `None` without a file.
pub fn load_notifier(
    common: &crate::config::CommonArgs,
    backoff: (Duration, Duration),
) -> Result<Option<Notifying>, AppError> {
    let Some(path) = &common.notify_channels_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| AppError::Notify(format!("{}: {e}", path.display())))?;
    let allowed = common.notify_allowed_urls.clone();
    let channels = crate::config::channels::parse_channels_file(&text, &|url| {
        Notifier::url_allowed(&allowed, url)
    })
    .map_err(|e| AppError::Notify(format!("{}: {e}", path.display())))?;
    let notifier = Notifier::new(
        channels.clone(),
        NotifySettings {
            allowed_urls: allowed,
            timeout: common.notify_timeout.0,
            max_attempts: common.notify_max_attempts,
            public_url: common.public_url.as_ref().map(|u| u.origin().to_owned()),
            backoff_base: backoff.0,
            backoff_max: backoff.1,
        },
    )
    .map_err(AppError::Notify)?;
    tracing::info!(channels = channels.len(), "notification channels loaded");
    Ok(Some((channels, notifier)))
}

/// What a process runs once its database is open.
enum Runs<'a> {
    Migrate,
    Serve(&'a HttpArgs, &'a WorkerOptions),
    Api(&'a HttpArgs),
    Worker(&'a WorkerOptions),
}

/// Runs `role` until it finishes or is told to stop.
pub async fn run(role: &Role) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    spawn_signal_listener(shutdown.clone());

    let common = role.common();
    let runs = match role {
        Role::Migrate(_) => Runs::Migrate,
        Role::Serve(args) => Runs::Serve(&args.http, &args.worker),
        Role::Api(args) => Runs::Api(&args.http),
        Role::Worker(args) => Runs::Worker(&args.worker),
    };
    // Before the database: a bad agent setting is refused at once, not after a connect.
    let engine = Engine::for_service(common).map_err(AppError::Agent)?;
    install_audit_signer(common)?;
    let notify = load_notifier(common, (Duration::from_secs(1), Duration::from_secs(300)))?;
    let db = Database::open(common).await?;
    prepare_audit(&db.pool).await?;
    if let Some((channels, _)) = &notify {
        crate::jobs::notify::publish_channels(&db.pool, channels)
            .await
            .map_err(AppError::NotifyPublish)?;
    }
    let grace = common.shutdown_grace.0;
    let refresher = tokio::spawn(crate::service::refresh_loop(
        db.pool.clone(),
        Duration::from_secs(15),
        shutdown.clone(),
    ));
    let worker = |options: &WorkerOptions| {
        let worker = Worker::new(
            db.pool.clone(),
            engine.clone(),
            WorkerSettings::from_options(options, grace),
        )
        .with_listen_pool(db.session_pool().clone());
        match &notify {
            Some((_, notifier)) => worker.with_notifier(notifier.clone()),
            None => worker,
        }
    };
    let result = match runs {
        Runs::Migrate => {
            tracing::info!("migrations applied");
            Ok(())
        }
        Runs::Serve(http, options) => {
            let worker = tokio::spawn(worker(options).run(shutdown.clone()));
            let http = serve_http(
                http,
                common.public_url.as_ref(),
                grace,
                &db,
                &engine,
                shutdown.clone(),
            )
            .await;
            // A server that could not start takes the workers down with it.
            shutdown.cancel();
            let _ = worker.await;
            http
        }
        Runs::Api(http) => {
            serve_http(
                http,
                common.public_url.as_ref(),
                grace,
                &db,
                &engine,
                shutdown.clone(),
            )
            .await
        }
        Runs::Worker(options) => {
            worker(options).run(shutdown.clone()).await;
            Ok(())
        }
    };
    shutdown.cancel();
    let _ = refresher.await;
    db.shutdown().await?;
    result
}

async fn serve_http(
    http: &HttpArgs,
    public_url: Option<&crate::config::console::PublicUrl>,
    grace: Duration,
    db: &Database,
    engine: &Engine,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let configured = Authenticator::from_settings(http.api_key.as_ref(), http.api_tokens.as_ref())
        .map_err(AppError::Tokens)?;
    let jwt = jwt_verifier(http)?;
    let console = crate::console::ConsoleSettings {
        public_url: public_url.cloned(),
        session_ttl: crate::config::console::check_session_ttl(http.console_session_ttl.0)
            .map_err(AppError::Console)?,
    };
    // With a tokens file or an identity provider there is no need to make a token up.
    let configured = match (configured, jwt.is_some() || http.tokens_file.is_some()) {
        (None, true) => Some(Authenticator::new(Vec::new())),
        (configured, _) => configured,
    };
    let auth = match (configured, &http.tokens_file) {
        (Some(auth), None) => auth,
        (configured, Some(path)) => {
            let auth = configured.unwrap_or_else(|| Authenticator::new(Vec::new()));
            let count = auth.load_tokens_file(path).map_err(AppError::Tokens)?;
            tracing::info!(tokens = count, "tokens file loaded");
            spawn_tokens_reloader(auth.clone(), path.clone(), shutdown.clone());
            auth
        }
        (None, None) => {
            // A local run with no token configured still needs one: made up here and
            // shown once, on stdout only (never in the logs).
            let (auth, token) = Authenticator::generated().map_err(AppError::Serve)?;
            println!("hitl-orchestrator api key: {}", token.expose());
            tracing::warn!(
                "neither API_KEY nor API_TOKENS is set: generated an all-scopes token, \
                 printed once on standard output"
            );
            auth
        }
    };
    let auth = match jwt {
        Some(verifier) => auth.with_jwt(verifier),
        None => auth,
    };
    let listener = TcpListener::bind(http.listen_addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: http.listen_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    // Printed on stdout, apart from the logs, so scripts and tests can find the port.
    println!("hitl-orchestrator listening on http://{addr}");
    let site = public_url.map_or_else(|| format!("http://{addr}"), |u| u.origin().to_owned());
    println!("hitl-orchestrator console: {site}/console/");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "HTTP API listening");

    let service = Service::new(db.pool.clone(), engine.clone())
        .with_listen_pool(db.session_pool().clone())
        .with_shutdown(shutdown.clone());
    let state = AppState {
        service,
        auth: Arc::new(auth),
        max_body: http.max_body.0,
        body_timeout: http.http_body_timeout.0,
        console,
    };
    let limits = api::HttpLimits {
        header_timeout: http.http_header_timeout.0,
        body_timeout: http.http_body_timeout.0,
        write_timeout: http.http_write_timeout.0,
        max_connections: http.http_max_connections as usize,
    };
    let server = tokio::spawn(api::serve(listener, state, limits));
    shutdown.cancelled().await;
    match tokio::time::timeout(grace + Duration::from_millis(100), server).await {
        Ok(Ok(result)) => result.map_err(AppError::Serve),
        Ok(Err(join)) => Err(AppError::Serve(std::io::Error::other(join))),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish within the shutdown grace period"
            );
            Ok(())
        }
    }
}

/// Cancels `token` on the first Ctrl-C (SIGINT) or SIGTERM.
/// The JWT verifier the settings ask for, if any (the settings were checked at start;
/// the JWKS location is checked here).
fn jwt_verifier(
    http: &HttpArgs,
) -> Result<Option<std::sync::Arc<crate::identity::jwt::JwtVerifier>>, AppError> {
    use crate::identity::jwt::{ClaimNames, JwksSource, JwtSettings, JwtVerifier};
    let Some(url) = &http.jwks_url else {
        return Ok(None);
    };
    let jwks =
        JwksSource::parse(url).map_err(|why| AppError::Tokens(format!("HITL_JWKS_URL {why}")))?;
    let missing = || AppError::Tokens("HITL_JWT_ISSUER and HITL_JWT_AUDIENCE are required".into());
    Ok(Some(JwtVerifier::new(JwtSettings {
        jwks,
        issuer: http.jwt_issuer.clone().ok_or_else(missing)?,
        audience: http.jwt_audience.clone().ok_or_else(missing)?,
        claims: ClaimNames {
            id: http.jwt_claim_id.clone(),
            name: http.jwt_claim_name.clone(),
            email: http.jwt_claim_email.clone(),
            groups: http.jwt_claim_groups.clone(),
            scope: http.jwt_claim_scope.clone(),
        },
    })))
}

/// Reloads the tokens file on every SIGHUP: added tokens work and removed ones stop
/// without a restart; a file that does not parse is reported (its line named) and the
/// tokens in force stay as they were.
fn spawn_tokens_reloader(auth: Authenticator, path: std::path::PathBuf, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the tokens file will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hup.recv() => {}
            }
            match auth.load_tokens_file(&path) {
                Ok(count) => tracing::info!(tokens = count, "tokens file reloaded"),
                Err(why) => {
                    tracing::error!(error = %why, "tokens file not reloaded; the previous tokens stay in force")
                }
            }
        }
    });
}

fn spawn_signal_listener(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupt received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
        token.cancel();
    });
}
