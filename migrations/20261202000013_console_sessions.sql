-- The operator console's sign-in sessions. Additive: one table.
--
-- The browser holds a random session id in a cookie; only its SHA-256 is stored here, so
-- a copy of this table lets nobody in. The credential the operator signed in with is kept
-- sealed (ChaCha20-Poly1305) under a key derived from that id, which the database never
-- sees: every request re-checks the credential exactly as /api would (a revoked token or
-- an expired JWT ends the session), yet the table alone reveals no token.
create table if not exists console_sessions (
    session_hash       bytea primary key check (length(session_hash) = 32),
    -- nonce || ciphertext || tag of the credential.
    sealed_credential  bytea not null check (length(sealed_credential) between 29 and 20000),
    -- The credential's name, for the log and for listing sessions; not a secret.
    principal          text not null check (length(principal) between 1 and 300),
    -- The operator an act-as credential declared at sign-in (`{id, displayName}`); null for
    -- a credential bound to an operator (its binding decides, at every request).
    operator           jsonb check (operator is null or jsonb_typeof(operator) = 'object'),
    created_at         timestamptz not null default now(),
    expires_at         timestamptz not null,
    constraint console_sessions_expire_after_creation check (expires_at > created_at)
);

-- Sign-in deletes the sessions that have expired.
create index if not exists console_sessions_expires_idx on console_sessions (expires_at);
