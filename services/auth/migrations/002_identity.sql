-- Signing keys: the private key never leaves this schema; the JWKS publishes the public part.
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    private_pem  text NOT NULL,
    public_jwk   jsonb NOT NULL,
    active       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (active) WHERE active;

CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    username            text NOT NULL,
    email               text,
    password_hash       text NOT NULL,
    enabled             boolean NOT NULL DEFAULT true,
    is_admin            boolean NOT NULL DEFAULT false,
    temporary_password  boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    revoked_before      bigint,           -- tokens issued at or before this epoch second are refused
    failed_logins       integer NOT NULL DEFAULT 0,
    last_failed_at      timestamptz,
    locked_until        timestamptz
);
CREATE UNIQUE INDEX users_username ON users (lower(username));
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE clients (
    client_id    text PRIMARY KEY,
    secret_hash  text NOT NULL,
    service_account_id uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refresh_tokens (
    jti         uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id   text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used        boolean NOT NULL DEFAULT false
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE workspaces (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  uuid NOT NULL REFERENCES users (id),
    archived    boolean NOT NULL DEFAULT false
);

CREATE TABLE workspace_members (
    workspace_id  bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_type     text NOT NULL CHECK (user_type IN ('OWNER', 'COLLABORATOR')),
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX workspace_members_user ON workspace_members (user_id);

-- Ids of the models and pipelines in each workspace, as the registry and deployer report them in
-- their events (workspaces/list shows them); empty until those services exist.
CREATE TABLE workspace_resources (
    workspace_id  bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('model', 'pipeline')),
    resource_id   bigint NOT NULL,
    PRIMARY KEY (workspace_id, kind, resource_id)
);
