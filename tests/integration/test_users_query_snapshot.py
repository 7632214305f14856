"""users/query of a user (the users they share a workspace with) reads the caller's workspaces and the users in one
snapshot, with one query text whatever the workspaces (services/auth/store.py: _users_read, _users_source)."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import pytest

from services.auth import handlers, store
from shared.db import create_pool
from shared.messages.auth import QueryUsers
from tests.integration.test_auth_list_pages import Recorder, query_users

pytestmark = pytest.mark.integration

WORKSPACES_READ = "coalesce(array_agg(workspace_id), '{}') FROM workspace_members WHERE user_id"
MEMBERSHIP_READ = "SELECT m.user_type FROM workspace_members m JOIN workspaces w"


class Interleaving:
    """auth's pool, running `then` (once) right after a users query has read the caller's workspaces (or another
    statement containing `after`), and recording the text of every statement sent."""

    def __init__(self, pool: asyncpg.Pool, then, after: str = WORKSPACES_READ) -> None:
        self.pool, self.then, self.texts, self.after = pool, then, [], after

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    async def _after(self, sql: str, value):
        self.texts.append(sql)
        if self.after in sql and self.then is not None:
            then, self.then = self.then, None
            await then()
        return value

    async def fetchval(self, sql: str, *args, conn=None):
        return await self._after(sql, await (conn or self.pool).fetchval(sql, *args))

    async def fetch(self, sql: str, *args, conn=None):
        return await self._after(sql, await (conn or self.pool).fetch(sql, *args))

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            yield _Lent(self, conn)


class _Lent:
    def __init__(self, owner: Interleaving, conn: asyncpg.Connection) -> None:
        self.owner, self.conn = owner, conn

    def __getattr__(self, name: str):
        return getattr(self.conn, name)

    async def fetchval(self, sql: str, *args):
        return await self.owner.fetchval(sql, *args, conn=self.conn)

    async def fetch(self, sql: str, *args):
        return await self.owner.fetch(sql, *args, conn=self.conn)


async def _user(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    return await conn.fetchval(
        "INSERT INTO auth.users (id, username, email, password_hash) VALUES (gen_random_uuid(), $1, $1, 'x')"
        " RETURNING id", f"{name}-{uuid.uuid4().hex[:8]}@example.com")


async def _workspace(conn: asyncpg.Connection, members: list[uuid.UUID]) -> int:
    workspace = await conn.fetchval("INSERT INTO auth.workspaces (name, created_by) VALUES ($1, $2) RETURNING id",
                                    f"snap-{uuid.uuid4().hex[:8]}", members[0])
    await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                       " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", workspace, members)
    return workspace


@pytest.mark.parametrize("limit", [None, 1000], ids=["whole", "a page"])
async def test_a_users_query_lists_co_members_of_one_moment(stack, alice, limit):
    """alice shares a second workspace with dave; right after her users/query has read her workspaces, she leaves it
    and carol joins it (one transaction). At no moment was carol alice's co-member: she is not listed, dave is (the
    list of the moment before). Before, the workspaces and the users were two statements with no shared snapshot: the
    users read after the change listed carol as alice's co-member."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    pool = await create_pool(stack.settings().postgres, "auth")
    try:
        me = uuid.UUID(alice.user_id)
        dave, carol = await _user(conn, "dave"), await _user(conn, "carol")
        second = await _workspace(conn, [me, dave])

        async def leave_and_join() -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM auth.workspace_members WHERE workspace_id = $1 AND user_id = $2",
                                   second, me)
                await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                                   " VALUES ($1, $2, 'COLLABORATOR')", second, carol)

        interleaving = Interleaving(pool, leave_and_join)
        deps = handlers.AuthDeps(pool=interleaving, settings=stack.settings().auth, keys={},
                                 reply_limit=lambda: 8 * 1024**2)
        answer = await query_users(deps, alice, QueryUsers(limit=limit))
        assert interleaving.then is None  # the change was made between the reads
        assert str(carol) not in answer.users, "carol listed: a co-member of alice's at no moment"
        assert str(dave) in answer.users and alice.user_id in answer.users
        # and the next query sees the change: carol is no co-member of alice's now, nor is dave
        after = await query_users(handlers.AuthDeps(pool=pool, settings=stack.settings().auth, keys={}), alice,
                                  QueryUsers(limit=limit))
        assert str(dave) not in after.users and str(carol) not in after.users
    finally:
        await pool.close()
        await conn.close()


@pytest.mark.parametrize("limit", [None, 1000], ids=["whole", "a page"])
async def test_a_users_query_of_a_workspace_checks_membership_in_the_snapshot_it_lists_in(stack, alice, limit):
    """alice lists the users of a workspace she shares with dave; right after her membership in it was read, she is
    removed from it and carol joins it (one transaction). The answer is of one moment: the members of the moment she
    was one (dave, herself), not carol's workspace listed to someone no longer in it. Before, the membership check
    (require_member) and the users were two statements with no shared snapshot: the users read after the change
    listed carol, and not alice, to alice. Her next query is a 404."""
    from shared.errors import NotFound

    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    pool = await create_pool(stack.settings().postgres, "auth")
    try:
        me = uuid.UUID(alice.user_id)
        dave, carol = await _user(conn, "dave"), await _user(conn, "carol")
        shared = await _workspace(conn, [dave, me])

        async def removed_and_carol_joins() -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM auth.workspace_members WHERE workspace_id = $1 AND user_id = $2",
                                   shared, me)
                await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                                   " VALUES ($1, $2, 'COLLABORATOR')", shared, carol)

        interleaving = Interleaving(pool, removed_and_carol_joins, after=MEMBERSHIP_READ)
        deps = handlers.AuthDeps(pool=interleaving, settings=stack.settings().auth, keys={},
                                 reply_limit=lambda: 8 * 1024**2)
        answer = await query_users(deps, alice, QueryUsers(workspace_id=shared, limit=limit))
        assert interleaving.then is None  # the change was made between the membership read and the users
        assert str(carol) not in answer.users, "carol listed to alice, removed from the workspace before the list"
        assert set(answer.users) == {str(dave), alice.user_id}
        with pytest.raises(NotFound, match=f"workspace {shared} not found"):
            await query_users(handlers.AuthDeps(pool=pool, settings=stack.settings().auth, keys={}), alice,
                              QueryUsers(workspace_id=shared, limit=limit))
    finally:
        await pool.close()
        await conn.close()


async def test_a_users_query_has_one_text_whatever_the_workspaces(stack, alice):
    """The co-member filter of callers in one and in two workspaces, and the workspace filter of two workspaces, are
    each one query text (one prepared statement a connection, not one more for every set of workspaces). Before,
    the workspace ids were written in the text."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        me = uuid.UUID(alice.user_id)
        erin = await _user(conn, "erin")
        solo, pair = await _workspace(conn, [erin]), await _workspace(conn, [erin, me])
        texts: dict[str, set[str]] = {"co-members": set(), "workspace": set()}
        await conn.execute("SET search_path TO auth")
        for caller in (me, erin):  # alice: her own workspace and pair; erin: solo and pair
            recorder = Recorder(conn)
            await store.list_users(recorder, ids=None, workspace_id=None, co_members_of=caller, limit=3)
            texts["co-members"].add(recorder.sql)
        for workspace in (solo, pair, alice.workspace_id):
            recorder = Recorder(conn)
            await store.list_users(recorder, ids=None, workspace_id=workspace, co_members_of=None, limit=3)
            texts["workspace"].add(recorder.sql)
    finally:
        await conn.close()
    assert all(len(found) == 1 for found in texts.values()), texts
