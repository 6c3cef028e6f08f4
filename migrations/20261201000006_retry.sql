-- Retry: an operator's command that puts a failed run back to running at the node that
-- failed, the one exit from a terminal status. Additive: the checks gain one value each.
-- `runs_finished_iff_terminal` already ties `finished_at` to the status, so a retried
-- run, running again, has its `finished_at` cleared by the same rule.
alter table hitl_commands
    drop constraint if exists hitl_commands_kind_check,
    add constraint hitl_commands_kind_check check (kind in ('resume', 'remove', 'retry'));
alter table run_audit_events
    drop constraint if exists run_audit_events_action_check,
    add constraint run_audit_events_action_check check (action in (
        'run_created', 'run_started', 'node_completed', 'hitl_requested',
        'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
        'run_failed', 'run_cancelled', 'rehydrate', 'retry'));
