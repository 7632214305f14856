-- The deployer's events (events.pipeline.version_created, events.pipeline.deployed, events.pipeline.undeployed),
-- written in the transaction that stores what they tell (the version; the deployment once its replicas serve; the
-- deployment made inactive) and published from here (shared/outbox.py): a publish that fails (NATS away, a timeout,
-- the stream refusing) or a process that dies after the commit loses nothing. Before, the change was committed and
-- its event published afterwards, and an event lost there was gone for good: a pipeline missing from
-- workspaces/list (auth) and the lineage graph, no deployment card or a stale active flag, no automatic benchmark;
-- and pipelines/create answered an error for a version it had stored.
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
