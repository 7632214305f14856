"""Each service connects to PostgreSQL with its own role, which owns its own schema and nothing else; no service
process holds the superuser's DSN (it is the supervisor's, for creating the roles only)."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

from shared.db_roles import DATABASE_SCHEMAS, ensure_service_role, role_dsn, service_role

pytestmark = pytest.mark.integration


def _dsn(stack, schema: str) -> str:
    return role_dsn(stack.settings().postgres.dsn, schema, stack.secrets()[f"postgres_password_{schema}"])


async def test_each_role_reads_its_own_schema_and_no_other(stack):
    for schema in DATABASE_SCHEMAS:
        conn = await asyncpg.connect(_dsn(stack, schema))
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") > 0
            assert not await conn.fetchval("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles"
                                           " WHERE rolname = current_user")
            for other in DATABASE_SCHEMAS:
                if other != schema:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetchval(f"SELECT count(*) FROM {other}.schema_migrations")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"CREATE SCHEMA s_{uuid.uuid4().hex[:8]}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"CREATE TABLE public.t_{uuid.uuid4().hex[:8]} (x int)")
        finally:
            await conn.close()


async def test_signing_keys_are_readable_by_the_auth_role_alone(stack):
    for schema in DATABASE_SCHEMAS:
        conn = await asyncpg.connect(_dsn(stack, schema))
        try:
            if schema == "auth":
                assert await conn.fetchval("SELECT count(*) FROM auth.signing_keys WHERE active") == 1
            else:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT private_pem FROM auth.signing_keys")
                # nor by a path that avoids the schema qualifier
                await conn.execute("SET search_path TO auth")
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
                    await conn.fetch("SELECT private_pem FROM signing_keys")
        finally:
            await conn.close()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_no_service_process_holds_the_superuser_dsn(stack):
    secrets = stack.secrets()
    services = {name: c for name, c in stack.state()["components"].items() if c["kind"] == "service"}
    assert len(services) >= 10
    for name, component in services.items():
        environ = _environ(component["pid"])
        assert secrets["postgres_password"] not in "\0".join(environ.values()), name
        dsn = environ.get("RAILYARD_POSTGRES__DSN")
        if name in DATABASE_SCHEMAS:
            assert dsn and unquote(urlsplit(dsn).username) == service_role(name), name
            assert urlsplit(dsn).password == secrets[f"postgres_password_{name}"]
        else:
            assert dsn is None, f"{name} keeps no tables but holds a database DSN"
        # secrets one service uses reach that service only
        assert ("RAILYARD_AUTH__BOOTSTRAP_ADMIN_PASSWORD" in environ) == (name == "auth"), name
        assert ("RAILYARD_REGISTRY__SECRETS_KEY" in environ) == (name == "registry"), name


async def test_tables_an_older_stack_made_as_superuser_are_handed_to_the_role(stack):
    superuser = await asyncpg.connect(stack.settings().postgres.dsn)
    table = f"legacy_{uuid.uuid4().hex[:8]}"
    try:
        await superuser.execute(f"CREATE TABLE monitoring.{table} (id bigserial PRIMARY KEY, v text)")
        await ensure_service_role(superuser, "monitoring", stack.secrets()["postgres_password_monitoring"])
        conn = await asyncpg.connect(_dsn(stack, "monitoring"))
        try:
            await conn.execute(f"INSERT INTO monitoring.{table} (v) VALUES ('kept')")
            assert await conn.fetchval(f"SELECT v FROM monitoring.{table}") == "kept"
            assert await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = $1", table) \
                == "railyard_monitoring"
        finally:
            await conn.close()
    finally:
        await superuser.execute(f"DROP TABLE IF EXISTS monitoring.{table}")
        await superuser.close()
