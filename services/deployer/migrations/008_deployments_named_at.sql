-- When the deployer last named the deployment in an events.pipeline.serving (handlers.announce_serving, at a start;
-- NULL: never). A start names a deployment again only when that is an hour old or more (NAMED_AGAIN_AFTER): each start
-- named every active deployment, so a deployer restarted in a loop (a crash soon after its start, restarted within
-- seconds) wrote N events per start into EVENTS, whose size limit refuses every service's events once reached
-- (`discard: new`), and as many rows into lineage's event log. A naming an hour old is still in EVENTS (30 days).
ALTER TABLE deployments ADD COLUMN named_at timestamptz;
