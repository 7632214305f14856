-- Assays and their results. An active assay scores the window [next_run - width, next_run) once next_run has
-- passed; its schedule lives here, so a restart loses nothing.
CREATE TABLE assays (
    id bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    pipeline_id bigint NOT NULL,
    pipeline_name text NOT NULL,
    name text NOT NULL,
    active boolean NOT NULL,
    status text NOT NULL,
    config jsonb NOT NULL,
    warning_threshold double precision,
    alert_threshold double precision NOT NULL,
    width_seconds double precision NOT NULL,
    interval_seconds double precision NOT NULL,
    run_until timestamptz,
    last_run timestamptz,
    next_run timestamptz NOT NULL,
    baseline_summary jsonb,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assays_pipeline ON assays (pipeline_id);
CREATE INDEX assays_due ON assays (next_run) WHERE active;

CREATE TABLE results (
    id bigserial PRIMARY KEY,
    assay_id bigint NOT NULL REFERENCES assays (id),
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    analyzed_at timestamptz NOT NULL DEFAULT now(),
    score double precision NOT NULL,
    status text NOT NULL,
    result jsonb NOT NULL,
    UNIQUE (assay_id, window_start)
);
