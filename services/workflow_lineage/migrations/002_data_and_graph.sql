-- Projects, datasets and the workspace file space (the graph's data cards). Bytes live in object storage,
-- content-addressed (sha256), so rows here only name hashes: the same bytes are stored once, and a project
-- version or a restore copies a manifest, never an object.
CREATE TABLE projects (
    id                    bigserial PRIMARY KEY,
    workspace_id          bigint NOT NULL,
    name                  text NOT NULL,
    description           text NOT NULL DEFAULT '',
    created_by            uuid NOT NULL,
    restored_from_version bigint,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE datasets (
    id           bigserial PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('tabular', 'images', 'files')),
    rows_sha256  text,
    row_count    bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE dataset_files (
    dataset_id   bigint NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    name         text NOT NULL,
    sha256       text NOT NULL,
    size         bigint NOT NULL,
    content_type text NOT NULL,
    labels       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, name)
);

CREATE TABLE workspace_files (
    workspace_id bigint NOT NULL,
    path         text NOT NULL,
    sha256       text NOT NULL,
    size         bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, path)
);
CREATE INDEX workspace_files_sha ON workspace_files (workspace_id, sha256);

-- Immutable project versions: `manifest` is the canonical JSON whose sha256 is `manifest_sha256`.
CREATE TABLE project_versions (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    workspace_id    bigint NOT NULL,
    number          int NOT NULL,
    title           text,
    description     text,
    manifest        text NOT NULL,
    manifest_sha256 text NOT NULL,
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, number)
);

-- The graph: a card per (workspace, kind, ref); edges between cards. `settings` are WorkflowSettings.
CREATE TABLE nodes (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    kind         text NOT NULL,
    ref          text NOT NULL,
    title        text NOT NULL,
    settings     jsonb NOT NULL DEFAULT '{}',
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, kind, ref)
);

CREATE TABLE edges (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    source       bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    target       bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    relation     text NOT NULL,
    origin       text NOT NULL CHECK (origin IN ('event', 'explicit')),
    settings     jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, target, relation)
);
CREATE INDEX edges_target ON edges (target);
