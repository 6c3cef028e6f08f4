-- Notifications: the channels processes publish from HITL_NOTIFY_CHANNELS_FILE, and one
-- delivery per (event, channel), written in the transaction that wrote the event. Additive:
-- two tables.
--
-- A channel's signing secret is not stored: only the processes given the file hold it.
create table if not exists notification_channels (
    name              text primary key check (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    format            text not null check (format in ('json', 'slack')),
    events            text[] not null check (cardinality(events) > 0),
    -- Empty: every node / every request.
    nodes             text[] not null default '{}',
    groups            text[] not null default '{}',
    include_arguments boolean not null default false,
    published_at      timestamptz not null default now()
);

create table if not exists notification_deliveries (
    -- Sent as X-Hitl-Delivery, the same on every attempt and every re-send.
    delivery_id  uuid primary key,
    channel      text not null check (length(channel) between 1 and 64),
    -- The audit event it tells of (no foreign key: archiving may remove the event).
    event_id     bigint not null,
    event        text not null check (length(event) between 1 and 64),
    run_id       text not null,
    request_id   text,
    status       text not null default 'pending'
        check (status in ('pending', 'delivered', 'failed')),
    attempts     integer not null default 0 check (attempts >= 0),
    -- What the last attempt met: an HTTP status or a kind of network error, never a body.
    last_error   text check (last_error is null or length(last_error) <= 300),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    delivered_at timestamptz
);

create index if not exists notification_deliveries_failed_idx
    on notification_deliveries (created_at, delivery_id) where status = 'failed';
create index if not exists notification_deliveries_event_idx
    on notification_deliveries (event_id);

-- Reminders and escalation of a pending request: the plan's `{remindEverySeconds,
-- escalation}` and what was done (`reminded`, `escalated` step indices).
alter table hitl_requests add column if not exists follow_up jsonb
    check (follow_up is null or jsonb_typeof(follow_up) = 'object');

alter table run_audit_events
    drop constraint if exists run_audit_events_action_check,
    add constraint run_audit_events_action_check check (action in (
        'run_created', 'run_started', 'node_completed', 'hitl_requested',
        'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
        'run_failed', 'run_cancelled', 'rehydrate', 'retry', 'agent_unreachable',
        'request_claimed', 'request_released', 'claim_broken', 'approval_recorded',
        'reminded', 'escalated'));
