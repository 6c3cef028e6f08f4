-- Who a command came from and which credential an audit event was made with: the
-- principal's name beside the operator. Additive; null for what came before, and for
-- events the system made on its own.
alter table hitl_commands add column if not exists principal text
    check (principal is null or length(principal) between 1 and 64);
alter table run_audit_events add column if not exists principal text
    check (principal is null or length(principal) between 1 and 64);
