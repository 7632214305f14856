-- A task run's tokens stop working when the run ends (services/auth/task_tokens.py). A run's token is minted in a
-- session of its own, the run's id (its session_state); auth revokes that session when it reads the run's end
-- (events.task_run.succeeded / failed). A row is written when a run's token is issued, with when its tokens expire:
-- the revocation is listed, and kept by every verifier, until then (a run's token may outlive access_token_ttl, the
-- other revoked sessions' span). A run that ended before any token of it was issued (killed while queued, or failed
-- as lost while its supervisor was paused) keeps a row without expiry, so a token asked for later is refused; such
-- rows go a day after the end, the others a minute after their tokens expire.
CREATE TABLE task_run_tokens (
    run_id text PRIMARY KEY,              -- the run's id: its tokens' session_state
    user_id text NOT NULL,                -- the task's owner (the tokens' subject)
    expires_at double precision,          -- epoch s: the latest expiry of a token issued for the run; NULL: none issued
    revoked_at double precision           -- epoch s: the run's end, read by auth; NULL: the run has not ended
);
CREATE INDEX task_run_tokens_revoked ON task_run_tokens (expires_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX task_run_tokens_gone ON task_run_tokens ((COALESCE(expires_at, revoked_at + 86400)));
