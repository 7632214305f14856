-- Public clients (OAuth 2, RFC 6749 2.1): a client that cannot keep a secret, such as the web UI running in a
-- person's browser. It has no secret (secret_hash holds a marker no keyed hash equals), may use the password and
-- refresh_token grants only (never client_credentials), and its tokens are the signed-in user's own. The auth
-- service creates the web UI's (`railyard-ui`) on start.
ALTER TABLE clients ADD COLUMN public boolean NOT NULL DEFAULT false;
ALTER TABLE clients ADD CONSTRAINT clients_public_has_no_workspace CHECK (NOT public OR workspace_id IS NULL);
