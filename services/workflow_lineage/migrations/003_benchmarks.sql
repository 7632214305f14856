-- Benchmark reports (seed 002): what ran on which data (by content hash) and each candidate's metrics.
CREATE TABLE benchmark_reports (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    name         text NOT NULL,
    task         text NOT NULL CHECK (task IN ('classification', 'detection')),
    dataset      jsonb NOT NULL,
    candidates   jsonb NOT NULL,
    created_by   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX benchmark_reports_workspace ON benchmark_reports (workspace_id, id);
