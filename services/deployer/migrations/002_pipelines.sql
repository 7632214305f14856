-- Pipelines and their versions (every change of definition is a new version), and deployments.
CREATE TABLE pipelines (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL,
    name          text NOT NULL,
    owner_id      uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE pipeline_versions (
    id           bigserial PRIMARY KEY,
    pipeline_id  bigint NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    version      uuid NOT NULL UNIQUE,
    definition   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipeline_versions_pipeline ON pipeline_versions (pipeline_id, id);

CREATE TABLE deployments (
    id                   bigserial PRIMARY KEY,
    pipeline_id          bigint NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    pipeline_version_id  bigint NOT NULL REFERENCES pipeline_versions (id),
    deploy_id            text NOT NULL,
    engine_config        jsonb NOT NULL DEFAULT '{}',
    spec                 jsonb NOT NULL,          -- what the engine loads: steps with resolved model versions
    active               boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX deployments_one_active_per_pipeline ON deployments (pipeline_id) WHERE active;
