-- The queued runs' workspaces are offered to the starting step fairest first (store.workspaces_waiting): fewest runs
-- running, then the longest wait. The running ones are counted per workspace on this index (runs_running is on
-- heartbeat_at, for the lost-run step); the queued ones are grouped on runs_queued (workspace_id, created_at).
CREATE INDEX runs_running_workspace ON runs (workspace_id) WHERE status = 'running';
