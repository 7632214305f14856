"""Business logic of the task_scheduler service, as plain async functions (none beyond health yet)."""
