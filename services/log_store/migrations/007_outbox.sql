-- The log store's events.logs.batch_quarantined, written in the transaction that records the quarantined batch (its
-- `quarantine` row) and published from here (shared/outbox.py), as the other services' events are. Before, the
-- ingest loop published it after that commit and after acknowledging the message: a refused or timed-out publish
-- was only a warning in the log and the event was gone (a process dying in between lost it too), and each publish
-- held up ingestion while it waited for JetStream's ack (a burst of bad batches: one wait each).
-- A row is deleted once JetStream has acknowledged its event; it is published with Nats-Msg-Id = event_id, on the
-- same subject and with the same body as before.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
