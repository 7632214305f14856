-- A number of each task owner's own, allocated at the owner's first run and kept (store.relay_number): its runs' gateway
-- relay connects to a loopback gateway from the number's address (shared.sandbox.relay_source), which no other owner
-- gets, so the gateway's per-address limits (connections, the token endpoint's buckets, failed sign-ins) are each
-- owner's alone. Before, the address came from 24 bits of a digest of the owner's id and two owners could share one
-- (a 3 % chance among 1,000 owners). A new table: nothing is rewritten, whatever the other tables hold; an owner of
-- tasks stored before gets its number at its next run.
CREATE TABLE relay_sources (
    owner_id text PRIMARY KEY,
    n bigint GENERATED ALWAYS AS IDENTITY (MINVALUE 0 START WITH 0) UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
