-- Dead letters of the log store's durable consumer of the deployer's announcements (`log-store-deployments`,
-- services/log_store/deployments.py): an events.pipeline.deployed or .serving that is not one (not JSON, a field
-- missing) is kept here and then terminated, where `railyard dead-letters list|replay` finds it
-- (shared/dead_letters.py), as the other services' durable consumers keep theirs (shared/consumers.py). Before, it was a line in the log and
-- acknowledged: its deployment's batches were quarantined an hour later with nothing telling why. The same table as
-- theirs (auth's migrations 011, 013, 014), one row per message (durable, stream sequence, stream time).
CREATE TABLE dead_letters (
    durable text NOT NULL,
    stream_seq bigint NOT NULL,
    stream text NOT NULL,
    subject text NOT NULL,
    deliveries integer NOT NULL,
    error text NOT NULL,
    payload bytea NOT NULL,
    payload_size integer NOT NULL,
    headers jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    stream_time timestamptz NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    replayed_at timestamptz,
    replay_msg_id text,
    PRIMARY KEY (durable, stream_seq, stream_time)
);
