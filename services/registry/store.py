"""SQL of the registry service (asyncpg, `$n` parameters only), in schema `registry`."""
