-- The pipeline versions continuous deployment's deploys carried (a training's delivery, a challenge's swap), each
-- written before its pipelines/deploy is sent (continuous._serve's `sent`). The deployer's events.pipeline.deployed
-- naming one of them is that deploy landed, however late (after its command went unanswered, after the resumes
-- gave up and after the one more look): continuous.on_pipeline_deployed records it then, as it would have been
-- recorded had the command answered in time. A deploy monitoring did not send names no row here and is ignored.
-- `champion`: a DEPLOY_SHADOW delivery's, the model its challenge compares the new version with.
CREATE TABLE sent_deploys (
    pipeline_version text NOT NULL,
    deployment_id    integer NOT NULL,
    training_id      uuid REFERENCES trainings (id) ON DELETE CASCADE,
    challenge_id     uuid REFERENCES challenges (id) ON DELETE CASCADE,
    champion         jsonb,
    sent_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((training_id IS NULL) <> (challenge_id IS NULL))
);
CREATE UNIQUE INDEX sent_deploys_once ON sent_deploys (deployment_id, pipeline_version,
                                                       COALESCE(training_id, challenge_id));
