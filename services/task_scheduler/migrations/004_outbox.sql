-- The events of committed run changes (events.task_run.started / succeeded / failed), written in the same
-- transaction as the run's status and published from here (shared/outbox.py): a publish that fails (NATS away, a
-- timeout) or a process that dies after the commit loses nothing. Before, a run's end was committed and its event
-- published afterwards, and an event lost there was only logged: monitoring's continuous training never learned
-- that its run ended (the training stayed open, so no other one could start) and lineage drew no card for it.
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
