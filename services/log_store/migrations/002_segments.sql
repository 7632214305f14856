-- Inference log segments. A pipeline's rows are numbered in the order they were stored (`pos`, from 0);
-- a segment holds rows first_pos .. first_pos + row_count - 1 in that order, as one Parquet object.
-- Compaction replaces a run of contiguous segments by one with the same rows and positions, so a cursor
-- (a position) stays valid whichever of them a reader meets.
CREATE TABLE pipelines (
    id bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    name text NOT NULL,
    next_pos bigint NOT NULL DEFAULT 0,
    retention_days double precision,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE segments (
    id bigserial PRIMARY KEY,
    pipeline_id bigint NOT NULL REFERENCES pipelines (id),
    first_pos bigint NOT NULL,
    last_pos bigint NOT NULL,
    row_count integer NOT NULL CHECK (row_count > 0),
    min_time bigint NOT NULL,
    max_time bigint NOT NULL,
    schema_fp text NOT NULL,
    versions text[] NOT NULL,
    dropped text[] NOT NULL DEFAULT '{}',
    object_key text NOT NULL UNIQUE,
    bytes bigint NOT NULL,
    level smallint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    superseded_at timestamptz
);
CREATE INDEX segments_live_first ON segments (pipeline_id, first_pos) WHERE superseded_at IS NULL;
CREATE INDEX segments_live_last ON segments (pipeline_id, last_pos) WHERE superseded_at IS NULL;
CREATE INDEX segments_superseded ON segments (superseded_at) WHERE superseded_at IS NOT NULL;

-- Ids of the batches already stored: a redelivered or re-published batch is acknowledged, not stored again.
CREATE TABLE batches (
    batch_id text PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_committed ON batches (committed_at);
