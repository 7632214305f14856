"""Business logic of the registry service, as plain async functions (none beyond health yet)."""
