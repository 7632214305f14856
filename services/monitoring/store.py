"""SQL of the monitoring service (asyncpg, `$n` parameters only), in schema `monitoring`."""
