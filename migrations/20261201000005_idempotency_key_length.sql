-- An Idempotency-Key is 1 to 256 visible ASCII characters, as the API documents and
-- validates; the first migration's check allowed only 255, so a 256-character key was
-- accepted by the API and then refused by the database. Widening a check is additive:
-- every row the old check allowed, the new one allows.
alter table hitl_commands
    drop constraint if exists hitl_commands_idempotency_key_check,
    add constraint hitl_commands_idempotency_key_check
        check (length(idempotency_key) between 1 and 256);
