-- A training's run is created off the review path (continuous.TrainingStarter, one per service process): the
-- trigger inserts the training `starting`; a starter waits until the feedback loop has written the triggering
-- reviews, then claims it with a conditional UPDATE setting run_claimed_at (one process wins) and creates the run.
-- A claimed training is never started again: one whose run was not recorded 60 s after the claim is failed.
ALTER TABLE trainings ADD COLUMN run_claimed_at timestamptz;
CREATE INDEX trainings_to_start ON trainings (created_at) WHERE state = 'starting' AND task_id IS NULL;
