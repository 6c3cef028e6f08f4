-- Orchestrator state: briefs, runs, HITL requests and responses, commands, audit trail.
-- Ids are prefixed UUIDv7 strings (run_…, brief_…, hitl_req_…, hitl_resp_…, cmd_…);
-- thread ids may also be chosen by clients. Every status and enum is a CHECK constraint,
-- every reference a foreign key. Migrations are additive: never edit this file once
-- shipped, add a new one.

create table briefs (
    brief_id    text primary key check (brief_id like 'brief\_%'),
    title       text not null check (length(title) between 1 and 500),
    content     jsonb not null default '{}'::jsonb,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table orchestrator_runs (
    run_id             text primary key check (run_id like 'run\_%'),
    thread_id          text not null unique check (length(thread_id) between 1 and 256),
    brief_id           text not null references briefs (brief_id),
    status             text not null default 'queued' check (status in
                           ('queued', 'running', 'awaiting_hitl', 'completed', 'failed', 'cancelled')),
    -- Why the run ended as it did (a failure message, a cancellation reason).
    status_reason      text,
    plan               jsonb not null check (jsonb_typeof(plan) = 'object'),
    execution_context  jsonb not null default '{}'::jsonb check (jsonb_typeof(execution_context) = 'object'),
    runner_metadata    jsonb not null default '{}'::jsonb check (jsonb_typeof(runner_metadata) = 'object'),
    pending_request_id text,
    -- Bumped by every transition: the fencing token and optimistic-concurrency check.
    version            bigint not null default 1 check (version >= 1),
    rehydrated_at      timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    finished_at        timestamptz,
    -- A run waits on a human exactly when it has a pending request.
    constraint runs_pending_request_iff_awaiting
        check ((status = 'awaiting_hitl') = (pending_request_id is not null)),
    constraint runs_finished_iff_terminal
        check ((status in ('completed', 'failed', 'cancelled')) = (finished_at is not null)),
    -- Targets of the composite foreign keys below, which keep denormalised copies honest.
    unique (run_id, thread_id, brief_id)
);

create index orchestrator_runs_brief_idx on orchestrator_runs (brief_id);
-- Rescans and sweeps page through the runs that are not finished.
create index orchestrator_runs_active_idx on orchestrator_runs (run_id)
    where status in ('queued', 'running', 'awaiting_hitl');
-- The sweep looks only at runs that should be moving.
create index orchestrator_runs_moving_idx on orchestrator_runs (updated_at)
    where status in ('queued', 'running');

create table hitl_requests (
    request_id       text primary key check (request_id like 'hitl\_req\_%'),
    run_id           text not null,
    thread_id        text not null,
    brief_id         text not null,
    node_id          text not null check (length(node_id) between 1 and 200),
    operator_prompt  text not null check (length(operator_prompt) >= 1),
    response_types   text[] not null check (
                         cardinality(response_types) >= 1
                         and response_types <@ array['approval', 'rejection', 'option', 'freeform']),
    options          jsonb not null default '[]'::jsonb check (jsonb_typeof(options) = 'array'),
    contract_summary jsonb not null default '{}'::jsonb check (jsonb_typeof(contract_summary) = 'object'),
    status           text not null default 'pending' check (status in
                         ('pending', 'resolved', 'denied', 'expired', 'cancelled')),
    denial_reason    text,
    expires_at       timestamptz,
    -- What the deadline does when it passes (the node's onTimeout).
    on_timeout       text check (on_timeout in ('reject', 'approve', 'cancel')),
    created_at       timestamptz not null default now(),
    resolved_at      timestamptz,
    resolved_by      text,
    foreign key (run_id, thread_id, brief_id)
        references orchestrator_runs (run_id, thread_id, brief_id),
    unique (request_id, run_id),
    constraint requests_deadline_has_action check ((expires_at is null) = (on_timeout is null)),
    constraint requests_resolved_iff_not_pending check ((status = 'pending') = (resolved_at is null))
);

-- At most one pending request per run.
create unique index hitl_requests_one_pending_per_run on hitl_requests (run_id) where status = 'pending';
-- The pending inbox, oldest first, with keyset pagination on (created_at, request_id).
create index hitl_requests_pending_idx on hitl_requests (created_at, request_id) where status = 'pending';
create index hitl_requests_pending_brief_idx on hitl_requests (brief_id, created_at, request_id) where status = 'pending';
create index hitl_requests_pending_node_idx on hitl_requests (node_id, created_at, request_id) where status = 'pending';
create index hitl_requests_pending_thread_idx on hitl_requests (thread_id, created_at, request_id) where status = 'pending';
-- Deadlines still to enforce.
create index hitl_requests_deadline_idx on hitl_requests (expires_at) where status = 'pending' and expires_at is not null;
-- A run's requests, for its snapshot.
create index hitl_requests_run_idx on hitl_requests (run_id, created_at);

alter table orchestrator_runs
    add constraint runs_pending_request_fk
    foreign key (pending_request_id, run_id) references hitl_requests (request_id, run_id);

create table hitl_commands (
    command_id      text primary key check (command_id like 'cmd\_%'),
    kind            text not null check (kind in ('resume', 'remove')),
    run_id          text not null references orchestrator_runs (run_id),
    request_id      text,
    idempotency_key text check (length(idempotency_key) between 1 and 255),
    -- The submission as validated, so a retry with the same key can be compared to it.
    payload         jsonb not null check (jsonb_typeof(payload) = 'object'),
    operator        jsonb not null check (jsonb_typeof(operator) = 'object'),
    note            text,
    status          text not null default 'queued' check (status in
                        ('queued', 'running', 'succeeded', 'rejected', 'failed')),
    -- succeeded: the resulting run state; rejected: the reason (and the winner on conflict).
    outcome         jsonb,
    -- failed: why, after the last attempt.
    error           text,
    attempts        integer not null default 0 check (attempts >= 0),
    -- W3C trace context of the submitting request, so the worker continues its trace.
    trace_context   jsonb,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    foreign key (request_id, run_id) references hitl_requests (request_id, run_id),
    unique (kind, idempotency_key),
    constraint commands_resume_names_request check (kind <> 'resume' or request_id is not null),
    constraint commands_finished_iff_final
        check ((status in ('succeeded', 'rejected', 'failed')) = (finished_at is not null)),
    constraint commands_failed_has_error check (status <> 'failed' or error is not null)
);

create index hitl_commands_run_idx on hitl_commands (run_id, created_at);
create index hitl_commands_request_idx on hitl_commands (request_id) where request_id is not null;

create table hitl_responses (
    response_id            text primary key check (response_id like 'hitl\_resp\_%'),
    request_id             text not null,
    run_id                 text not null,
    -- Order within the resume that carried it.
    position               integer not null default 0 check (position >= 0),
    response_type          text not null check (response_type in ('approval', 'rejection', 'option', 'freeform')),
    approved               boolean,
    option_id              text,
    freeform_text          text,
    responder_id           text,
    responder_display_name text,
    command_id             text references hitl_commands (command_id),
    created_at             timestamptz not null default now(),
    foreign key (request_id, run_id) references hitl_requests (request_id, run_id),
    constraint responses_approval_has_answer check (response_type <> 'approval' or approved is not null),
    constraint responses_option_has_id check (response_type <> 'option' or option_id is not null),
    constraint responses_freeform_has_text check (response_type <> 'freeform' or freeform_text is not null)
);

create index hitl_responses_request_idx on hitl_responses (request_id, position);
create index hitl_responses_command_idx on hitl_responses (command_id) where command_id is not null;

create table run_audit_events (
    -- Monotonic: SSE event ids and Last-Event-ID come from it.
    event_id              bigint generated always as identity primary key,
    run_id                text not null references orchestrator_runs (run_id),
    -- The run version this event's transition produced: one event per transition.
    run_version           bigint not null check (run_version >= 1),
    action                text not null check (action in (
                              'run_created', 'run_started', 'node_completed', 'hitl_requested',
                              'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
                              'run_failed', 'run_cancelled', 'rehydrate')),
    request_id            text references hitl_requests (request_id),
    command_id            text references hitl_commands (command_id),
    operator_id           text,
    operator_display_name text,
    operator_email        text,
    note                  text,
    from_status           text check (from_status in
                              ('queued', 'running', 'awaiting_hitl', 'completed', 'failed', 'cancelled')),
    to_status             text not null check (to_status in
                              ('queued', 'running', 'awaiting_hitl', 'completed', 'failed', 'cancelled')),
    details               jsonb not null default '{}'::jsonb check (jsonb_typeof(details) = 'object'),
    -- The writing transaction, so readers can tell which ids are safe to stream
    -- (identity values are handed out before commit, so they can commit out of order).
    tx_id                 xid8 not null default pg_current_xact_id(),
    created_at            timestamptz not null default now(),
    unique (run_id, run_version)
);

create index run_audit_events_run_idx on run_audit_events (run_id, event_id);
