-- A key replaced by a rotation retires: it stays in the JWKS while tokens it signed may still be valid (the
-- longest token lifetime), then leaves it, so an old key (leaked or not) verifies nothing for ever.
ALTER TABLE signing_keys ADD COLUMN retired_at timestamptz;
UPDATE signing_keys SET retired_at = now() WHERE NOT active;
