-- Models live in a workspace; a model name is unique within its workspace and each upload under the
-- same name adds a version. Artifacts are content-addressed objects (sha256) shared by versions.
CREATE TABLE models (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL,
    name          text NOT NULL,
    owner_id      uuid NOT NULL,
    visibility    text NOT NULL DEFAULT 'private',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE model_versions (
    id              bigserial PRIMARY KEY,
    model_id        bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    model_version   uuid NOT NULL UNIQUE,
    owner_id        uuid NOT NULL,
    file_name       text NOT NULL,
    framework       text NOT NULL,             -- as uploaded: onnx, python, custom, sklearn, ...
    runtime         text,                      -- what the engine runs: onnx, python, custom
    status          text NOT NULL CHECK (status IN ('converting', 'ready', 'error')),
    error           text,
    sha             text,                      -- sha256 of the artifact the engine loads
    source_sha      text NOT NULL,             -- sha256 of the uploaded bytes
    size            bigint NOT NULL,
    input_schema    bytea,                     -- serialized Arrow schema
    output_schema   bytea,
    conversion      jsonb NOT NULL DEFAULT '{}',
    model_config    jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_versions_model ON model_versions (model_id, id);
CREATE INDEX model_versions_converting ON model_versions (status) WHERE status = 'converting';
