-- How many times a run was put back in the queue because its claim could not be checked right before its main.py
-- started (PostgreSQL not answering for the check's 30 s: scheduler.Scheduler._put_back_unchecked,
-- store.requeue_unstarted's `unchecked_cap`). Such a run goes back to the queue at most UNCHECKED_REQUEUES times, then
-- fails saying why; a stop's put-backs are not counted. Before, the first such check failed the run for good
-- ("the run could not be started: TimeoutError"). A column with a default: nothing is rewritten, a scheduler of the
-- release before never reads or writes it.
ALTER TABLE runs ADD COLUMN unchecked_requeues integer NOT NULL DEFAULT 0;
