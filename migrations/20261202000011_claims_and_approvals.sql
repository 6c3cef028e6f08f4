-- Claims and N-of-M approvals. Additive: columns, one table, four audit actions.

-- Who is working on a request: `{principal, operator: {id, displayName, email}}`, until
-- `claim_expires_at`. A lease ends by time alone: readers compare it with now(), so an
-- expired claim needs no writer to clear it.
alter table hitl_requests
    add column if not exists claimed_by jsonb
        check (claimed_by is null or jsonb_typeof(claimed_by) = 'object'),
    add column if not exists claim_expires_at timestamptz,
    -- Distinct approvals needed before the request resolves (null: one answer settles it).
    add column if not exists approvals_required integer
        check (approvals_required is null or approvals_required between 1 and 20),
    add constraint requests_claim_has_lease
        check ((claimed_by is null) = (claim_expires_at is null));

-- The approvals counted so far, one per approver: a bound credential counts as its
-- operator (`operator:<id>`), an act-as credential as itself (`principal:<name>`). The
-- primary key is what makes "the same approver twice" impossible, however many workers
-- apply commands at once.
create table if not exists hitl_approvals (
    request_id  text not null references hitl_requests (request_id),
    approver    text not null check (length(approver) between 1 and 300),
    command_id  text not null references hitl_commands (command_id),
    principal   text,
    operator    jsonb not null check (jsonb_typeof(operator) = 'object'),
    created_at  timestamptz not null default now(),
    primary key (request_id, approver)
);

-- The approver a resume counts as (set by the API from the credential; the worker cannot
-- tell a bound credential from an act-as one by the command alone).
alter table hitl_commands add column if not exists approver text
    check (approver is null or length(approver) between 1 and 300);

alter table run_audit_events
    drop constraint if exists run_audit_events_action_check,
    add constraint run_audit_events_action_check check (action in (
        'run_created', 'run_started', 'node_completed', 'hitl_requested',
        'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
        'run_failed', 'run_cancelled', 'rehydrate', 'retry', 'agent_unreachable',
        'request_claimed', 'request_released', 'claim_broken', 'approval_recorded'));
