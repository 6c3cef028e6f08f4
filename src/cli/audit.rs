//! `audit verify` and `audit export`: the tamper-evident audit trail from a terminal.
//! Verifying every run pages through them on the service (a page of runs per call), and
//! the export pages through events by their commit-safe position, so both run in bounded
//! memory however long the trail.

use std::time::Duration;

use serde_json::Value;

use super::http::{Call, Client};
use super::{Failure, print_json};
use crate::config::client::{AuditExportArgs, AuditVerifyArgs, OutputFormat};
use crate::domain::RunId;

/// Events per export call.
const EXPORT_PAGE: &str = "1000";
/// How often `--follow` asks for new events once it has caught up.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// `audit verify --run ID` or `--all`.
pub async fn verify(client: &Client, args: &AuditVerifyArgs) -> Result<(), Failure> {
    let output = args.client.output;
    let mut broken = Vec::new();
    let mut checked = 0u64;
    if let Some(raw) = &args.run {
        let run = RunId::parse(raw).map_err(|e| Failure::Invalid(format!("--run: `{raw}` {e}")))?;
        let path = format!("/api/runs/{run}/audit/verify");
        let verdict = client.send(&Call::get(&path)).await?.success()?.body;
        show(&verdict, output, &mut broken);
        checked = 1;
    } else {
        let mut after: Option<String> = None;
        loop {
            let mut call = Call::get("/api/audit/verify");
            if let Some(a) = &after {
                call.query.push(("after", a.clone()));
            }
            let page = client.send(&call).await?.success()?.body;
            for verdict in page["items"].as_array().into_iter().flatten() {
                show(verdict, output, &mut broken);
                checked += 1;
            }
            match page["nextCursor"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
    }
    if broken.is_empty() {
        if output == OutputFormat::Table && args.all {
            println!("{checked} runs checked: every chain is intact");
        }
        return Ok(());
    }
    Err(Failure::Tampered(format!(
        "{} of {checked} runs have a broken audit chain: {}",
        broken.len(),
        broken.join(", ")
    )))
}

/// Prints one verdict (a line, or its JSON) and notes a broken run.
fn show(verdict: &Value, output: OutputFormat, broken: &mut Vec<String>) {
    let run = verdict["runId"].as_str().unwrap_or("?");
    let intact = verdict["intact"] == true;
    if !intact {
        broken.push(run.to_owned());
    }
    match output {
        OutputFormat::Json => print_json(verdict),
        OutputFormat::Table if intact => println!(
            "{run}  intact  {} events, {} signed",
            verdict["events"], verdict["signed"]
        ),
        OutputFormat::Table => println!(
            "{run}  BROKEN  {} at version {}: {}",
            verdict["broken"]["problem"].as_str().unwrap_or("?"),
            verdict["broken"]["runVersion"],
            verdict["broken"]["message"].as_str().unwrap_or("")
        ),
    }
}

/// `audit export [--after ID] [--follow]`: NDJSON on stdout, whatever `--output` says
/// (an export is for machines; `watch` is the one for people).
pub async fn export(client: &Client, args: &AuditExportArgs) -> Result<(), Failure> {
    let mut after = args.after;
    loop {
        let mut call = Call::get("/api/audit");
        call.query.push(("after", after.to_string()));
        call.query.push(("limit", EXPORT_PAGE.to_owned()));
        let page = client.send(&call).await?.success()?.body;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for event in &items {
            print_json(event);
        }
        if let Some(last) = items.last().and_then(|e| e["eventId"].as_u64()) {
            after = last;
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}
