-- The events of auth's committed changes (a user created, deactivated or activated, a workspace created, a membership
-- changed, tokens revoked, the signing key rotated), written in the same transaction as the change and published from
-- here (shared/outbox.py), as the other services' events are. Before, they were published after the commit: a
-- JetStream publish that timed out or was refused (a busy stream, NATS reconnecting) made the request a 500 although
-- the change was committed (users/invite retried then got 409), and the event was lost for good.
-- A row is deleted once JetStream has acknowledged its event; it is published with Nats-Msg-Id = event_id, on the
-- same subject and with the same body as before (core-NATS subscribers such as shared/authz.py's VerifierFeed still
-- receive it).
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
