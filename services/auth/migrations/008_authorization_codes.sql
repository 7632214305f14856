-- Authorization codes of the authorization code flow with PKCE (RFC 6749 4.1, RFC 7636), the web UI's sign-in: each
-- is bound to the client, the redirect URI and the S256 code challenge it was issued for, lives a minute at most and
-- is spent by its first exchange, whatever the outcome. Only its SHA-256 is kept, so this table holds no usable code.
CREATE TABLE authorization_codes (
    code_hash bytea PRIMARY KEY,
    client_id text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redirect_uri text NOT NULL,
    code_challenge text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX authorization_codes_expiry ON authorization_codes (expires_at);
