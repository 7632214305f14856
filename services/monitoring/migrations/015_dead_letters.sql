-- Dead letters of the service's durable JetStream consumers (shared/consumers.py): an event that does not decode
-- (at its first delivery) or whose handler failed at every one of its nats.consumer_max_deliver deliveries, kept
-- here and then terminated. One row per message (durable, stream sequence): a redelivery after a crash between
-- this insert and the term adds nothing. The payload's first 64 KiB and its full size.
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
    PRIMARY KEY (durable, stream_seq)
);
