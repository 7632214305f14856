-- A deployment whose events.pipeline.deployed is still owed: set when a deploy activates the row before its replicas
-- start (a first deploy, or a redeploy of a deployment that does not serve), cleared in the transaction that writes
-- the event to the outbox once they serve. A deployer that died in between left the row active and the event
-- unwritten, and the restore after its restart brought the deployment back without it (lineage and auth never
-- heard of it being deployed); the restore now writes the event when it finds the flag set and its replicas serve.
ALTER TABLE deployments ADD COLUMN deployed_pending boolean NOT NULL DEFAULT false;
