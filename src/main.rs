//! The `hitl-orchestrator` binary: parse the command line, start logging, hand over to
//! the library's role, or run a benchmark (the binary's own `bench` module); the
//! operator's client commands go to the library's `cli`.

mod bench;

use clap::Parser;
use hitl_orchestrator::config::{Cli, Command};
use hitl_orchestrator::{app, cli, identity, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        e.exit();
    }
    if let Command::Client(command) = &cli.command {
        return cli::run(command).await;
    }
    if let Command::Token(args) = &cli.command {
        return match identity::token_entry(
            &args.name,
            &args.scopes,
            args.operator.as_deref(),
            args.operator_name.as_deref(),
        ) {
            Ok((token, entry)) => {
                println!(
                    "# The token, shown this once: give it to its holder, keep it nowhere else."
                );
                println!("{token}");
                println!("# Its entry for HITL_TOKENS_FILE (only the SHA-256 of the token):");
                print!("{entry}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let log_format = cli
        .command
        .common()
        .map_or(hitl_orchestrator::config::LogFormat::Text, |c| c.log_format);
    let telemetry = telemetry::init(log_format);
    let outcome = match &cli.command {
        Command::Role(role) => app::run(role).await.map_err(|e| e.to_string()),
        Command::Bench(args) => bench::run(args)
            .await
            .map(|result| println!("{result}"))
            .map_err(|e| format!("benchmark failed: {e}")),
        Command::Token(_) | Command::Client(_) => unreachable!("answered above"),
    };
    let code = match outcome {
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
