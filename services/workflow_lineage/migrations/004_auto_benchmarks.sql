-- Automatic benchmarks: a task run that declared an evaluation set outputs a model version that a deployment
-- serves -> one claim per (run, model version), taken by a worker that runs the benchmark once and stores the
-- report in the same transaction that marks the claim done (so a redelivered event or a second worker adds none).
CREATE TABLE auto_benchmarks (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL,
    task_run      text NOT NULL,
    model_version text NOT NULL,
    deployment    text NOT NULL,
    pipeline_version text,
    evaluation    jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts      int NOT NULL DEFAULT 0,
    error         text,
    report_id     bigint,
    next_try      timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, task_run, model_version)
);
CREATE INDEX auto_benchmarks_due ON auto_benchmarks (status, next_try);
