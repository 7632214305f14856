-- Every domain event seen on the EVENTS stream, once (the event id is the key), so a redelivery
-- after a restart is recorded only once. The lineage graph is built from these rows.
CREATE TABLE event_log (
    event_id    uuid PRIMARY KEY,
    subject     text NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_log_subject ON event_log (subject, occurred_at);
