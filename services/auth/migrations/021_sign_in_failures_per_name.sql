-- Failed sign-ins are counted, slowed, locked and claimed one at a time per attempted NAME and source, whether or not
-- the name is a user's (services/auth/handlers.py, _password_login). Counted per user, an unknown name was never
-- delayed, locked or refused 429, so repeating a guess told whether a name existed: a real one answered slower and
-- ended in account_locked, a made-up one never did. The name is kept as sha256(lower(name)) (lower() as
-- store.user_by_login compares names, so `Alice` and `alice` are one; a user's username and email are two names):
-- 32 bytes whatever length was sent, and no typed text is stored (people type passwords into the name field).
-- Rows are made only by failed password checks (at most 2 hashes at a time per auth process) and deleted by the
-- hourly sweep once idle for an hour and not locked (store.delete_idle_sign_in_failures): time (or the user's own
-- sign-in from that source) removes a row, never a cap, so a flood of made-up names cannot push a real user's count
-- out.
-- auth.login_failures / auth.login_attempts stay for users/update_password's wrong current passwords (per user).
CREATE TABLE sign_in_failures (
    name_key        bytea NOT NULL,
    source          text NOT NULL,
    failures        integer NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    locked_until    timestamptz,
    PRIMARY KEY (name_key, source)
);
CREATE INDEX sign_in_failures_last ON sign_in_failures (last_failed_at);

CREATE TABLE sign_in_attempts (
    name_key    bytea NOT NULL,
    source      text NOT NULL,
    attempt     uuid NOT NULL,
    started_at  timestamptz NOT NULL,
    PRIMARY KEY (name_key, source)
);

-- Counts and locks running at the upgrade carry over to both of the user's names (a lock is not lifted by it); the
-- per-user rows of sign-ins are then dead
INSERT INTO sign_in_failures (name_key, source, failures, last_failed_at, locked_until)
SELECT sha256(convert_to(lower(n.name), 'UTF8')), f.source, max(f.failures), max(f.last_failed_at),
       max(f.locked_until)
  FROM login_failures f JOIN users u ON u.id = f.user_id
 CROSS JOIN LATERAL (VALUES (u.username), (u.email)) AS n (name)
 WHERE f.source <> 'password-change' AND n.name IS NOT NULL
 GROUP BY 1, 2;
DELETE FROM login_failures WHERE source <> 'password-change';
