//! The tamper-evident audit trail: every run's events form a hash chain, optionally
//! signed, and can be verified, listed for export, and chained after an upgrade.
//!
//! An event's `hash` is the SHA-256 of its canonical encoding ([`event_hash`]), which
//! includes the hash of the run's previous event (`prev_hash`), so an edited, deleted,
//! inserted or reordered event breaks the chain from there on. With a signing key
//! installed ([`install_signer`], from `HITL_AUDIT_SIGNING_KEY_FILE`) the hash is also
//! signed (Ed25519) and the event names the key (`key_id`, a fingerprint of the public
//! key), so a chain recomputed by someone without the key fails verification too, and
//! the public keys (`audit_signing_keys`, earlier ones kept) are all a verifier needs.
//! The run's lock, taken by every transition before it writes, orders the chain.
//!
//! Appending an event also enqueues its notifications, in the same transaction.
//!
//! The encoding lives here only — the writer, the backfill and the verifier share it —
//! so that what is checked is what was written.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, SubsecRound, Utc};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::{AuditEntry, PersistenceError};
use crate::domain::{AuditAction, CommandId, RequestId, RunId, RunStatus};

/// The version tag every hashed encoding starts with.
const ENCODING: &[u8] = b"hitl-audit-v1";

/// An Ed25519 key the service signs audit events with.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The private key in a PKCS#8 PEM file (`openssl genpkey -algorithm ed25519`).
    /// Errors name the file, never its content.
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The private key in PKCS#8 PEM.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| "not a PKCS#8 private key in PEM (BEGIN PRIVATE KEY)".to_owned())?;
        // `openssl genpkey` writes PKCS#8 v1 (no public key inside); ring derives it.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| format!("not an Ed25519 private key ({e})"))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    /// The public key's fingerprint, as events name it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn sign(&self, hash: &[u8]) -> Vec<u8> {
        self.pair.sign(hash).as_ref().to_vec()
    }
}

/// A public key's fingerprint: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &[u8]) -> String {
    hex(&Sha256::digest(public_key)[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The process's signing key: one per process, like its tracing set-up.
static SIGNER: RwLock<Option<Arc<Signer>>> = RwLock::new(None);

/// Signs every audit event this process writes from now on with `signer` (`None`: no
/// signature).
pub fn install_signer(signer: Option<Arc<Signer>>) {
    *SIGNER.write().unwrap_or_else(|e| e.into_inner()) = signer;
}

fn signer() -> Option<Arc<Signer>> {
    SIGNER.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records the installed key's public half, so that verifiers find it (kept forever:
/// events signed before a rotation still verify).
pub async fn register_signer(pool: &PgPool) -> Result<(), PersistenceError> {
    if let Some(s) = signer() {
        let mut session = crate::db::session(pool).await?;
        crate::db::query(
            "insert into audit_signing_keys (key_id, public_key) values ($1, $2) \
             on conflict (key_id) do nothing",
        )
        .bind(s.key_id())
        .bind(s.public_key())
        .execute(&mut *session)
        .await?;
        session.close().await?;
    }
    Ok(())
}

/// The fields of an event that its hash covers, in the order they are encoded.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ChainFields {
    pub prev_hash: Option<Vec<u8>>,
    pub run_id: String,
    pub run_version: i64,
    pub action: String,
    pub request_id: Option<String>,
    pub command_id: Option<String>,
    pub operator_id: Option<String>,
    pub operator_display_name: Option<String>,
    pub operator_email: Option<String>,
    pub principal: Option<String>,
    pub note: Option<String>,
    pub from_status: Option<String>,
    pub to_status: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub trace_id: Option<String>,
}

/// SHA-256 over `hitl-audit-v1` and each field in order, each field written as `0x00`
/// when null, else `0x01`, its length as 4 big-endian bytes, and its bytes: the previous
/// hash raw, integers in decimal, text as UTF-8, `details` as canonical JSON (object keys
/// sorted by their UTF-8 bytes, no white space, numbers and strings as serde_json writes
/// them), `created_at` as RFC 3339 in UTC with microseconds (`2026-12-02T08:00:00.123456Z`).
pub fn event_hash(f: &ChainFields) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENCODING);
    let mut field = |value: Option<&[u8]>| match value {
        None => h.update([0u8]),
        Some(bytes) => {
            h.update([1u8]);
            h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(bytes);
        }
    };
    let text = |s: &Option<String>| s.as_ref().map(|s| s.as_bytes().to_vec());
    let mut details = Vec::new();
    canonical_json(&f.details, &mut details);
    field(f.prev_hash.as_deref());
    field(Some(f.run_id.as_bytes()));
    field(Some(f.run_version.to_string().as_bytes()));
    field(Some(f.action.as_bytes()));
    for value in [
        &f.request_id,
        &f.command_id,
        &f.operator_id,
        &f.operator_display_name,
        &f.operator_email,
        &f.principal,
        &f.note,
        &f.from_status,
    ] {
        field(text(value).as_deref());
    }
    field(Some(f.to_status.as_bytes()));
    field(Some(&details));
    field(Some(
        f.created_at
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
            .as_bytes(),
    ));
    field(text(&f.trace_id).as_deref());
    h.finalize().into()
}

/// `value` with object keys sorted by their bytes and no white space, recursively.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                canonical_json(v, out);
            }
            out.push(b'}');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

/// The last hash this process appended for each run, with its run version: the chain
/// head a transition's next event most likely follows (the events of one transaction
/// follow each other). Only a guess: the insert checks it against the stored head.
static CHAIN_HEADS: std::sync::Mutex<Option<ChainHeads>> = std::sync::Mutex::new(None);

/// Run → (run version, hash) of the last event appended here.
type ChainHeads = std::collections::HashMap<RunId, (i64, Vec<u8>)>;

/// Runs remembered before the map is dropped and started afresh (finished runs leave it
/// that way).
const CHAIN_HEADS_KEPT: usize = 4096;

pub(super) fn remembered_head(run_id: &RunId, before_version: i64) -> Option<Vec<u8>> {
    let heads = CHAIN_HEADS.lock().unwrap_or_else(|p| p.into_inner());
    heads
        .as_ref()?
        .get(run_id)
        .filter(|(v, _)| *v + 1 == before_version)
        .map(|(_, h)| h.clone())
}

pub(super) fn remember_head(run_id: &RunId, version: i64, hash: &[u8]) {
    let mut heads = CHAIN_HEADS.lock().unwrap_or_else(|p| p.into_inner());
    let map = heads.get_or_insert_with(Default::default);
    if map.len() >= CHAIN_HEADS_KEPT && !map.contains_key(run_id) {
        map.clear();
    }
    map.insert(run_id.clone(), (version, hash.to_vec()));
}

pub(super) async fn stored_head(
    conn: &mut PgConnection,
    run_id: &RunId,
) -> Result<Option<Vec<u8>>, PersistenceError> {
    Ok(crate::db::query_scalar(
        "select hash from run_audit_events where run_id = $1 order by run_version desc limit 1",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?
    .flatten())
}

/// Appends one event to the run's chain (the caller holds the run's lock): the hash of
/// the run's latest event is its `prev_hash`, and with a key installed its hash is signed.
/// Returns its event id.
///
/// The head is read only when this process did not just write it: the insert is guarded
/// on the stored head being the `prev_hash` it hashed, so a remembered head that is not
/// the latest (its transaction rolled back, another process wrote since) inserts nothing,
/// and the event is hashed again over the head as read.
pub(super) async fn append(
    conn: &mut PgConnection,
    run_id: &RunId,
    e: AuditEntry<'_>,
) -> Result<i64, PersistenceError> {
    let created_at = Utc::now().trunc_subsecs(6);
    if let Some(head) = remembered_head(run_id, e.run_version)
        && let Some(id) = try_append(conn, run_id, &e, Some(head), created_at).await?
    {
        return Ok(id);
    }
    append_over_stored_head(conn, run_id, &e, created_at).await
}

/// Appends the event over the head as stored (the caller holds the run's lock, so it
/// cannot move).
async fn append_over_stored_head(
    conn: &mut PgConnection,
    run_id: &RunId,
    e: &AuditEntry<'_>,
    created_at: DateTime<Utc>,
) -> Result<i64, PersistenceError> {
    let head = stored_head(conn, run_id).await?;
    try_append(conn, run_id, e, head, created_at)
        .await?
        .ok_or_else(|| {
            PersistenceError::Database(sqlx::Error::Protocol(
                "the audit chain's head moved under the run's lock".into(),
            ))
        })
}

/// Inserts the event over `prev_hash` if that is the stored head, with the deliveries of
/// the channels that want it and their jobs, in one statement; `None` if it is not.
async fn try_append(
    conn: &mut PgConnection,
    run_id: &RunId,
    e: &AuditEntry<'_>,
    prev_hash: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
) -> Result<Option<i64>, PersistenceError> {
    let fields = chain_fields(run_id, e, prev_hash, created_at);
    let hash = event_hash(&fields);
    let (signature, key_id) = signature_of(&hash);
    let event = e.action.map(|a| a.event_name());
    let facets = super::notifications::EventFacets::of(&fields.details);
    let trace =
        crate::telemetry::current_trace_context().map(|c| serde_json::json!({ "trace": c }));
    let id: Option<i64> = crate::db::query_scalar(sqlx::AssertSqlSafe(append_sql()))
        .bind(run_id)
        .bind(e.run_version)
        .bind(e.action)
        .bind(e.request_id)
        .bind(e.command_id)
        .bind(&fields.operator_id)
        .bind(&fields.operator_display_name)
        .bind(&fields.operator_email)
        .bind(e.note)
        .bind(e.from_status)
        .bind(e.to_status)
        .bind(&fields.details)
        .bind(e.principal)
        .bind(fields.created_at)
        .bind(&fields.trace_id)
        .bind(&fields.prev_hash)
        .bind(hash.as_slice())
        .bind(signature)
        .bind(key_id)
        .bind(event)
        .bind(facets.node_id)
        .bind(serde_json::json!(facets.named))
        .bind(facets.notice_seconds)
        .bind(trace)
        .bind(super::queue::DEFAULT_MAX_ATTEMPTS)
        .fetch_one(&mut *conn)
        .await?;
    if id.is_some() {
        remember_head(run_id, e.run_version, &hash);
    }
    Ok(id)
}

/// The statement [`try_append`] runs: the event's columns `$1`–`$19` (inserted only over
/// the stored head `$16`), its name, node, named channels and notice period `$20`–`$23`
/// for the deliveries, whose jobs carry the trace `$24` and max attempts `$25`.
fn append_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "with event as ( \
                 insert into run_audit_events (run_id, run_version, action, request_id, \
                     command_id, operator_id, operator_display_name, operator_email, note, \
                     from_status, to_status, details, principal, created_at, trace_id, \
                     prev_hash, hash, signature, key_id) \
                 select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19 \
                 where (select hash from run_audit_events where run_id = $1 \
                        order by run_version desc limit 1) is not distinct from $16 \
                 returning event_id, run_version, request_id), \
             raised as (select null::text as request_id, null::text as node_id, \
                 null::jsonb as assignees where false), \
             {} \
             select (select event_id from event)",
            super::notifications::deliveries_cte(
                "cross join (select $20::text, $21::text, $22::jsonb, $23::int) \
                     as f(name, node_id, named, notice_seconds)",
                "$24",
                "$25",
            )
        )
    })
}

/// What an event's hash covers, for `e` over `prev_hash` at `created_at`.
pub(super) fn chain_fields(
    run_id: &RunId,
    e: &AuditEntry<'_>,
    prev_hash: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
) -> ChainFields {
    ChainFields {
        prev_hash,
        run_id: run_id.to_string(),
        run_version: e.run_version,
        action: e.action.map(|a| a.as_str()).unwrap_or_default().to_owned(),
        request_id: e.request_id.map(ToString::to_string),
        command_id: e.command_id.map(ToString::to_string),
        operator_id: e.operator.map(|o| o.id.clone()),
        operator_display_name: e.operator.and_then(|o| o.display_name.clone()),
        operator_email: e.operator.and_then(|o| o.email.clone()),
        principal: e.principal.map(str::to_owned),
        note: e.note.map(str::to_owned),
        from_status: e.from_status.map(|s| s.as_str().to_owned()),
        to_status: e
            .to_status
            .map(|s| s.as_str())
            .unwrap_or_default()
            .to_owned(),
        details: e
            .details
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default())),
        // Stored to the microsecond, as hashed.
        created_at,
        trace_id: crate::telemetry::current_trace_id(),
    }
}

/// The installed key's signature of `hash` and the key's id (both `None` without a key).
pub(super) fn signature_of(hash: &[u8]) -> (Option<Vec<u8>>, Option<String>) {
    match signer() {
        Some(s) => (Some(s.sign(hash)), Some(s.key_id().to_owned())),
        None => (None, None),
    }
}

const CHAIN_COLUMNS: &str = "prev_hash, run_id, run_version, action, request_id, command_id, \
    operator_id, operator_display_name, operator_email, principal, note, from_status, to_status, \
    details, created_at, trace_id";

/// An event as the chain sees it: what its hash covers, and what was stored.
#[derive(sqlx::FromRow)]
struct ChainedRow {
    event_id: i64,
    #[sqlx(flatten)]
    fields: ChainFields,
    hash: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    key_id: Option<String>,
}

/// Chains every event written without a hash (before this version, or by seeding),
/// run by run under each run's lock, a page of runs at a time; signs them when a key is
/// installed. Returns how many events it chained. Run by every role at start, after the
/// migrations: it finds nothing to do in one index lookup once everything is chained.
pub async fn chain_unhashed(pool: &PgPool) -> Result<u64, PersistenceError> {
    let mut chained = 0;
    loop {
        let mut tx = pool.begin().await?;
        let runs: Vec<RunId> = crate::db::query_scalar(
            "select distinct run_id from (select run_id from run_audit_events \
             where hash is null order by run_id limit 500) u",
        )
        .fetch_all(&mut *tx)
        .await?;
        if runs.is_empty() {
            tx.commit().await?;
            return Ok(chained);
        }
        crate::db::query(
            "select 1 from orchestrator_runs where run_id = any($1) order by run_id \
             for no key update",
        )
        .bind(&runs)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<ChainedRow> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
            "select event_id, {CHAIN_COLUMNS}, hash, signature, key_id from run_audit_events \
             where run_id = any($1) order by run_id, run_version"
        )))
        .bind(&runs)
        .fetch_all(&mut *tx)
        .await?;
        let signer = signer();
        let (mut ids, mut prevs, mut hashes, mut signatures, mut keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut previous: Option<(String, Vec<u8>)> = None;
        for row in rows {
            let prev = previous
                .as_ref()
                .filter(|(run, _)| *run == row.fields.run_id)
                .map(|(_, h)| h.clone());
            let hash = match row.hash {
                Some(h) => h,
                None => {
                    let mut fields = row.fields.clone();
                    fields.prev_hash = prev.clone();
                    let hash = event_hash(&fields).to_vec();
                    ids.push(row.event_id);
                    prevs.push(prev);
                    signatures.push(signer.as_ref().map(|s| s.sign(&hash)));
                    keys.push(signer.as_ref().map(|s| s.key_id().to_owned()));
                    hashes.push(hash.clone());
                    hash
                }
            };
            previous = Some((row.fields.run_id, hash));
        }
        chained += ids.len() as u64;
        crate::db::query(
            "update run_audit_events e set prev_hash = u.prev, hash = u.hash, \
                 signature = u.signature, key_id = u.key_id \
             from unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[]) \
                 as u(id, prev, hash, signature, key_id) \
             where e.event_id = u.id",
        )
        .bind(&ids)
        .bind(&prevs)
        .bind(&hashes)
        .bind(&signatures)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
}

/// Where a run's chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainBreak {
    /// What is wrong: `altered` (an event's content no longer matches its hash),
    /// `out_of_order` (an event does not follow the one before it: inserted, reordered or
    /// one deleted before it), `missing` (a version has no event, or the run's latest
    /// events are gone), `unchained` (an event has no hash yet), `bad_signature`,
    /// `unknown_key`, `unsigned` (written while the service was signing, yet unsigned).
    pub problem: &'static str,
    /// The run version of the first event at fault (or where one is missing).
    pub run_version: i64,
    /// That event's id, when there is one.
    pub event_id: Option<i64>,
    /// For people.
    pub message: String,
}

/// The verdict on one run's audit chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub run_id: RunId,
    /// Every event present, in order, unaltered, and signed where it should be.
    pub intact: bool,
    /// Events checked.
    pub events: i64,
    /// Of those, how many carry a valid signature.
    pub signed: i64,
    /// The first break found (`null` when intact).
    pub broken: Option<ChainBreak>,
}

/// A public key events may be signed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    pub key_id: String,
    /// The raw Ed25519 public key, 32 bytes in hex.
    #[sqlx(skip)]
    pub public_key_hex: String,
    #[serde(skip)]
    pub public_key: Vec<u8>,
    pub first_used_at: DateTime<Utc>,
}

/// Every public key the service has signed with, oldest first.
pub async fn signing_keys(conn: &mut PgConnection) -> Result<Vec<SigningKey>, PersistenceError> {
    let mut keys: Vec<SigningKey> = crate::db::query_as(
        "select key_id, public_key, first_used_at from audit_signing_keys \
         order by first_used_at, key_id",
    )
    .fetch_all(conn)
    .await?;
    for k in &mut keys {
        k.public_key_hex = hex(&k.public_key);
    }
    Ok(keys)
}

/// Verifies run `run_id`'s chain against `keys`; `None` when there is no such run.
pub async fn verify_run(
    conn: &mut PgConnection,
    run_id: &RunId,
    keys: &[SigningKey],
) -> Result<Option<Verification>, PersistenceError> {
    let run: Option<(i64,)> =
        crate::db::query_as("select version from orchestrator_runs where run_id = $1")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((version,)) = run else {
        return Ok(None);
    };
    let rows: Vec<ChainedRow> = crate::db::query_as(sqlx::AssertSqlSafe(format!(
        "select event_id, {CHAIN_COLUMNS}, hash, signature, key_id from run_audit_events \
         where run_id = $1 order by run_version, event_id"
    )))
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(check_chain(run_id, version, &rows, keys)))
}

fn check_chain(
    run_id: &RunId,
    version: i64,
    rows: &[ChainedRow],
    keys: &[SigningKey],
) -> Verification {
    let mut verdict = Verification {
        run_id: run_id.clone(),
        intact: true,
        events: rows.len() as i64,
        signed: 0,
        broken: None,
    };
    let fail = |problem: &'static str, run_version: i64, event_id: Option<i64>, message: String| {
        ChainBreak {
            problem,
            run_version,
            event_id,
            message,
        }
    };
    let mut previous_hash: Option<&[u8]> = None;
    let mut expected_version = 1;
    let mut found = None;
    for row in rows {
        let v = row.fields.run_version;
        let id = Some(row.event_id);
        if v != expected_version {
            found = Some(if v > expected_version {
                fail(
                    "missing",
                    expected_version,
                    None,
                    format!("no event at version {expected_version} (the next is at version {v})"),
                )
            } else {
                fail(
                    "out_of_order",
                    v,
                    id,
                    format!("event {} repeats version {v}", row.event_id),
                )
            });
            break;
        }
        let Some(stored) = row.hash.as_deref() else {
            found = Some(fail(
                "unchained",
                v,
                id,
                format!(
                    "event {} has no hash yet (written before the chain existed)",
                    row.event_id
                ),
            ));
            break;
        };
        if row.fields.prev_hash.as_deref() != previous_hash {
            found = Some(fail(
                "out_of_order",
                v,
                id,
                format!(
                    "event {} at version {v} does not follow the event before it",
                    row.event_id
                ),
            ));
            break;
        }
        if event_hash(&row.fields).as_slice() != stored {
            found = Some(fail(
                "altered",
                v,
                id,
                format!(
                    "event {} at version {v} no longer matches its hash",
                    row.event_id
                ),
            ));
            break;
        }
        match (&row.signature, &row.key_id) {
            (Some(signature), Some(key_id)) => match keys.iter().find(|k| &k.key_id == key_id) {
                None => {
                    found = Some(fail(
                        "unknown_key",
                        v,
                        id,
                        format!(
                            "event {} is signed with key {key_id}, which is not listed",
                            row.event_id
                        ),
                    ));
                    break;
                }
                Some(key) => {
                    if UnparsedPublicKey::new(&ED25519, &key.public_key)
                        .verify(stored, signature)
                        .is_err()
                    {
                        found = Some(fail(
                            "bad_signature",
                            v,
                            id,
                            format!(
                                "event {}'s signature does not verify with key {key_id}",
                                row.event_id
                            ),
                        ));
                        break;
                    }
                    verdict.signed += 1;
                }
            },
            _ => {
                if keys
                    .iter()
                    .any(|k| k.first_used_at <= row.fields.created_at)
                {
                    found = Some(fail(
                        "unsigned",
                        v,
                        id,
                        format!(
                            "event {} is not signed, but the service was signing when it was written",
                            row.event_id
                        ),
                    ));
                    break;
                }
            }
        }
        previous_hash = Some(stored);
        expected_version += 1;
    }
    if found.is_none() && expected_version <= version {
        found = Some(fail(
            "missing",
            expected_version,
            None,
            format!(
                "the run is at version {version} but its events end at version {}",
                expected_version - 1
            ),
        ));
    }
    if let Some(b) = found {
        verdict.intact = false;
        verdict.broken = Some(b);
    }
    verdict
}

/// Verifies a page of runs in run id order, after `after`: the verdicts and the cursor of
/// the next page (`None` at the end). Memory stays bounded by the page.
pub async fn verify_page(
    conn: &mut PgConnection,
    after: Option<&RunId>,
    limit: i64,
) -> Result<(Vec<Verification>, Option<RunId>), PersistenceError> {
    let keys = signing_keys(conn).await?;
    let runs: Vec<RunId> = crate::db::query_scalar(
        "select run_id from orchestrator_runs where run_id > coalesce($1, '') \
         order by run_id limit $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut verdicts = Vec::with_capacity(runs.len());
    for run in &runs {
        if let Some(v) = verify_run(conn, run, &keys).await? {
            verdicts.push(v);
        }
    }
    let next = (runs.len() as i64 == limit)
        .then(|| runs.last().cloned())
        .flatten();
    Ok((verdicts, next))
}

/// One audit event in full, as exported: what the run's `auditLog` shows, with its
/// chain (hashes and signature in hex) and trace id.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedEvent {
    pub event_id: i64,
    #[serde(skip)]
    pub tx: i64,
    pub run_id: RunId,
    pub run_version: i64,
    pub action: AuditAction,
    pub request_id: Option<RequestId>,
    pub command_id: Option<CommandId>,
    pub operator_id: Option<String>,
    pub operator_display_name: Option<String>,
    pub operator_email: Option<String>,
    pub principal: Option<String>,
    pub note: Option<String>,
    pub from_status: Option<RunStatus>,
    pub to_status: RunStatus,
    pub details: Value,
    pub at: DateTime<Utc>,
    pub trace_id: Option<String>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
    pub signature: Option<String>,
    pub key_id: Option<String>,
}

/// Events after stream position `after`, up to the horizon, in stream order (at most
/// `limit`): the same commit-safe order as the live stream (`events`), so a page never
/// skips an event that commits late.
pub async fn export_after(
    conn: &mut PgConnection,
    after: super::events::StreamPosition,
    limit: i64,
) -> Result<Vec<ExportedEvent>, PersistenceError> {
    Ok(crate::db::query_as(
        "select event_id, tx_id::text::bigint as tx, run_id, run_version, action, request_id, \
             command_id, operator_id, operator_display_name, operator_email, principal, note, \
             from_status, to_status, details, created_at as at, trace_id, \
             encode(prev_hash, 'hex') as prev_hash, encode(hash, 'hex') as hash, \
             encode(signature, 'hex') as signature, key_id \
         from run_audit_events \
         where (tx_id, event_id) > ($1::text::xid8, $2) \
           and tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         order by tx_id, event_id limit $3",
    )
    .bind(after.0.to_string())
    .bind(after.1)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> ChainFields {
        ChainFields {
            prev_hash: None,
            run_id: "run_1".into(),
            run_version: 1,
            action: "run_created".into(),
            request_id: None,
            command_id: None,
            operator_id: None,
            operator_display_name: None,
            operator_email: None,
            principal: Some("ci".into()),
            note: None,
            from_status: None,
            to_status: "queued".into(),
            details: json!({ "b": [1, 2.5, "x"], "a": { "z": null, "é": true } }),
            created_at: DateTime::parse_from_rfc3339("2026-12-02T08:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            trace_id: None,
        }
    }

    #[test]
    fn details_are_encoded_with_sorted_keys_and_no_white_space() {
        let mut out = Vec::new();
        canonical_json(&fields().details, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"z":null,"é":true},"b":[1,2.5,"x"]}"#
        );
    }

    #[test]
    fn every_field_counts_and_null_differs_from_empty() {
        let base = event_hash(&fields());
        assert_eq!(base, event_hash(&fields()), "deterministic");
        let mut f = fields();
        f.note = Some(String::new());
        assert_ne!(event_hash(&f), base, "an empty note is not no note");
        let mut f = fields();
        f.principal = None;
        f.note = Some("ci".into());
        assert_ne!(event_hash(&f), base, "a value moved to another field");
        let mut f = fields();
        f.created_at += chrono::Duration::microseconds(1);
        assert_ne!(event_hash(&f), base);
        let mut f = fields();
        f.prev_hash = Some(vec![0; 32]);
        assert_ne!(event_hash(&f), base);
    }

    #[test]
    fn a_pkcs8_pem_key_signs_and_its_fingerprint_names_it() {
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1), made for this test.
        let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIMuyf7K1et6Uqqmz+0CVAJqJQWW/LX4J8W2EnwznH6tW\n-----END PRIVATE KEY-----\n";
        let signer = Signer::from_pem(pem).unwrap();
        assert_eq!(signer.key_id().len(), 16);
        let hash = event_hash(&fields());
        let signature = signer.sign(&hash);
        assert!(
            UnparsedPublicKey::new(&ED25519, signer.public_key())
                .verify(&hash, &signature)
                .is_ok()
        );
        assert!(Signer::from_pem(b"not a key").is_err());
    }
}
