-- Connection names are unique per owner, and per workspace among the connections attached to it, instead of across
-- the whole platform. Global names made connections/create answer 409 when any other tenant had used the name, so
-- anyone could ask whether a name existed anywhere (an oracle across tenants). A name now conflicts only with the
-- caller's own connections (at create) or with those attached to the workspace (at add_to_workspace, whose caller is
-- a member and can list them), and a lookup by name reads only what the caller can see (services/registry/
-- connections.py, `_named`). Safe on a database with rows: the names were unique across all rows, so they are
-- within each owner and each workspace.

ALTER TABLE connection_workspaces ADD COLUMN connection_name text;

UPDATE connection_workspaces w SET connection_name = c.name FROM connections c WHERE c.id = w.connection_id;

ALTER TABLE connection_workspaces ALTER COLUMN connection_name SET NOT NULL;

-- a link's connection_name is its connection's name (names never change), set whatever writes the link: a registry
-- of before this migration, still running during a rolling update, inserts links without it
CREATE FUNCTION connection_workspace_name() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- a connection that does not exist gives '', for the foreign key to refuse the row as it did before
    NEW.connection_name := coalesce((SELECT name FROM connections WHERE id = NEW.connection_id), '');
    RETURN NEW;
END
$$;

CREATE TRIGGER connection_workspaces_connection_name BEFORE INSERT OR UPDATE OF connection_id, connection_name
    ON connection_workspaces FOR EACH ROW EXECUTE FUNCTION connection_workspace_name();

ALTER TABLE connection_workspaces ADD CONSTRAINT connection_workspaces_name_key UNIQUE (workspace_id, connection_name);

ALTER TABLE connections DROP CONSTRAINT connections_name_key;

ALTER TABLE connections ADD CONSTRAINT connections_owner_name_key UNIQUE (owner_id, name);

-- a lookup by name reads the caller's own (the key above) and those of the caller's workspaces (the links' key); an
-- administrator's delete of another's, by name alone
CREATE INDEX connections_name ON connections (name);
