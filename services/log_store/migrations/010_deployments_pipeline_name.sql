-- The name of each deployment's pipeline, as the deployer announced it (events.pipeline.deployed and .serving carry
-- `pipeline_name` since 2026-12-04): a log batch is taken only when its Railyard-Log header names that pipeline too,
-- so a replica cannot log into another pipeline of its own workspace (services/log_store/deployments.py). NULL for a
-- deployment announced by an older deployer: not checked until the deployer names it again (at its next start,
-- events.pipeline.serving), which fills it in.
ALTER TABLE deployments ADD COLUMN pipeline_name text;
