-- Fewer indexes on queue.jobs: every claim and every completion is an update that writes a new
-- row version, and each index whose columns change gets a new entry for it. Measured with
-- `tessera bench queue`, the two secondary indexes below cost about a fifth of the burn-down
-- rate. What they served can live without them:
-- - `queue stats` / `list` count per (queue, status) with one sequential scan (an admin
--   command, not a hot path);
-- - retention clean-up runs every five minutes and deletes old finished jobs with one scan.
-- The claim (`jobs_ready`), stall recovery and heartbeats (`jobs_running`) keep their indexes.
drop index queue.jobs_by_queue_status;
drop index queue.jobs_finished;
