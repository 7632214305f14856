-- Continuous training of a deployment backed by an ML backend (services/monitoring/ml_backend.py): the training run
-- is the built-in orchestration that calls the backend's fit (orchestration_id then names it), and the run's
-- arguments also name the model version to start from. 'orchestration': the user's own training recipe.
ALTER TABLE continuous_training ADD COLUMN kind text NOT NULL DEFAULT 'orchestration'
    CHECK (kind IN ('orchestration', 'ml_backend'));
