-- `request_expiring`: a channel's notice before a pending request's deadline. Additive:
-- one column and one audit action.
--
-- A channel wanting `request_expiring` is told `expiring_notice_seconds` before each
-- deadline; the notice is an audit event (`expiring`) of its own, so it is in the chain,
-- on `/api/events` and in the request's history like every other event it tells of.
alter table notification_channels add column if not exists expiring_notice_seconds integer
    check (expiring_notice_seconds is null or expiring_notice_seconds between 1 and 604800);

alter table run_audit_events
    drop constraint if exists run_audit_events_action_check,
    add constraint run_audit_events_action_check check (action in (
        'run_created', 'run_started', 'node_completed', 'hitl_requested',
        'resume', 'remove', 'expire', 'hitl_disabled', 'run_completed',
        'run_failed', 'run_cancelled', 'rehydrate', 'retry', 'agent_unreachable',
        'request_claimed', 'request_released', 'claim_broken', 'approval_recorded',
        'reminded', 'escalated', 'expiring'));
