-- Continuous training's second trigger, ASSAY_ALERT (services/monitoring/continuous.py, docs/monitoring.md): a
-- training opens when `threshold` events.assay.alert of an assay on the deployment's pipeline (its logs, or its
-- training reference: such an assay belongs to the pipeline too) arrived since the last training. The pipeline is
-- the deployment's at set-up (a deployment serves one pipeline; set_model and continuous deployment deploy new
-- versions of that same pipeline), kept to find the deployments an alert's assay watches.
ALTER TABLE continuous_training ADD COLUMN pipeline_id integer;
ALTER TABLE continuous_training ADD COLUMN alerts_at_last_training integer NOT NULL DEFAULT 0;
CREATE INDEX continuous_training_alerted ON continuous_training (workspace_id, pipeline_id)
    WHERE trigger = 'ASSAY_ALERT';

-- One row per alert counted for a deployment, keyed by the event's event_id: a redelivered event (the durable
-- consumer delivers at least once; two monitoring processes share it) is counted once. The trigger is computed
-- from this table under the continuous_training row lock, as FEEDBACK_LOOP's is from `reviews`.
CREATE TABLE continuous_training_alerts (
    deployment_id   integer NOT NULL REFERENCES continuous_training (deployment_id) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    assay_id        integer NOT NULL,
    assay_name      text NOT NULL,
    iopath          text NOT NULL,
    score           double precision NOT NULL,
    window_start    text NOT NULL,
    window_end      text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, event_id)
);
CREATE INDEX continuous_training_alerts_received ON continuous_training_alerts (deployment_id, received_at);

-- The count that opened an ASSAY_ALERT training (NULL for FEEDBACK_LOOP's), shown with it and given to its run.
ALTER TABLE trainings ADD COLUMN trigger text NOT NULL DEFAULT 'FEEDBACK_LOOP';
ALTER TABLE trainings ADD COLUMN alerts integer;
