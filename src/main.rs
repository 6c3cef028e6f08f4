//! The `hitl-orchestrator` binary: parse the command line, start logging, hand over.

use clap::Parser;
use hitl_orchestrator::{app, config::Cli, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        e.exit();
    }
    telemetry::init(cli.command.common().log_format);
    match app::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hitl-orchestrator stopped with an error");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
