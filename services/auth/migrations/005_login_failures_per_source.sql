-- Failed logins are counted, slowed and locked per user AND source address (as the gateway saw it): whoever
-- holds the shared login client's secret can lock a user out from their own address only, never from the
-- real user's. users.failed_logins / last_failed_at / locked_until are no longer used.
CREATE TABLE login_failures (
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source          text NOT NULL,
    failures        integer NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    locked_until    timestamptz,
    PRIMARY KEY (user_id, source)
);
CREATE INDEX login_failures_last ON login_failures (last_failed_at);
