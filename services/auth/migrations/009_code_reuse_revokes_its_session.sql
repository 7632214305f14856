-- A reused authorization code means it leaked (RFC 6749 4.1.2): the second exchange is refused and the tokens the
-- first one issued are revoked. So a code is no longer deleted by its first exchange but marked spent, with the
-- session its tokens were (or would be) minted in, and kept until those tokens have expired; a session is carried
-- from a refresh token to the pair that replaces it, so revoking it reaches every refresh after the exchange too.
ALTER TABLE authorization_codes ADD COLUMN spent_at timestamptz;
ALTER TABLE authorization_codes ADD COLUMN session uuid;
ALTER TABLE refresh_tokens ADD COLUMN session uuid;
CREATE INDEX refresh_tokens_session ON refresh_tokens (session) WHERE session IS NOT NULL;

-- Sessions whose every token is refused, whenever it was issued; served with the revocation list, kept until no
-- token of theirs can still be valid.
CREATE TABLE revoked_sessions (
    session uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked_at double precision NOT NULL
);
