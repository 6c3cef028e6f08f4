//! The operator's client: the `pending`, `show`, `resume`, `remove`, `retry`, `claim`,
//! `unclaim`, `watch` and `completions` commands of the binary, which talk to a running service over its HTTP
//! API — the same contract as curl, with scriptable output (`--output json`), stable exit
//! codes ([`EXIT_CODES`](crate::config::client::EXIT_CODES)) and safe retries (one
//! `Idempotency-Key` per decision, reused when a network error interrupts a call).
//!
//! It knows the command line, the ids and statuses of `domain`, and the API's JSON; it
//! never reaches the database or the engine, so it runs anywhere the API is reachable.

mod audit;
mod commands;
mod http;
mod render;
mod resume;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::config::client::{AuditCommand, ClientCommand, OutputFormat};
use http::{Client, Reply};

/// Runs one client command and says how it ended (see `EXIT_CODES`).
pub async fn run(command: &ClientCommand) -> ExitCode {
    let output = command
        .client()
        .map_or(OutputFormat::Table, |client| client.output);
    let outcome = match command {
        ClientCommand::Completions(args) => {
            use clap::CommandFactory;
            let mut cli = crate::config::Cli::command();
            clap_complete::generate(
                args.shell,
                &mut cli,
                "hitl-orchestrator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        other => match other.client().map(Client::new) {
            Some(Ok(client)) => dispatch(&client, other).await.map_err(|f| match f {
                Failure::Api(reply) if reply.status == 401 && !client.has_token() => {
                    Failure::Unauthenticated(reply)
                }
                f => f,
            }),
            Some(Err(failure)) => Err(failure),
            None => Ok(()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report(output);
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn dispatch(client: &Client, command: &ClientCommand) -> Result<(), Failure> {
    match command {
        ClientCommand::Pending(args) => commands::pending(client, args).await,
        ClientCommand::Show(args) => commands::show(client, args).await,
        ClientCommand::Resume(args) => commands::resume(client, args).await,
        ClientCommand::Remove(args) => commands::remove(client, args).await,
        ClientCommand::Retry(args) => commands::retry(client, args).await,
        ClientCommand::Claim(args) => commands::claim(client, args).await,
        ClientCommand::Unclaim(args) => commands::unclaim(client, args).await,
        ClientCommand::Audit(AuditCommand::Verify(args)) => audit::verify(client, args).await,
        ClientCommand::Audit(AuditCommand::Export(args)) => audit::export(client, args).await,
        ClientCommand::Watch(args) => watch::watch(client, args).await,
        ClientCommand::Completions(_) => Ok(()),
    }
}

/// Why a client command did not do what it was asked; each maps to one exit code.
#[derive(Debug)]
pub enum Failure {
    /// A flag or argument is wrong or missing (2).
    Usage(String),
    /// What was given cannot be sent: an id of the wrong form (8).
    Invalid(String),
    /// The service refused or failed the call: its error answer.
    Api(Box<Reply>),
    /// A 401 to a client that was given no token (5).
    Unauthenticated(Box<Reply>),
    /// The network failed, or the service stayed unavailable, after the retries (6).
    Network(String),
    /// A waited-for command was rejected (3): the command as the API shows it.
    Rejected(Value),
    /// A waited-for command failed for good (7).
    CommandFailed(Value),
    /// `--wait` ran out before the command's outcome (9).
    Unfinished(Value),
    /// `audit verify` found a broken chain (10); the verdicts were printed.
    Tampered(String),
}

impl Failure {
    /// The process's exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Invalid(_) => 8,
            Failure::Api(reply) => match reply.status {
                409 => 3,
                404 => 4,
                401 | 403 => 5,
                502..=504 => 6,
                400..=499 => 8,
                _ => 7,
            },
            Failure::Network(_) => 6,
            Failure::Unauthenticated(_) => 5,
            // A refusal of the answer itself (it no longer fits the request) is invalid
            // input; every other refusal is a conflict.
            Failure::Rejected(c) => {
                match serde_json::from_value::<crate::domain::Refusal>(c["outcome"].clone()) {
                    Ok(refusal) if !refusal.is_conflict() => 8,
                    _ => 3,
                }
            }
            Failure::CommandFailed(_) => 7,
            Failure::Unfinished(_) => 9,
            Failure::Tampered(_) => 10,
        }
    }

    /// A sentence on stderr; with `--output json`, also the API's answer on stdout, so a
    /// script reads the details (`details.winner`, the command) as JSON.
    fn report(&self, output: OutputFormat) {
        let json = match self {
            Failure::Api(reply) | Failure::Unauthenticated(reply) => Some(&reply.body),
            Failure::Rejected(c) | Failure::CommandFailed(c) | Failure::Unfinished(c) => Some(c),
            Failure::Usage(_)
            | Failure::Invalid(_)
            | Failure::Network(_)
            | Failure::Tampered(_) => None,
        };
        if output == OutputFormat::Json
            && let Some(body) = json
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{body}");
        }
        eprintln!("error: {}", self.message());
    }

    fn message(&self) -> String {
        match self {
            Failure::Usage(m)
            | Failure::Invalid(m)
            | Failure::Network(m)
            | Failure::Tampered(m) => m.clone(),
            Failure::Api(reply) => render::api_error(reply),
            Failure::Unauthenticated(reply) => format!(
                "{}; no token was given: use --token-file (HITL_TOKEN_FILE) or --token \
                 (HITL_TOKEN)",
                render::api_error(reply)
            ),
            Failure::Rejected(c) => format!(
                "command {} was rejected: {}",
                c["commandId"].as_str().unwrap_or("?"),
                render::refusal(c)
            ),
            Failure::CommandFailed(c) => format!(
                "command {} failed: {}",
                c["commandId"].as_str().unwrap_or("?"),
                c["error"].as_str().unwrap_or("no reason recorded")
            ),
            Failure::Unfinished(c) => format!(
                "--wait ran out: command {} is still {}; follow it with `hitl-orchestrator show {}`",
                c["commandId"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("queued"),
                c["commandId"].as_str().unwrap_or("?"),
            ),
        }
    }
}

/// Prints `value` as the command's JSON result, one document.
fn print_json(value: &Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(status: u16) -> Failure {
        Failure::Api(Box::new(Reply {
            status,
            headers: Default::default(),
            body: json!({}),
        }))
    }

    #[test]
    fn each_answer_has_the_exit_code_the_help_states() {
        for (status, code) in [
            (409, 3),
            (404, 4),
            (401, 5),
            (403, 5),
            (503, 6),
            (500, 7),
            (422, 8),
            (400, 8),
            (413, 8),
        ] {
            assert_eq!(api(status).exit_code(), code, "{status}");
        }
        let conflict = json!({ "outcome": { "reason": "not_pending", "message": "settled" } });
        assert_eq!(Failure::Rejected(conflict).exit_code(), 3);
        let misfit = json!({ "outcome": { "reason": "invalid_response", "message": "no",
                                          "field": "responses[0].optionId" } });
        assert_eq!(Failure::Rejected(misfit).exit_code(), 8);
        assert_eq!(Failure::Unfinished(json!({})).exit_code(), 9);
        assert_eq!(Failure::Network(String::new()).exit_code(), 6);
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
    }
}
