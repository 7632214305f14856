-- The events of committed changes (a window's events.assay.warning / events.assay.alert, an assay's
-- events.assay.created), written in the same transaction as the change itself and published from here: a publish
-- that fails (NATS away, a timeout) or a process that dies after the commit loses nothing. A row is deleted once
-- JetStream has acknowledged its event; it is published with Nats-Msg-Id = event_id, so a row published again
-- after a crash between the ack and the delete is stored once by the EVENTS stream (2-minute duplicate window)
-- and recorded once by lineage (event_id is its key) after that window (docs/assays.md, Events).
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
