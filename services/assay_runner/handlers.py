"""Business logic of the assay_runner service, as plain async functions (none beyond health yet)."""
