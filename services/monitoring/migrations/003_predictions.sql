-- Seed 003's predictions: the deployment's own (predict / predict_bytes, origin 'predict') and those made elsewhere
-- (monitor / monitor_bytes, origin 'monitor'), stored alike so stats, drift and the feedback loop read one table.
-- The columns up to created_at are the contract with the feedback and continuous slices (F and C read them only);
-- the image itself is the object images/<image_sha256> in the monitoring bucket.
CREATE TABLE predictions (
    id                 uuid PRIMARY KEY,            -- the prediction id answered to the caller and reviewed later
    deployment_id      integer NOT NULL,            -- the deployer's id (as deployment_settings.deployment_id)
    workspace_id       integer NOT NULL,
    origin             text NOT NULL CHECK (origin IN ('predict', 'monitor')),
    source             text,
    tags               text[] NOT NULL DEFAULT '{}',
    model_version      jsonb,                       -- {"name","version","sha"} of the champion that answered
    shadow_model_version jsonb,                     -- same for the shadow challenger, null without one
    kind               text NOT NULL CHECK (kind IN ('classification', 'detection', 'segmentation')),
    prediction         jsonb NOT NULL,              -- seed PredictionFormat as dict: detection_classes,
                                                    --   detection_scores[, detection_boxes[, detection_masks]]
    shadow_prediction  jsonb,                       -- same shape, from the shadow model
    latency            double precision,            -- seconds
    shadow_latency     double precision,
    height             integer NOT NULL,
    width              integer NOT NULL,
    content_type       text NOT NULL,               -- image/png | image/jpeg
    image_sha256       text NOT NULL,               -- object key: images/<sha256> in the monitoring bucket
    features           jsonb NOT NULL,              -- image statistics from images.image_features(): the inputs
                                                    --   that the training reference and the outlying score use
    predicted_at       timestamptz NOT NULL,        -- the caller's timestamp for monitor, else reception time
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- P's additions (not part of the contract's read set)
    filename           text,                        -- the caller's file name, for display
    pipeline_version   text                         -- the deployer's pipeline version that answered (predict)
);
CREATE INDEX predictions_deployment_time ON predictions (deployment_id, predicted_at);
