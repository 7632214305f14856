-- Whether the deployer saw the replicas of the row's current activation serve (cleared by a new activation and at
-- deactivation, set with the deployed event's write, store.record_deployed). It tells apart, among rows still owing
-- their events.pipeline.deployed (`deployed_pending`), a deployment that served but whose write of the event failed
-- (store.mark_served, in a commit of its own) from one whose deployer died while its replicas loaded: after a restart
-- whose restore fails, the undeploy or the next deploy writes the owed event for the first (store.deactivate,
-- handlers.owed_before) and none for the second. Before, 334ec66 wrote it only for replicas serving at that moment, so
-- a deployment that served before the restart never got its deployed event.
ALTER TABLE deployments ADD COLUMN served boolean NOT NULL DEFAULT false;
-- Rows owing their event at the upgrade: the deployer before this told neither case apart, and its predecessor
-- (before 334ec66, which 006 upgraded from) wrote the owed event at the undeploy for every such row. Such a row is
-- owed its event unless it never served, which nothing here tells: it is taken as served, as the deploys that the
-- deployer answered 200 while their event's write failed were, so no acknowledged deploy's event is lost. Rows not
-- owing it: their event was written, or they are inactive (`served` matters only while it is owed).
UPDATE deployments SET served = true WHERE active AND deployed_pending;
