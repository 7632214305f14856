-- pipelines/list reads a workspace's pipelines a page at a time in id order (store.pipelines_in: WHERE workspace_id
-- AND id > the cursor ORDER BY id LIMIT n). The only index starting with workspace_id was UNIQUE (workspace_id,
-- name), so every page read all of the workspace's pipelines and sorted them by id to return its few. With this one a
-- page reads its own rows in order, from the cursor on.
CREATE INDEX pipelines_workspace_id ON pipelines (workspace_id, id);
