-- Task arguments as json, not jsonb: task_args() gives the run its arguments in the caller's key order (the seed's
-- run log prints the dict as it was sent). Rows already stored keep jsonb's order.
ALTER TABLE tasks ALTER COLUMN args TYPE json USING args::json;
