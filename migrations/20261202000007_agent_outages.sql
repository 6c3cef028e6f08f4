-- Agents that are down, and runner state kept as the agent's own text. Additive: one
-- column, one table, one more audit action; the stored runner states move to the table.

-- While an agent call is being retried: `{nodeId, since, attempts, lastError,
-- nextAttemptAt}`; null otherwise. Cleared by the run's next engine write.
alter table orchestrator_runs add column if not exists agent_retry jsonb
    check (agent_retry is null or jsonb_typeof(agent_retry) = 'object');

alter table run_audit_events
    drop constraint if exists run_audit_events_action_check,
    add constraint run_audit_events_action_check check (action in (
        'run_created', 'run_started', 'node_completed', 'hitl_requested',
        'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
        'run_failed', 'run_cancelled', 'rehydrate', 'retry', 'agent_unreachable'));

-- A node's runner state exactly as the agent sent it (`text`, not `jsonb`: key order,
-- escapes such as \u0000, duplicate keys and number spellings come back byte for byte).
create table if not exists run_runner_states (
    run_id     text not null references orchestrator_runs (run_id) on delete cascade,
    node_id    text not null,
    state      text not null,
    updated_at timestamptz not null default now(),
    primary key (run_id, node_id)
);

insert into run_runner_states (run_id, node_id, state)
select r.run_id, s.key, s.value::text
from orchestrator_runs r, jsonb_each(r.runner_metadata -> 'runnerState') s
where jsonb_typeof(r.runner_metadata -> 'runnerState') = 'object'
on conflict do nothing;

update orchestrator_runs set runner_metadata = runner_metadata - 'runnerState'
where runner_metadata ? 'runnerState';
