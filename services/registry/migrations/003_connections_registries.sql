-- Data connections and external model registries. Secrets (connection details, registry tokens) are
-- stored encrypted (Fernet, key from RAILYARD_REGISTRY__SECRETS_KEY); only ciphertext is in the database.
CREATE TABLE connections (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    type               text NOT NULL,
    details_encrypted  bytea NOT NULL,
    owner_id           uuid NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connection_workspaces (
    id              uuid PRIMARY KEY,          -- the workspace's connection id (the seed returns it)
    connection_id   uuid NOT NULL REFERENCES connections (id) ON DELETE RESTRICT,
    workspace_id    bigint NOT NULL,
    workspace_name  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, workspace_id)
);

CREATE TABLE registries (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    url              text NOT NULL,
    token_encrypted  bytea,
    owner_id         uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registry_workspaces (
    registry_id   uuid NOT NULL REFERENCES registries (id) ON DELETE CASCADE,
    workspace_id  bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry_id, workspace_id)
);
