-- The revocation list read by what changed: every verifier (the gateway and each service) re-read the whole list
-- (auth.revocations.list, paged) every 20 s, ended task runs included: with the platform's use that is thousands of
-- rows and several bus pages a service every 20 s. Now each revocation written to users, clients, revoked_sessions or
-- task_run_tokens is also a row here, written by the triggers below in the writing transaction (so every path that
-- revokes is covered, an older auth replica's during a rolling update too), with that transaction's id (xid8, 64-bit:
-- it never wraps). A verifier's read answers a `position`, the oldest transaction id still running when it was read
-- (pg_snapshot_xmin): every change not seen then has an id at or above it, so the next read asks for the rows at or
-- above it (handlers.revocation_changes), re-reading at most a few it had (merging them again changes nothing). Ids
-- are taken in one order by the cluster, whatever order transactions commit in; a sequence number is not (a change
-- that took 5 and committed after 6 was read would be missed for good).
-- A row can refuse no more than the list's own entry: the values are the ones written, and revocations only move
-- forward (a later one is a later moment, merged by max). The hourly sweep deletes rows older than a day
-- (token_sweep.py) and raises `below`: a verifier whose position is older than that reads the whole list again.
-- Safe on a database with rows: two new tables and triggers; no existing row is read or changed.

CREATE TABLE revocation_changes (
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    part smallint NOT NULL,            -- store.REVOCATION_PARTS' order: 0 user, 1 inference client, 2 session, 3 run
    key text NOT NULL,
    at double precision NOT NULL,      -- the revocation's moment (epoch s)
    expires double precision,          -- a run's session: its tokens' expiry (epoch s)
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revocation_changes_xid ON revocation_changes (xid);
CREATE INDEX revocation_changes_created ON revocation_changes (created_at);

-- Rows with a transaction id below `below` may have been deleted by the sweep: a position under it is no longer
-- answered by changes (409 revocation_position_lost: read the whole list)
CREATE TABLE revocation_changes_pruned (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    below xid8 NOT NULL
);
INSERT INTO revocation_changes_pruned (below) VALUES ('0');

CREATE FUNCTION revocation_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        IF NEW.revoked_before IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.revoked_before IS DISTINCT FROM OLD.revoked_before) THEN
            INSERT INTO revocation_changes (part, key, at) VALUES (0, NEW.id::text, NEW.revoked_before);
        END IF;
    ELSIF TG_TABLE_NAME = 'clients' THEN
        IF NEW.revoked_at IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
                OR NEW.service_account_id IS DISTINCT FROM OLD.service_account_id) THEN
            INSERT INTO revocation_changes (part, key, at) VALUES (1, NEW.service_account_id::text, NEW.revoked_at);
        END IF;
    ELSIF TG_TABLE_NAME = 'revoked_sessions' THEN
        IF TG_OP = 'INSERT' OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.session IS DISTINCT FROM OLD.session THEN
            INSERT INTO revocation_changes (part, key, at) VALUES (2, NEW.session::text, NEW.revoked_at);
        END IF;
    ELSIF TG_TABLE_NAME = 'task_run_tokens' THEN
        -- a run's end with no token issued (expires_at NULL) revokes nothing a verifier could meet: left out, as the
        -- list leaves it out
        IF NEW.revoked_at IS NOT NULL AND NEW.expires_at IS NOT NULL AND (TG_OP = 'INSERT'
                OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.expires_at IS DISTINCT FROM OLD.expires_at) THEN
            INSERT INTO revocation_changes (part, key, at, expires)
            VALUES (3, NEW.run_id, NEW.revoked_at, NEW.expires_at);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_revocation_changed AFTER INSERT OR UPDATE OF revoked_before ON users
    FOR EACH ROW EXECUTE FUNCTION revocation_changed();
CREATE TRIGGER clients_revocation_changed AFTER INSERT OR UPDATE OF revoked_at, service_account_id ON clients
    FOR EACH ROW EXECUTE FUNCTION revocation_changed();
CREATE TRIGGER revoked_sessions_revocation_changed AFTER INSERT OR UPDATE ON revoked_sessions
    FOR EACH ROW EXECUTE FUNCTION revocation_changed();
CREATE TRIGGER task_run_tokens_revocation_changed AFTER INSERT OR UPDATE OF revoked_at, expires_at ON task_run_tokens
    FOR EACH ROW EXECUTE FUNCTION revocation_changed();
