-- Inference clients: confidential clients that belong to one workspace and may use the client_credentials
-- grant only; their tokens are valid for inference on that workspace's deployments and nothing else. The login
-- client (workspace_id NULL) keeps the password and refresh grants and no longer gets client_credentials.
-- Client secrets are random and long, so they are compared as a keyed hash (HMAC-SHA256 with the server's
-- RAILYARD_AUTH__CLIENT_SECRET_KEY) instead of argon2; the bootstrap client is re-hashed on start.
ALTER TABLE clients ADD COLUMN workspace_id bigint REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE clients ADD COLUMN name text;
ALTER TABLE clients ADD COLUMN created_by uuid REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE clients ADD COLUMN revoked_at double precision;  -- epoch seconds; tokens issued before are refused
CREATE UNIQUE INDEX clients_workspace_name ON clients (workspace_id, name) WHERE workspace_id IS NOT NULL
    AND revoked_at IS NULL;
