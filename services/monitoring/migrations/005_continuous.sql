-- Seed 003's continuous training and continuous deployment, and the shadow challenges the sequential test decides
-- (services/monitoring/continuous.py). Background work acts with the rights of the user who set it up (owner_id),
-- through a short-lived token scoped to the workspace.

CREATE TABLE continuous_training (
    deployment_id            integer PRIMARY KEY,
    workspace_id             integer NOT NULL,
    deployment               text NOT NULL,             -- <deploy_id>-<id>: the name the deployer resolves
    owner_id                 uuid NOT NULL,
    project_id               integer NOT NULL,
    orchestration_id         uuid NOT NULL,
    trigger                  text NOT NULL,
    threshold                integer NOT NULL CHECK (threshold > 0),
    experiment_parameters    jsonb,
    scan_config              jsonb,
    model_name               text NOT NULL,
    timeout                  integer,
    active                   boolean NOT NULL DEFAULT true,
    -- the review count when the last training started (at set-up: the count then), so "threshold new reviews"
    -- is computed from the reviews table: a restart loses nothing and nothing triggers twice
    reviews_at_last_training integer NOT NULL DEFAULT 0,
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CHECK ((experiment_parameters IS NULL) <> (scan_config IS NULL))
);

CREATE TABLE continuous_training_datasets (
    deployment_id   integer NOT NULL REFERENCES continuous_training (deployment_id) ON DELETE CASCADE,
    alias           text NOT NULL,
    dataset_id      integer NOT NULL,
    version_id      integer,
    attached_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, dataset_id),
    UNIQUE (deployment_id, alias)
);

CREATE TABLE continuous_deployment (
    deployment_id   integer PRIMARY KEY,
    workspace_id    integer NOT NULL,
    deployment      text NOT NULL,
    owner_id        uuid NOT NULL,
    policy          text NOT NULL CHECK (policy IN ('DEPLOY_MANUAL', 'DEPLOY_SHADOW', 'DEPLOY_AUTO')),
    alpha           double precision NOT NULL CHECK (alpha > 0 AND alpha < 0.5),
    min_sample      integer NOT NULL CHECK (min_sample > 0),
    active          boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per training the threshold started. At most one is open (starting/running/succeeded) per deployment.
CREATE TABLE trainings (
    id              uuid PRIMARY KEY,
    deployment_id   integer NOT NULL,
    workspace_id    integer NOT NULL,
    state           text NOT NULL CHECK (state IN ('starting', 'running', 'succeeded', 'done', 'failed')),
    reviews         integer NOT NULL,
    task_id         uuid UNIQUE,
    run_id          uuid,
    model_version   jsonb,                              -- {name, version, sha} the run registered
    model_status    text,                               -- the registry's: ready, converting, error
    outcome         text CHECK (outcome IN ('pending', 'shadow', 'deployed', 'failed')),
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX trainings_one_open ON trainings (deployment_id) WHERE state IN ('starting', 'running', 'succeeded');
CREATE INDEX trainings_deployment ON trainings (deployment_id, created_at);

-- A shadow challenger under the sequential test. At most one is open (running/promoting/rolling_back).
CREATE TABLE challenges (
    id              uuid PRIMARY KEY,
    deployment_id   integer NOT NULL,
    workspace_id    integer NOT NULL,
    training_id     uuid REFERENCES trainings (id),
    champion        jsonb NOT NULL,
    challenger      jsonb NOT NULL,
    alpha           double precision NOT NULL,
    min_sample      integer NOT NULL,
    state           text NOT NULL CHECK (state IN ('running', 'promoting', 'rolling_back', 'promoted', 'rolled_back',
                                                   'superseded', 'failed')),
    evidence        jsonb,
    reason          text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz
);
CREATE UNIQUE INDEX challenges_one_open ON challenges (deployment_id)
    WHERE state IN ('running', 'promoting', 'rolling_back');
CREATE INDEX challenges_deployment ON challenges (deployment_id, started_at);
