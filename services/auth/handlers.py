"""Business logic of the auth service, as plain async functions (none beyond health yet)."""
