"""Business logic of the deployer service, as plain async functions (none beyond health yet)."""
