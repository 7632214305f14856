"""Migration 016's trigger on workspace_members (a member's user_created_at is its user's created_at): a membership of
a user that does not exist is refused by the foreign key, as before 016 (016's first trigger set NULL, a NOT NULL
violation), and a membership written while its user's created_at changes ends with the new time (the trigger reads
the user FOR SHARE; before, the change could commit first, its own trigger not seeing the membership, which kept the
old time: the user listed twice among a caller's co-members)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.integration.conftest import service_schema
from tests.stack import REPO

pytestmark = pytest.mark.integration

MIGRATIONS = Path(REPO, "services/auth/migrations")


async def a_user(conn: asyncpg.Connection) -> uuid.UUID:
    user = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, password_hash) VALUES ($1, $2, 'x')", user, f"u{user.hex}")
    return user


async def a_workspace(conn: asyncpg.Connection, owner: uuid.UUID) -> int:
    return await conn.fetchval("INSERT INTO workspaces (name, created_by) VALUES ($1, $2) RETURNING id",
                               f"w{uuid.uuid4().hex}", owner)


async def test_a_membership_of_no_user_is_a_foreign_key_error(stack):
    async with service_schema(stack, "authtrig", MIGRATIONS) as pool, pool.acquire() as conn:
        workspace = await a_workspace(conn, await a_user(conn))
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("INSERT INTO workspace_members (workspace_id, user_id, user_type)"
                               " VALUES ($1, $2, 'COLLABORATOR')", workspace, uuid.uuid4())
        assert await conn.fetchval("SELECT count(*) FROM workspace_members") == 0


async def test_a_membership_written_while_its_user_changes_keeps_the_new_time(stack):
    async with service_schema(stack, "authtrig", MIGRATIONS) as pool, \
            pool.acquire() as adding, pool.acquire() as changing:
        user = await a_user(adding)
        workspace = await a_workspace(adding, user)
        tx = adding.transaction()
        await tx.start()
        await adding.execute("INSERT INTO workspace_members (workspace_id, user_id, user_type)"
                             " VALUES ($1, $2, 'OWNER')", workspace, user)
        change = asyncio.create_task(changing.execute(
            "UPDATE users SET created_at = created_at - interval '1 day' WHERE id = $1", user))
        pid = changing.get_server_pid()
        for _ in range(250):  # up to 5 s for the change to wait on the membership's lock (or to be done)
            if change.done() or await adding.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.02)
        await tx.commit()  # the change, waiting for this membership's transaction (or done before it: the bug)
        await change
        kept, created = await adding.fetchrow(
            "SELECT m.user_created_at, u.created_at FROM workspace_members m JOIN users u ON u.id = m.user_id"
            " WHERE m.workspace_id = $1", workspace)
        assert kept == created
