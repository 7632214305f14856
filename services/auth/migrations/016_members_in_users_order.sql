-- A workspace's members in users/query's order (the users' created_at, then user_id), so a page of a workspace's users
-- or of a caller's co-members is a range of this index, whatever the statistics say (docs/performance.md item 74).
-- Before, such a page joined workspace_members to users read in users_created order, and the planner chose the join
-- from the statistics: a workspace filled since the last ANALYZE was estimated at one member, and every page after the
-- first was a Nested Loop rescanning the workspace's members for each user read (0.3 s the second page of 13,000
-- members to 2.5 s the 13th, until autovacuum's ANALYZE). A member's user_created_at is its user's created_at: set
-- when the membership is written (whatever writes it) and kept when a user's created_at changes.

ALTER TABLE workspace_members ADD COLUMN user_created_at timestamptz;

UPDATE workspace_members m SET user_created_at = u.created_at FROM users u WHERE u.id = m.user_id;

ALTER TABLE workspace_members ALTER COLUMN user_created_at SET NOT NULL;

CREATE FUNCTION workspace_member_user_created_at() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- FOR SHARE: a change of the user's created_at waits for this membership's transaction (and this for that
    -- change's), so the users' trigger below sees the membership and no membership keeps an older time; a user that
    -- does not exist gives -infinity, for the foreign key to refuse the row as it did before this migration
    NEW.user_created_at := coalesce((SELECT created_at FROM users WHERE id = NEW.user_id FOR SHARE), '-infinity');
    RETURN NEW;
END
$$;

CREATE TRIGGER workspace_members_user_created_at BEFORE INSERT OR UPDATE OF user_id, user_created_at
    ON workspace_members FOR EACH ROW EXECUTE FUNCTION workspace_member_user_created_at();

CREATE FUNCTION user_created_at_to_memberships() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE workspace_members SET user_created_at = NEW.created_at WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_created_at_to_memberships AFTER UPDATE OF created_at ON users
    FOR EACH ROW WHEN (OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION user_created_at_to_memberships();

CREATE INDEX workspace_members_users_order ON workspace_members (workspace_id, user_created_at, user_id);
