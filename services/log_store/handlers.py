"""Business logic of the log_store service, as plain async functions (none beyond health yet)."""
