-- The resume sweep's prune (continuous.py prune_sent_deploys, every 30 s in every monitoring process) picks the rows
-- sent before a moment (SENT_SETTLED, the retention): without an index on sent_at it read the whole table each time,
-- rows kept for the retention (30 days) included. The index lets it read only the rows old enough to be pruned.
CREATE INDEX sent_deploys_sent_at ON sent_deploys (sent_at);
