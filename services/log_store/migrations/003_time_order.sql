-- Pages are in time order across schemas (issue 14): a segment written from now on holds its rows sorted by
-- (time, position), so a page can merge segments of several schemas by time. `sorted` tells such segments
-- from older ones (read whole and sorted in memory until compaction rewrites them). A compacted segment
-- carries each row's position in a `_pos` column; a fresh one numbers its rows first_pos, first_pos + 1, ...
ALTER TABLE segments ADD COLUMN sorted boolean NOT NULL DEFAULT false;
CREATE INDEX segments_live_min_time ON segments (pipeline_id, min_time, id) WHERE superseded_at IS NULL;
CREATE INDEX segments_live_max_time ON segments (pipeline_id, max_time, id) WHERE superseded_at IS NULL;
