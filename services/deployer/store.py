"""SQL of the deployer service (asyncpg, `$n` parameters only), in schema `deployer`."""
