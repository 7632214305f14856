-- Seed 003's feedback: reviews of predictions, the feedback loop that turns them into dataset versions, and the
-- training-data reference that get_stats and the outlying score compare with (services/monitoring/feedback.py,
-- reference.py, stats.py).

-- One review per prediction: a later review replaces the earlier one (new id, revision + 1), so counting rows
-- counts distinct reviewed predictions. ground_truth has the PredictionFormat shape (for 'accepted': a copy of the
-- prediction).
CREATE TABLE reviews (
    id             uuid PRIMARY KEY,
    prediction_id  uuid NOT NULL UNIQUE REFERENCES predictions (id) ON DELETE CASCADE,
    deployment_id  integer NOT NULL,
    workspace_id   integer NOT NULL,
    decision       text NOT NULL CHECK (decision IN ('accepted', 'corrected')),
    ground_truth   jsonb NOT NULL,
    reviewer       text,
    revision       integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_deployment_time ON reviews (deployment_id, created_at);

-- The feedback loop of a deployment: active or not, and whose rights its dataset writes use (the user who set it
-- up, through a short-lived token scoped to the workspace).
CREATE TABLE feedback_loops (
    deployment_id  integer PRIMARY KEY,
    workspace_id   integer NOT NULL,
    owner_id       uuid NOT NULL,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Datasets attached to a feedback loop (an images dataset of a workflow-lineage project).
CREATE TABLE feedback_loop_datasets (
    deployment_id       integer NOT NULL REFERENCES feedback_loops (deployment_id) ON DELETE CASCADE,
    dataset_id          integer NOT NULL,
    project_id          integer NOT NULL,
    dataset_name        text NOT NULL,
    attached_version_id integer,
    last_version_id     integer,
    last_version_number integer,
    last_error          text,
    attached_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, dataset_id)
);

-- What the loop has written: one row per (attached dataset, reviewed prediction) with the review revision written
-- and the project version that recorded it (null until that version exists). The exporter is driven by this table:
-- a review whose revision is not here is pending; a row without version_id still needs its version.
CREATE TABLE feedback_exports (
    deployment_id  integer NOT NULL,
    dataset_id     integer NOT NULL,
    prediction_id  uuid NOT NULL REFERENCES predictions (id) ON DELETE CASCADE,
    revision       integer NOT NULL,
    version_id     integer,
    exported_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, dataset_id, prediction_id),
    FOREIGN KEY (deployment_id, dataset_id) REFERENCES feedback_loop_datasets (deployment_id, dataset_id)
        ON DELETE CASCADE
);

-- The training-data reference of a deployment (set_training_data): the dataset's files are listed when it is set,
-- the distributions computed in the background (status and progress here).
CREATE TABLE training_references (
    deployment_id  integer PRIMARY KEY,
    workspace_id   integer NOT NULL,
    dataset_id     integer NOT NULL,
    version_id     integer,
    status         text NOT NULL CHECK (status IN ('computing', 'ready', 'failed', 'disabled')),
    files          jsonb NOT NULL,
    images_done    integer NOT NULL DEFAULT 0,
    images_total   integer NOT NULL,
    error          text,
    reference      jsonb,
    attempt        integer NOT NULL DEFAULT 1,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    computed_at    timestamptz
);
