-- The one-attempt-at-a-time rule (a password check of one user from one source is refused with 429 while another
-- is being answered) was a set in each auth process's memory, so N replicas checked N guesses at once, each reading
-- the failure count before the others recorded theirs. The attempt being answered is now a row here, claimed before
-- the failures are read and deleted when the attempt is answered; a row a crashed process left is taken over once
-- it is older than the lease (services/auth/handlers.py, ATTEMPT_LEASE_SECONDS).
CREATE TABLE login_attempts (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source      text NOT NULL,
    attempt     uuid NOT NULL,
    started_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, source)
);
