"""SQL of the assay_runner service (asyncpg, `$n` parameters only), in schema `assay_runner`."""
