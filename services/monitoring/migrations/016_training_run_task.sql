-- A training's run is created with a task id the training chose when it was claimed (tasks/run_once's `id`): a
-- run_once whose answer never came (a timeout: the task may exist, its run may be under way) is asked again with
-- that id, which answers the task the first call made, or makes it, and queues no second run, so the training
-- follows the run it started. NULL: claimed before this column (a claim whose run was never recorded is failed after
-- 60 s, as before: its task's id is unknown).
ALTER TABLE trainings ADD COLUMN run_task_id uuid;
-- DEPLOY_AUTO / DEPLOY_SHADOW: set when a done training's model version is to be served (in the transaction that
-- ends the training), cleared in the transaction that records the swap and writes its model_swapped (or its
-- failure). One still set STALE_SWAP after it was set is delivered again (a process died between the deployer
-- serving the version and that commit: the event was lost; or before the serving).
ALTER TABLE trainings ADD COLUMN delivering_since timestamptz;
CREATE INDEX trainings_delivering ON trainings (delivering_since) WHERE delivering_since IS NOT NULL;
