-- Conversions that ended (events.model.version_finished) before continuous training recorded their model version's
-- upload (events.model.uploaded): the two events are read by separate durable consumers, so the finished one may be
-- handled first (a backlog after a restart, a fast conversion). continuous.on_model_finished writes the version's
-- final status here when no training has it yet; on_model_uploaded takes it (and deletes the row) when it records a
-- converting upload, so the training does not wait for a conversion already over. Both hold the version's advisory
-- lock (continuous.CONVERSION_LOCK). Rows no upload took are deleted after the events' retention
-- (continuous.prune_finished_conversions, with the delivery resumer's sweep).
CREATE TABLE finished_conversions (
    model_version uuid PRIMARY KEY,
    status        text NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX finished_conversions_finished_at ON finished_conversions (finished_at);
