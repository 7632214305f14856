-- The events of committed model versions (events.model.uploaded, events.model.version_finished), written in the
-- same transaction as the version (its row at upload, its final status after a conversion) and published from here
-- (shared/outbox.py): a publish that fails (NATS away, a timeout, the stream refusing) or a process that dies after
-- the commit loses nothing. Before, the version was committed and its event published afterwards, and an event
-- lost there was gone for good: the model was missing from workspaces/list (auth) and the lineage graph, and a
-- continuous training waiting for it failed after 60 s as "registered no model version".
-- A row is deleted once JetStream has acknowledged its event; it is published with Nats-Msg-Id = event_id.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
