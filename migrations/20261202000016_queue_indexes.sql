-- The queue writes less per job (docs/ARCHITECTURE.md, "The queue"). apalis-postgres's
-- migrations, which run before ours, leave four indexes that repeat another index
-- column for column, predicate for predicate: every insert and every non-HOT update of
-- a job or a worker maintained each of them twice over. Each dropped one below names
-- the index that still serves its lookups.

-- `id`: the primary key (`jobs_pkey`, added by apalis's 20251225090252) is unique on
-- `id` as this is; find, ack and every `where id = ...` use the primary key.
drop index if exists apalis.unique_job_id;

-- `lock_by`: `idx_apalis_jobs_lock_by` (apalis's 20260824233636) is the same index. It
-- stays: the heartbeat's fence, the re-enqueue of a dead worker's jobs and the foreign
-- key to `apalis.workers` (checked when a stale worker row is deleted) look jobs up by
-- `lock_by` in any status, which the partial `hitl_jobs_claimed_idx` does not cover.
drop index if exists apalis.lidx;

-- `apalis.workers (last_seen)` and `(worker_type)`: `idx_apalis_workers_last_seen` and
-- `idx_apalis_workers_worker_type` are the same indexes. (`unique_worker_id` repeats
-- `workers_pkey` too, but the foreign key `fk_worker_lock_by` was created on it and
-- depends on it, so it stays.)
drop index if exists apalis.lsidx;
drop index if exists apalis.wtidx;

-- HOT updates (no new index entries) need room on the row's own page. A command is
-- written once and updated once, when it ends, growing by its outcome (about 340 to 480
-- bytes), and no index covers a column that update changes: on full pages a third of
-- those updates were HOT in `bench drain`, with 30 % of each page left free more than
-- half (60 % free gained little more). Only new pages take the setting.
--
-- The other tables a resume updates cannot gain this way on PostgreSQL 15: every update
-- of `apalis.jobs`, `hitl_requests` and `orchestrator_runs` changes `status`, which the
-- predicates of their partial indexes read (and runs' `updated_at`, which the sweep's
-- index holds), so none of them is HOT however much room a page has.
alter table hitl_commands set (fillfactor = 70);
