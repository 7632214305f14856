-- Continuous deployment and the feedback loop suspended by the service, as continuous training is (017): the token
-- of the user they act as was refused (the owner left the workspace or was deactivated), so each is turned off with
-- the reason instead of failing every delivery / retrying every export round. Cleared by a set-up or a
-- re-activation.
ALTER TABLE continuous_deployment ADD COLUMN suspended_reason text;
ALTER TABLE feedback_loops ADD COLUMN suspended_reason text;
