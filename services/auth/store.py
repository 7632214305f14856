"""SQL of the auth service (asyncpg, `$n` parameters only), in schema `auth`."""
