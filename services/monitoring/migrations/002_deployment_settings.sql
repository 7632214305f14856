-- Seed 003's deployment management: what the monitoring service keeps per deployment (the deployer's id,
-- which survives redeploys). The pipeline and its versions stay the deployer's.
CREATE TABLE deployment_settings (
    deployment_id   integer PRIMARY KEY,
    workspace_id    integer NOT NULL,
    display_name    text,
    target_datalake text,
    min_threshold   double precision CHECK (min_threshold >= 0 AND min_threshold <= 1),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deployment_tags (
    deployment_id integer NOT NULL,
    tag           text NOT NULL,
    added_at      timestamptz NOT NULL DEFAULT now(),
    position      bigserial,
    PRIMARY KEY (deployment_id, tag)
);
