"""SQL of the task_scheduler service (asyncpg, `$n` parameters only), in schema `task_scheduler`."""
