-- The events of workflow_lineage's committed changes (events.project.changed, events.project.version_created,
-- events.workflow.link_added, events.benchmark.completed), written in the same transaction as the change and
-- published from here (shared/outbox.py), as the other services' events are. Before, they were published after the
-- commit (a content change's inside its transaction, before the commit): a JetStream publish that timed out or was
-- refused made the request an error although the change was (or was then) committed, the caller's retry met a
-- conflict (projects/create: the name is taken), and the event was lost for good.
-- A row is deleted once JetStream has acknowledged its event; it is published with Nats-Msg-Id = event_id, on the
-- same subject and with the same body as before. One project's rows are written under its row's lock, so they are
-- in commit order and go out in that order: the last events.project.changed of a project carries its final hash.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
