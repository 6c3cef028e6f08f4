-- The engine and the run snapshot read a run's answers by run id. Without an index that
-- was a sequential scan of every answer ever stored, the costliest statement of a
-- resume in the drain benchmark (0.5 ms at 10,000 answers, growing with the table).
-- The column order is the snapshot's sort order, so the read needs no sort either.
create index hitl_responses_run_idx on hitl_responses (run_id, request_id, command_id, position);
