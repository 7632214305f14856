-- Orchestrations (uploaded zips, content-addressed by sha256 in object storage), the environments their
-- requirements are installed into (one per distinct requirements file), tasks, task runs and run logs.
-- Every scheduler process works from these tables alone, so any number of them can run, die and restart.

CREATE TABLE envs (
    requirements_sha text PRIMARY KEY,          -- sha256 of the requirements file's bytes
    requirements text NOT NULL,
    status text NOT NULL,                       -- installing | ready | failed
    reason text,
    worker text,                                -- the scheduler process installing it
    heartbeat_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orchestrations (
    id uuid PRIMARY KEY,
    workspace_id bigint NOT NULL,
    sha text NOT NULL,
    name text,
    file_name text NOT NULL,
    entrypoint text NOT NULL,                   -- path of main.py inside the zip
    requirements_sha text REFERENCES envs (requirements_sha),
    packaging_id uuid NOT NULL,
    owner_id text NOT NULL,
    status text NOT NULL,                       -- packaging | ready | failed
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orchestrations_workspace ON orchestrations (workspace_id, created_at);
CREATE INDEX orchestrations_requirements ON orchestrations (requirements_sha) WHERE status = 'packaging';

CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    workspace_id bigint NOT NULL,
    orch_id uuid NOT NULL REFERENCES orchestrations (id),
    orch_sha text NOT NULL,
    name text,
    owner_id text NOT NULL,
    args jsonb NOT NULL,
    timeout_seconds integer NOT NULL,
    schedule text,                              -- NULL: run once
    missed_run_policy text,
    next_fire timestamptz,                      -- the next schedule point not yet handled
    killed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_workspace ON tasks (workspace_id, created_at);
CREATE INDEX tasks_orch_sha ON tasks (orch_sha);
CREATE INDEX tasks_due ON tasks (next_fire) WHERE schedule IS NOT NULL AND NOT killed;

CREATE TABLE runs (
    id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES tasks (id),
    workspace_id bigint NOT NULL,
    scheduled_for timestamptz,                  -- the schedule point (scheduled tasks)
    status text NOT NULL,                       -- queued | running | success | failure
    exit_code integer,
    reason text,
    supervisor text,                            -- the scheduler process running it
    heartbeat_at timestamptz,
    kill_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- a schedule point makes one run, whichever process sees it first and however often
    UNIQUE (task_id, scheduled_for)
);
CREATE INDEX runs_task ON runs (task_id, created_at DESC);
CREATE INDEX runs_queued ON runs (workspace_id, created_at) WHERE status = 'queued';
CREATE INDEX runs_running ON runs (heartbeat_at) WHERE status = 'running';

CREATE TABLE run_logs (
    run_id uuid NOT NULL REFERENCES runs (id),
    seq integer NOT NULL,
    at timestamptz NOT NULL,
    stream text NOT NULL,                       -- stdout | stderr
    partial boolean NOT NULL,                   -- a line cut at the length limit (CRI's P tag)
    line text NOT NULL,
    PRIMARY KEY (run_id, seq)
);
