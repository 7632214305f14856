-- A retired signing key stays in the JWKS while a task run's token it signed may still be valid (store.public_keys):
-- a run's token lives its run's timeout + 60 s (up to 24 h + 60 s), longer than the access and refresh tokens the
-- retention (handlers.key_retention) is counted from, so a run still going an hour after a rotation had its token
-- refused (401) for the rest of the run. `signs_run_tokens_until`: the latest expiry (epoch s) of a task token the
-- key signed (NULL: none); the retention is unchanged for a key that signed none, so a key rotated out because it
-- leaked still leaves the JWKS after it unless long runs hold tokens of it. Rows already there: NULL (tokens signed
-- before this column are covered as before, by the retention only).
ALTER TABLE signing_keys ADD COLUMN signs_run_tokens_until double precision;
