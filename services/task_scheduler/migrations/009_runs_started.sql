-- Runs that were started (started_at set: running, or ended after their start), per task: what
-- store.with_runs_out_of_queue asks for a scheduled task none of whose last runs started. Without it, since cfe08b33
-- that EXISTS read every run of the task back to its newest started one through runs_task and the table: a `replace`
-- task whose runs keep being replaced while they wait in a full workspace (one a minute: ~43,000 a month) cost each
-- task list and task/get a row read per replaced run. With it the lookup is one index probe. A partial index: runs
-- that never started (queued, or replaced/killed while queued) are not in it; a scheduler of the release before
-- neither needs nor hinders it.
CREATE INDEX runs_task_started ON runs (task_id) WHERE started_at IS NOT NULL;
