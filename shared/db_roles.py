"""Each service's own PostgreSQL role: it owns the service's schema and nothing else.

No service connects as the superuser. The superuser is used once per start, by whoever sets the database up
(the embedded stack's supervisor, or the `db-roles` one-shot container in docker-compose), to create a role
`railyard_<schema>` per service, give it its schema and everything already in it, and set its password. A
service's role cannot read another schema: the auth service's signing keys are readable by `railyard_auth`
alone. A schema is only reachable by its owner: the schema is created with the role as owner and PUBLIC has no
privilege on it.

    python -m shared.db_roles    # with RAILYARD_POSTGRES__DSN = the superuser's DSN and
                                 # RAILYARD_DB_PASSWORD__<SCHEMA> = each role's password
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from shared.db import check_schema_name

# The services that keep tables, i.e. those with a `migrations/` folder (a unit test checks both agree).
DATABASE_SCHEMAS: tuple[str, ...] = (
    "auth",
    "registry",
    "deployer",
    "log_store",
    "assay_runner",
    "workflow_lineage",
    "task_scheduler",
    "monitoring",
)

PASSWORD_ENV_PREFIX = "RAILYARD_DB_PASSWORD__"

# relkinds whose ownership is given with ALTER TABLE (indexes and owned sequences follow their table)
_TABLE_KINDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE"}


def service_role(schema: str) -> str:
    """The login role of the service that owns `schema`, e.g. `railyard_registry`."""
    return f"railyard_{check_schema_name(schema)}"


def role_dsn(superuser_dsn: str, schema: str, password: str) -> str:
    """The superuser's DSN with the service's role and password in its place (same host, port, database)."""
    parts = urlsplit(superuser_dsn)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(service_role(schema), safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def ensure_service_role(conn: asyncpg.Connection, schema: str, password: str) -> None:
    """Create or update the role of `schema` and make it the owner of the schema and all that is in it.

    Idempotent; run as the superuser on every start. A data directory from before roles existed has its
    tables owned by the superuser: they are handed over here.
    """
    role = service_role(schema)
    async with conn.transaction():
        # one bootstrap at a time (two stacks or containers starting together)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('railyard-roles'))")
        quoted_role, quoted_schema, secret = await conn.fetchrow(
            "SELECT quote_ident($1), quote_ident($2), quote_literal($3)", role, schema, password)
        options = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"ALTER ROLE {quoted_role} WITH {options} PASSWORD {secret}")
        else:
            await conn.execute(f"CREATE ROLE {quoted_role} WITH {options} PASSWORD {secret}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted_schema} AUTHORIZATION {quoted_role}")
        await conn.execute(f"ALTER SCHEMA {quoted_schema} OWNER TO {quoted_role}")
        await conn.execute(f"REVOKE ALL ON SCHEMA {quoted_schema} FROM PUBLIC")
        for kind, name in await conn.fetch(
            "SELECT c.relkind::text, quote_ident(c.relname) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE c.relnamespace = $1::regnamespace AND c.relkind::text = ANY($2::text[]) AND r.rolname <> $3",
            schema, list(_TABLE_KINDS), role):
            await conn.execute(f"ALTER {_TABLE_KINDS[kind]} {quoted_schema}.{name} OWNER TO {quoted_role}")
        for (name,) in await conn.fetch(
            "SELECT quote_ident(c.relname) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'S' AND r.rolname <> $2",
            schema, role):
            await conn.execute(f"ALTER SEQUENCE {quoted_schema}.{name} OWNER TO {quoted_role}")
        for (signature,) in await conn.fetch(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.pronamespace = $1::regnamespace AND r.rolname <> $2", schema, role):
            await conn.execute(f"ALTER ROUTINE {signature} OWNER TO {quoted_role}")
        for (name,) in await conn.fetch(
            "SELECT t.oid::regtype::text FROM pg_type t JOIN pg_roles r ON r.oid = t.typowner"
            " WHERE t.typnamespace = $1::regnamespace AND t.typtype IN ('e', 'd', 'r', 'm')"
            " AND r.rolname <> $2", schema, role):
            await conn.execute(f"ALTER TYPE {name} OWNER TO {quoted_role}")


async def ensure_service_roles(superuser_dsn: str, passwords: dict[str, str]) -> None:
    """Connect as the superuser and ensure the role of every schema in `passwords`."""
    conn = await asyncpg.connect(superuser_dsn)
    try:
        # PostgreSQL before 15 lets everyone create tables in `public`; no service role may
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for schema, password in passwords.items():
            await ensure_service_role(conn, schema, password)
    finally:
        await conn.close()


def main() -> int:
    """`python -m shared.db_roles`: the one-shot bootstrap of docker-compose / a Kubernetes Job."""
    dsn = os.environ.get("RAILYARD_POSTGRES__DSN", "")
    passwords = {schema: os.environ.get(f"{PASSWORD_ENV_PREFIX}{schema.upper()}", "")
                 for schema in DATABASE_SCHEMAS}
    missing = [f"{PASSWORD_ENV_PREFIX}{s.upper()}" for s, p in passwords.items() if not p]
    if not dsn or missing:
        print("railyard-db-roles: set RAILYARD_POSTGRES__DSN (the superuser's) and "
              + ", ".join(missing or ["the role passwords"]), file=sys.stderr)
        return 2
    asyncio.run(ensure_service_roles(dsn, passwords))
    print(f"railyard-db-roles: {len(passwords)} service roles ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
