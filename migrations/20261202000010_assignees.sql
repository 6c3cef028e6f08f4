-- Who may answer a request: `{users: [operator ids], groups: [names]}`, or null for
-- anyone with the operate scope. Additive.
alter table hitl_requests add column if not exists assignees jsonb
    check (assignees is null or jsonb_typeof(assignees) = 'object');
