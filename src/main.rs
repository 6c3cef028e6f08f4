//! The `hitl-orchestrator` binary: parse the command line, start logging, hand over.

use clap::Parser;
use hitl_orchestrator::{app, config::Cli, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        e.exit();
    }
    let telemetry = telemetry::init(cli.command.common().log_format);
    let code = match app::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hitl-orchestrator stopped with an error");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    // The exporters' shutdown blocks until they flushed; they run on this runtime, so
    // wait for it from a blocking thread, and not forever.
    let flush = tokio::task::spawn_blocking(move || telemetry.shutdown());
    if tokio::time::timeout(std::time::Duration::from_secs(5), flush)
        .await
        .is_err()
    {
        eprintln!("warning: telemetry exporters did not flush within 5 s");
    }
    code
}
