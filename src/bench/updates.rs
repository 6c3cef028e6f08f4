//! How many row updates a measurement made per table, and how many of them were HOT
//! (heap-only: no new index entries), from `pg_stat_user_tables`. The queue and the
//! state tables are rewritten on every resume, so this ratio is what the queue's index
//! set and fillfactors are judged by (docs/BENCHMARKS.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use super::BenchError;

/// The tables a resume updates.
const TABLES: &[&str] = &[
    "apalis.jobs",
    "apalis.workers",
    "public.orchestrator_runs",
    "public.hitl_requests",
    "public.hitl_commands",
];

/// Cumulative `(n_tup_upd, n_tup_hot_upd)` per table at one moment.
pub(super) struct UpdateCounts(BTreeMap<String, (i64, i64)>);

impl UpdateCounts {
    /// The counts as of now, once every backend has reported its own; `None` unless
    /// `wanted` (`--updates`), since waiting for them takes 11 s.
    pub(super) async fn take(pool: &PgPool, wanted: bool) -> Result<Option<Self>, BenchError> {
        if !wanted {
            return Ok(None);
        }
        // A backend that flushed its statistics less than a second ago keeps the next ones
        // until it has been idle for 10 s (PostgreSQL's PGSTAT_IDLE_INTERVAL): wait that
        // long, or the pool's last transactions are missed (or counted in the next span).
        tokio::time::sleep(Duration::from_secs(11)).await;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "select schemaname || '.' || relname, n_tup_upd, n_tup_hot_upd \
             from pg_stat_user_tables where schemaname || '.' || relname = any($1)",
        )
        .bind(TABLES)
        .fetch_all(pool)
        .await?;
        Ok(Some(Self(
            rows.into_iter()
                .map(|(table, upd, hot)| (table, (upd, hot)))
                .collect(),
        )))
    }

    /// Updates and HOT updates per table between `before` and `after`, with their ratio
    /// (null when they were not taken).
    pub(super) fn between(before: Option<&Self>, after: Option<&Self>) -> Value {
        let (Some(before), Some(after)) = (before, after) else {
            return Value::Null;
        };
        let mut tables = serde_json::Map::new();
        for (table, (upd, hot)) in &after.0 {
            let (upd0, hot0) = before.0.get(table).copied().unwrap_or((0, 0));
            let (upd, hot) = (upd - upd0, hot - hot0);
            let ratio = if upd > 0 {
                json!(hot as f64 / upd as f64)
            } else {
                Value::Null
            };
            tables.insert(
                table.clone(),
                json!({ "updates": upd, "hot": hot, "hot_ratio": ratio }),
            );
        }
        Value::Object(tables)
    }
}
