-- Ids of slow or re-sent inference requests already stored (issue 14): the gateway re-sends a request left
-- unanswered for 3 s with the same id; if two replicas both ran it, the second record is dropped here.
CREATE TABLE requests (
    request_id text PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_committed ON requests (committed_at);
