"""SQL of the log_store service (asyncpg, `$n` parameters only), in schema `log_store`."""
