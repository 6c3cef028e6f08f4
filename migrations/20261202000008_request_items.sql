-- Several decisions per pause: a request carries items, each answered on its own.
-- Additive: two columns on responses, one on requests, wider checks; every stored
-- request gets its one item (the node's question) and every stored answer that item.

alter table hitl_requests add column if not exists items jsonb
    check (items is null or (jsonb_typeof(items) = 'array' and jsonb_array_length(items) between 1 and 100));

update hitl_requests set items = jsonb_build_array(jsonb_build_object(
    'itemId', node_id, 'kind', 'question', 'title', operator_prompt, 'tool', null,
    'responseTypes', to_jsonb(response_types), 'options', options))
where items is null;

-- A request with several items has no request-level answer types (each item has its own).
alter table hitl_requests
    drop constraint if exists hitl_requests_response_types_check,
    add constraint hitl_requests_response_types_check check (
        response_types <@ array['approval', 'rejection', 'option', 'freeform', 'edit']
        and (cardinality(response_types) >= 1 or coalesce(jsonb_array_length(items), 0) > 1));

alter table hitl_responses add column if not exists item_id text
    check (item_id is null or length(item_id) between 1 and 200);
alter table hitl_responses add column if not exists edited_arguments jsonb;

update hitl_responses s set item_id = q.node_id
from hitl_requests q where q.request_id = s.request_id and s.item_id is null;

alter table hitl_responses
    drop constraint if exists hitl_responses_response_type_check,
    add constraint hitl_responses_response_type_check check (
        response_type in ('approval', 'rejection', 'option', 'freeform', 'edit')),
    drop constraint if exists responses_edit_has_arguments,
    add constraint responses_edit_has_arguments check (
        (response_type = 'edit') = (edited_arguments is not null)
        and (edited_arguments is null or jsonb_typeof(edited_arguments) = 'object'));
