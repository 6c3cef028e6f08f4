-- A tamper-evident audit trail: each run's events form a hash chain (`prev_hash` is the
-- hash of the run's previous event, `hash` the SHA-256 of this one's canonical encoding,
-- docs/ARCHITECTURE.md "The audit chain"), optionally signed with an Ed25519 key
-- (`signature` over `hash`, `key_id` its public key's fingerprint), and the trace id of
-- the request or job that caused it. Additive: events written before have no hash until
-- the service chains them at its next start (`persistence::audit::chain_unhashed`, run
-- after migrations by every role), since the canonical encoding lives in Rust, beside
-- the verifier.
alter table run_audit_events
    add column if not exists prev_hash bytea
        check (prev_hash is null or octet_length(prev_hash) = 32),
    add column if not exists hash bytea
        check (hash is null or octet_length(hash) = 32),
    add column if not exists signature bytea
        check (signature is null or octet_length(signature) = 64),
    add column if not exists key_id text
        check (key_id is null or key_id ~ '^[0-9a-f]{16}$'),
    add column if not exists trace_id text
        check (trace_id is null or trace_id ~ '^[0-9a-f]{32}$'),
    add constraint audit_signature_has_key check ((signature is null) = (key_id is null)),
    add constraint audit_signed_events_are_chained check (signature is null or hash is not null);

-- What is still to chain (empty once every event is).
create index if not exists run_audit_events_unchained_idx on run_audit_events (run_id, run_version)
    where hash is null;

-- Every public key the service has signed with: earlier keys stay, so events signed
-- before a rotation still verify.
create table if not exists audit_signing_keys (
    key_id        text primary key check (key_id ~ '^[0-9a-f]{16}$'),
    public_key    bytea not null check (octet_length(public_key) = 32),
    first_used_at timestamptz not null default now()
);
