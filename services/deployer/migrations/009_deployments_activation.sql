-- Which activation of the deployment the row holds: a UUID the deploy chose, written by every activation
-- (store.activate_deployment). A redeploy whose record's commit raised reads the row again to learn whether that
-- commit took effect (handlers._recorded): a redeploy identical to what served (same version, deploy_id, config and
-- spec) left the row looking the same either way, so one refused was taken as committed, its replicas served and its
-- events.pipeline.deployed was never written. The row's activation tells the two apart; it also keeps a failed first
-- deploy's late clean-up (handlers.Deactivations) from deactivating a later deploy of the row. NULL: an activation
-- made before this migration.
ALTER TABLE deployments ADD COLUMN activation uuid;
