-- A scheduled task's concurrency policy (as a Kubernetes CronJob's concurrencyPolicy: allow, forbid, replace) and its
-- bound of waiting runs (task/run_scheduled's concurrency_policy and max_queued). NULL, as every task stored before
-- has them: allow, and scheduler.QUEUED_PER_TASK (10) waiting runs at most, today's behaviour. Columns without a
-- default: adding them rewrites no row and holds the table's lock for a moment only, whatever the rows.
ALTER TABLE tasks ADD COLUMN concurrency_policy text, ADD COLUMN max_queued integer;
-- Why a run's kill was asked when it was not task/kill (a replace policy's next point: the run was replaced): the
-- supervisor records it as the run's reason instead of "killed (task/kill)". NULL: task/kill.
ALTER TABLE runs ADD COLUMN kill_reason text;
