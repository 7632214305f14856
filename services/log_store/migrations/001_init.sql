-- Schema `log_store` and its migration table are created by the runner (shared/db.py).
-- The service's tables arrive with the issue that builds it.
SELECT 1;
