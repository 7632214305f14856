-- A page lists segments by the smallest key they can yield: (min_time, first_pos) up, (max_time, last_pos) down.
DROP INDEX IF EXISTS segments_live_min_time;
DROP INDEX IF EXISTS segments_live_max_time;
CREATE INDEX segments_live_min_key ON segments (pipeline_id, min_time, first_pos) WHERE superseded_at IS NULL;
CREATE INDEX segments_live_max_key ON segments (pipeline_id, max_time, last_pos) WHERE superseded_at IS NULL;
