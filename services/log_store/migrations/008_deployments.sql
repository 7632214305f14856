-- Which workspace each deployment belongs to, as the deployer announced it (events.pipeline.deployed, read by the
-- log store's own durable consumer `log-store-deployments`; services/log_store/deployments.py). A log batch is
-- taken only when the deployment its subject names (logs.inference.<deployment>) is known here and belongs to the
-- workspace its Railyard-Log header names: every engine replica connects as `engine`, so the header alone let a
-- compromised replica log into another workspace. Keyed by the deployment's name (`<deploy_id>-<id>`): a redeploy
-- under another deploy_id renames a deployment, and replicas of the old name may still be logging.
CREATE TABLE deployments (
    name text PRIMARY KEY,
    deployment_id bigint NOT NULL,
    workspace_id bigint NOT NULL,
    pipeline_id bigint NOT NULL,
    heard_at timestamptz NOT NULL DEFAULT now()
);
