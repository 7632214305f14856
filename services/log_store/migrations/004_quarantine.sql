-- Inference log batches the log store could not store (issue 14): kept whole in object storage under
-- `quarantine/` with why, listed for administrators; ingestion goes on past them.
CREATE TABLE quarantine (
    id bigserial PRIMARY KEY,
    batch_id text NOT NULL,
    workspace_id bigint,
    pipeline text,
    subject text NOT NULL,
    reason text NOT NULL,
    rows integer,
    bytes bigint NOT NULL,
    object_key text NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_workspace ON quarantine (workspace_id, id);
