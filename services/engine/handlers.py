"""Business logic of the engine service, as plain async functions (none beyond health yet)."""
