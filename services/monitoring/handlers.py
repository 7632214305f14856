"""Business logic of the monitoring service, as plain async functions (none beyond health yet)."""
