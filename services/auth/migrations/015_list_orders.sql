-- The orders auth's paged lists read in (docs/api-paging.md), so a page is an index range, not a sort of the whole
-- set: workspaces/list_users (a workspace's members in the order they were added: added_at, then user_id; only the
-- primary key (workspace_id, user_id) was there, so every page read and sorted all of a workspace's members),
-- users/query (created_at, then id) and workspaces/list_inference_clients (a workspace's live clients: created_at,
-- then client_id).
CREATE INDEX workspace_members_added ON workspace_members (workspace_id, added_at, user_id);
CREATE INDEX users_created ON users (created_at, id);
CREATE INDEX clients_workspace_created ON clients (workspace_id, created_at, client_id) WHERE revoked_at IS NULL;
