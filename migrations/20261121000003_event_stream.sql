-- Live events: every audit event is also a stream event. A statement-level trigger
-- NOTIFYs listeners (API processes streaming SSE) that new events exist; they read the
-- events themselves, so the notification carries nothing and notifications of one
-- transaction fold into one.
create function hitl_notify_events() returns trigger language plpgsql as $$
begin
    perform pg_notify('hitl_events', '');
    return null;
end
$$;

create trigger run_audit_events_notify
    after insert on run_audit_events
    for each statement execute function hitl_notify_events();

-- Streams read in (tx_id, event_id) order: identity values are handed out before commit,
-- so event ids can commit out of order, but every transaction older than the oldest one
-- still running has finished, so its events can be sent without a later gap.
create index run_audit_events_stream_idx on run_audit_events (tx_id, event_id);
