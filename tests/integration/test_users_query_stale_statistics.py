"""users/query pages of a workspace filled since the tables were last analyzed read a page, not the workspace once per
user (docs/performance.md item 74). The statistics then know other workspaces only and estimate the new one at one
member; before migration 016 a page after the first was planned as a Nested Loop of users_created from the cursor over
the workspace's members read by workspace_id alone and matched by a Join Filter, so every user read rescanned the
members read so far (0.3 s the second page of 13,000 members to 2.5 s the 13th, until autovacuum's ANALYZE; the UI's
13,000-member test met it). Now a workspace's page is a range of workspace_members_users_order (its members in the
users' order) and any other filter a look-up per row (services/auth/store.py: _users_source), whatever the statistics.

The members are added in a transaction the pages are read in: no ANALYZE (autovacuum's, another test's) can count
rows not committed, so the statistics are stale for certain, beside a 5,000-member workspace analyzed. What is checked
is the plan's shape (the rows its nodes handled over all their loops, EXPLAIN ANALYZE of the store's own query), not a
time."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from services.auth import store
from tests.integration.test_auth_list_pages import Recorder, a_large_workspace, rows_handled

pytestmark = pytest.mark.integration

MEMBERS = 3000
PAGE = 1000


async def page_of(conn: asyncpg.Connection, asked: dict, after) -> tuple[list[asyncpg.Record], dict]:
    """A page (PAGE users) of the store's own users query, read and EXPLAIN ANALYZEd on `conn`: its rows and plan."""
    recorder = Recorder(conn)
    await store.list_users(recorder, ids=None, after=after, limit=PAGE, **asked)
    for setting in recorder.settings:
        await conn.execute(setting)
    rows = await conn.fetch(recorder.sql, *recorder.args)
    plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + recorder.sql, *recorder.args)
    return rows, (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]


def shape(node: dict) -> str:
    """A plan in a line: each node's type, index or relation, rows x loops, and the rows its filters removed."""
    removed = sum(node.get(k, 0) for k in ("Rows Removed by Filter", "Rows Removed by Join Filter"))
    own = (f"{node['Node Type']} {node.get('Index Name', node.get('Relation Name', ''))}"
           f" {node.get('Actual Rows')}x{node.get('Actual Loops')}" + (f" -{removed}" if removed else ""))
    children = [shape(child) for child in node.get("Plans", [])]
    return own + (f" ({'; '.join(children)})" if children else "")


@pytest.mark.parametrize("by_workspace", [True, False], ids=["a workspace's members", "a user's co-members"])
async def test_pages_of_a_workspace_filled_since_the_last_analyze_read_a_page(stack, alice, by_workspace):
    me = uuid.UUID(alice.user_id)
    asked = ({"workspace_id": alice.workspace_id, "co_members_of": None, "member": me} if by_workspace
             else {"workspace_id": None, "co_members_of": me})
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await a_large_workspace(conn)  # analyzed: the statistics know it, not alice's new members
        async with conn.transaction():
            await conn.execute("SET LOCAL search_path TO auth")
            # as an import or the UI's test makes them: one statement, one created_at (every cursor after the first
            # page is then at the newest time the statistics could know: estimated one row)
            made = await conn.fetch(
                "INSERT INTO users (id, username, email, password_hash) SELECT gen_random_uuid(), $1 || g,"
                " $1 || g || '@example.com', 'x' FROM generate_series(1, $2) g RETURNING id",
                f"stale-{uuid.uuid4().hex[:8]}-", MEMBERS)
            await conn.execute("INSERT INTO workspace_members (workspace_id, user_id, user_type)"
                               " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", alice.workspace_id,
                               [r["id"] for r in made])
            expected = [r["id"] for r in await conn.fetch(
                "SELECT u.id FROM users u WHERE u.id IN (SELECT user_id FROM workspace_members WHERE workspace_id = $1)"
                " ORDER BY u.created_at, u.id", alice.workspace_id)]
            seen, plans, after = [], [], None
            while True:
                rows, plan = await page_of(conn, asked, after)
                seen.extend(r["id"] for r in rows)
                plans.append(plan)
                if len(rows) < PAGE:
                    break
                after = (rows[-1]["created_at"], rows[-1]["id"])
                assert len(plans) < 10, len(plans)
    finally:
        await conn.close()
    assert seen == expected and len(expected) == MEMBERS + 1 and seen[0] == me
    # a page's nodes handle a few rows per user answered (the range, the user's look-up, the join, the limit; the
    # co-members' merge: 4-8 a user); the quadratic plan handled ~1,000 x 1,500 rows (its Join Filter) the second page
    handled = [rows_handled(plan) for plan in plans]
    assert len(handled) == 4 and max(handled) <= 10 * PAGE, (handled, [shape(plan) for plan in plans])
