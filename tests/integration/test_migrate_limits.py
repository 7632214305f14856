"""shared.db.migrate gives a migration's statements no time limit, and bounds its waits for locks instead.

Before, migrate's connection had a 30-s command_timeout: auth's migration 016 (75 s for 1,000,000 memberships) was cut
at 30 s, rolled back, and auth failed to start at every restart (rev-authplan, session 28). Limits here are shrunk so
the tests take seconds: whatever client limit migrate asks for is cut to 0.5 s, and the database's default
statement_timeout is 0.5 s (an operator's setting), both under the migration's 1.2 s."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import asyncpg
import pytest

from shared import db
from shared.db import Migration, MigrationError, migrate
from tests.stack import REPO

pytestmark = pytest.mark.integration

SLOW = [Migration(1, "slow", "CREATE TABLE things (id int); SELECT pg_sleep(1.2)")]
QUICK = [Migration(1, "quick", "CREATE TABLE things (id int)")]


async def dropped(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_a_migration_longer_than_any_limit_is_applied(stack, monkeypatch):
    real_connect = asyncpg.connect

    async def shrunk(*args, **kwargs):
        if kwargs.get("command_timeout") is not None:
            kwargs["command_timeout"] = 0.5
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "connect", shrunk)
    settings = stack.settings().postgres
    joined = "&" if "?" in settings.dsn else "?"
    slow_default = settings.model_copy(update={"dsn": f"{settings.dsn}{joined}statement_timeout=500"})
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    try:
        assert await migrate(slow_default, schema, SLOW) == [1]
        assert await migrate(slow_default, schema, SLOW) == []
    finally:
        await dropped(settings.dsn, schema)


async def hold_the_migration_lock(dsn: str, schema: str) -> asyncpg.Connection:
    holder = await asyncpg.connect(dsn)
    await holder.execute("BEGIN")
    await holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"railyard-migrations:{schema}")
    return holder


async def test_a_held_lock_is_waited_for_then_given_up(stack, monkeypatch):
    monkeypatch.setattr(db, "MIGRATION_RETRY_PAUSE", 0.1)
    settings = stack.settings().postgres
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    holder = await hold_the_migration_lock(settings.dsn, schema)
    try:
        with pytest.raises(MigrationError, match="no lock after"):
            await migrate(settings, schema, QUICK, lock_timeout=0.3, give_up_after=1.5)

        async def let_go_later() -> None:
            await asyncio.sleep(1.0)
            await holder.execute("ROLLBACK")

        release = asyncio.create_task(let_go_later())
        assert await migrate(settings, schema, QUICK, lock_timeout=0.3, give_up_after=30) == [1]
        await release
    finally:
        await holder.close()
        await dropped(settings.dsn, schema)


async def test_a_table_lock_is_retried_not_queued_behind_forever(stack, monkeypatch):
    monkeypatch.setattr(db, "MIGRATION_RETRY_PAUSE", 0.1)
    settings = stack.settings().postgres
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    later = [*QUICK, Migration(2, "alter", "ALTER TABLE things ADD COLUMN name text")]
    assert await migrate(settings, schema, QUICK) == [1]
    reader = await asyncpg.connect(settings.dsn)
    try:
        await reader.execute("BEGIN")
        await reader.fetch(f'SELECT * FROM "{schema}".things')  # holds ACCESS SHARE until it ends
        with pytest.raises(MigrationError, match="no lock after"):
            await migrate(settings, schema, later, lock_timeout=0.3, give_up_after=1.0)
        await reader.execute("ROLLBACK")
        assert await migrate(settings, schema, later, lock_timeout=0.3, give_up_after=30) == [2]
    finally:
        await reader.close()
        await dropped(settings.dsn, schema)


STARTER = """
import asyncio, sys
from shared.db import Migration, migrate
from shared.settings import PostgresSettings
asyncio.run(migrate(PostgresSettings(dsn=sys.argv[1]), sys.argv[2],
                    [Migration(1, "slow", "CREATE TABLE things (id int); SELECT pg_sleep(600)")]))
"""


async def test_a_starter_killed_mid_migration_holds_no_lock(stack):
    """A starter killed while its migration runs (a startup probe's kill, an OOM): its backend notices the client is
    gone (client_connection_check_interval), rolls back and lets go of the advisory lock, so the next starter applies
    the migrations instead of waiting for a statement nobody waits for."""
    settings = stack.settings().postgres
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    starter = await asyncio.create_subprocess_exec(sys.executable, "-c", STARTER, settings.dsn, schema, cwd=REPO)
    watcher = await asyncpg.connect(settings.dsn)
    try:
        for _ in range(300):  # up to 30 s for the starter to be in its migration
            if await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                                      " AND query LIKE '%pg_sleep(600)%'", f"railyard-{schema}"):
                break
            assert starter.returncode is None, "the starter ended before its migration"
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the starter never began its migration")
        os.kill(starter.pid, signal.SIGKILL)
        await starter.wait()
        assert await migrate(settings, schema, QUICK, lock_timeout=1.0, give_up_after=20) == [1]
    finally:
        if starter.returncode is None:
            starter.kill()
            await starter.wait()
        await watcher.close()
        await dropped(settings.dsn, schema)
