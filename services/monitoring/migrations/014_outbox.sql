-- Monitoring's own events (events.monitoring.training_started, training_finished, challenger_decided,
-- model_swapped), written in the transaction of the change they tell of and published from here
-- (shared/outbox.py; services/monitoring/continuous.py): a publish that fails (NATS away, a timeout, the stream
-- refusing) or a process that dies after the commit loses nothing. Before, the change was committed and its event
-- published afterwards, and an event lost there was gone for good: e.g. no training_finished, so the lineage graph
-- never drew the arrow from the training run to its model version.
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
