-- Whether the events' readers (lineage) were told the deployment is deployed: set in the transaction that writes its
-- events.pipeline.deployed (store.record_deployed), cleared when it is made inactive (store.deactivate). An undeploy, or
-- a failed deploy leaving it inactive, writes events.pipeline.undeployed only for a deployment so told, and the
-- deployed event a row still owes (`deployed_pending`) only when the deployer sees its replicas serve: a deployer that
-- died while a first deploy's replicas still loaded, whose restore then failed, left a row owing the event of a
-- deployment that never served, and its undeploy wrote deployed (and undeployed) for it.
ALTER TABLE deployments ADD COLUMN announced boolean NOT NULL DEFAULT false;
-- an active row owing nothing had its event written; one still owing it may or may not have had an earlier version's
UPDATE deployments SET announced = active AND NOT deployed_pending;
