"""users/query and workspaces/list_inference_clients page as workspaces/list_users does (docs/api-paging.md):
optional `limit` (1-1000) and `cursor`, keyset in SQL on the list's order (created_at, then the id: a UUID for users,
so the cursor is both as task/list's; a client id for inference clients, so the cursor is created_at and that id),
`next_cursor` beside `users` / `clients`, the seed's answer unchanged without `limit`; the SDK (Client.users,
Workspace.inference_clients) reads them a page at a time. Before, both were the whole list or the generic 422 with no
way to page, and `limit` was refused as an extra field.

And the orders auth's paged lists read in are indexes (migration 015): EXPLAIN of the store's own queries reads a
range of workspace_members_added / users_created / clients_workspace_created, with no Sort of the whole set. Before,
a workspace's members were read by the primary key (workspace_id, user_id) and sorted by added_at for every page."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from railyard_client import session as sdk_session

from services.auth import handlers, store
from shared.authz import Principal
from shared.bus import REPLY_HEADROOM, encode_reply
from shared.db import create_pool
from shared.errors import ReplyTooLarge
from shared.messages.auth import QueryUsers, Users
from shared.messages.base import Reply
from tests.integration.conftest import inference_client, more_members, post, requests_to, sdk_client

pytestmark = pytest.mark.integration


def pages_of(stack, token: str, route: str, asked: dict, key: str) -> tuple[list, list[str]]:
    """Every page of `route` asked 2 at a time: the pages' `key` items and the cursors answered."""
    seen, cursors, cursor = [], [], None
    while True:
        page = post(stack, route, token, {**asked, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        seen.append(page.json()[key])
        if (cursor := page.json().get("next_cursor")) is None:
            return seen, cursors
        cursors.append(cursor)
        assert len(seen) < 10, seen


def refused(stack, token: str, route: str, asked: dict, command: str) -> None:
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "17"}, f"cursor: not a next cursor of {command}"),
                       ({"limit": 2, "cursor": "9" * 19 + ".x"}, f"cursor: not a next cursor of {command}")):
        answer = post(stack, route, token, {**asked, **bad})
        assert answer.status_code == 400 and words in answer.json()["msg"], answer.text[:300]
        assert answer.json()["code"] == "invalid_request", answer.text[:300]


async def query_users(deps: handlers.AuthDeps, account, cmd: QueryUsers) -> Users:
    """handlers.query_users' answer (JSON bytes, as the gateway passes them on) read as the Users it encodes."""
    return Users.model_validate_json(await handlers.query_users(deps, principal_of(account), cmd))


def micros(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def test_users_query_pages_through_http_and_the_sdk(stack, alice, monkeypatch):
    members = await more_members(stack, alice, 5)  # alice and 5 users, made in one statement: one created_at
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT id, created_at FROM auth.users WHERE id = ANY($1::uuid[])"
                                " ORDER BY created_at, id", [uuid.UUID(m) for m in members])
    finally:
        await conn.close()
    ordered = [str(r["id"]) for r in rows]
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "users/query", alice.token, asked).json()
    assert list(whole) == ["users"] and list(whole["users"]) == ordered  # the seed's answer, oldest first
    seen, cursors = pages_of(stack, alice.token, "users/query", asked, "users")
    assert [list(page) for page in seen] == [ordered[0:2], ordered[2:4], ordered[4:]]
    assert {k: v for page in seen for k, v in page.items()} == whole["users"]
    assert cursors == [f"{micros(rows[i]['created_at'])}.{rows[i]['id'].hex}" for i in (1, 3)]
    refused(stack, alice.token, "users/query", asked, "users/query")
    # by ids too: a page of the ids asked for
    by_ids = post(stack, "users/query", alice.token, {"user_ids": ordered[3:], "limit": 2}).json()
    assert list(by_ids["users"]) == ordered[3:5] and by_ids["next_cursor"]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "users/query")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert [u.to_dict() for u in client.users()] == list(whole["users"].values())  # alice sees these only
        assert [body.get("cursor") for _, body in sent] == [None, *cursors]
        assert all(body == {"limit": 2, **({"cursor": body["cursor"]} if "cursor" in body else {})}
                   for _, body in sent), sent
    finally:
        client.close()


async def test_inference_clients_page_through_http_and_the_sdk(stack, alice, monkeypatch):
    made = [inference_client(alice, f"paged-{n}")[0] for n in range(6)]
    alice.client.post("workspaces/revoke_inference_client", {"workspace_id": alice.workspace_id,
                                                            "client_id": made[2]})
    live = [c for c in made if c != made[2]]
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "workspaces/list_inference_clients", alice.token, asked).json()
    assert list(whole) == ["clients"] and [c["client_id"] for c in whole["clients"]] == live  # oldest first
    seen, cursors = pages_of(stack, alice.token, "workspaces/list_inference_clients", asked, "clients")
    assert seen == [whole["clients"][0:2], whole["clients"][2:4], whole["clients"][4:]]
    assert [c.split(".", 1)[1] for c in cursors] == [live[1], live[3]]
    assert [int(c.split(".", 1)[0]) for c in cursors] == [
        micros(datetime.fromisoformat(whole["clients"][i]["created_at"])) for i in (1, 3)]
    refused(stack, alice.token, "workspaces/list_inference_clients", asked, "workspaces/list_inference_clients")

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "workspaces/list_inference_clients")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert client.current_workspace().inference_clients() == whole["clients"]
        assert [body.get("cursor") for _, body in sent] == [None, *cursors]
    finally:
        client.close()


class Recorder:
    """A pool (and the connection it lends) that records the query a store function sends (and answers no rows) and
    the settings it makes for it; a value it reads first (fetchval: the caller's workspaces) is read from `conn`."""

    def __init__(self, conn: asyncpg.Connection | None = None) -> None:
        self.conn, self.settings = conn, []

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    @contextlib.asynccontextmanager
    async def transaction(self, **options):
        yield

    async def execute(self, sql: str, *args):
        self.settings.append(sql)

    async def fetchval(self, sql: str, *args):
        return await self.conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args):
        self.sql, self.args = sql, args
        return []


async def plan_of(conn: asyncpg.Connection, call) -> str:
    recorder = Recorder()
    await call(recorder)
    plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + recorder.sql, *recorder.args)
    return json.dumps(json.loads(plan) if isinstance(plan, str) else plan)  # one line per plan, keys as they are


@pytest.mark.parametrize("after", [False, True], ids=["first page", "a later page"])
async def test_the_paged_orders_are_indexes(stack, alice, after):
    """The store's own queries, EXPLAINed with sequential scans and sorts priced out (as a large table would): the
    order is read from an index, so a page reads its rows, not the whole set."""
    now = datetime.now(UTC)
    cursor = (now, uuid.uuid4()) if after else None
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL search_path TO auth; SET LOCAL enable_seqscan = off;"
                               " SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
            members = await plan_of(conn, lambda pool: store.members(pool, alice.workspace_id, cursor, 3))
            users = await plan_of(conn, lambda pool: store.list_users(
                pool, ids=None, workspace_id=None, co_members_of=None, after=cursor, limit=3))
            clients = await plan_of(conn, lambda pool: store.inference_clients(
                pool, alice.workspace_id, (now, "inference-0") if after else None, 3))
    finally:
        await conn.close()
    for plan, index in ((members, "workspace_members_added"), (users, "users_created"),
                        (clients, "clients_workspace_created")):
        assert f'"Index Name": "{index}"' in plan and '"Node Type": "Sort"' not in plan, plan


def rows_read(node: dict, relation: str) -> float:
    """The rows an EXPLAIN ANALYZE plan read from `relation`: those each of its scans answered or filtered out."""
    read = 0.0
    if node.get("Relation Name") == relation:
        read += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
    return read + sum(rows_read(child, relation) for child in node.get("Plans", []))


@pytest.mark.parametrize("asked", [{"visible": True}, {"workspace": True}, {"workspace": True, "visible": True},
                                   {"visible": True, "limit": 3}, {"workspace": True, "visible": True, "limit": 3}],
                         ids=["a user's", "a workspace's (admin)", "a workspace's", "a user's page",
                              "a workspace's page"])
async def a_large_workspace(conn: asyncpg.Connection) -> None:
    """A workspace of 5,000 users of its own on the worker's database (made once), and the tables analyzed: one
    workspace holds most memberships, as on an instance with one large team beside small ones."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM auth.workspace_members GROUP BY workspace_id"
                               " HAVING count(*) >= 5000)"):
        tag = uuid.uuid4().hex[:8]
        made = [r["id"] for r in await conn.fetch(
            "INSERT INTO auth.users (id, username, email, password_hash) SELECT gen_random_uuid(), 'other' || g || '-'"
            " || $1, 'other' || g || '-' || $1 || '@example.com', 'x' FROM generate_series(1, 5000) g RETURNING id",
            tag)]
        workspace = await conn.fetchval("INSERT INTO auth.workspaces (name, created_by) VALUES ($1, $2) RETURNING id",
                                        f"large-{tag}", made[0])
        await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                           " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", workspace, made)
    await conn.execute("ANALYZE auth.users; ANALYZE auth.workspace_members")


@pytest.mark.parametrize("asked", [{"visible": True}, {"workspace": True}, {"workspace": True, "visible": True},
                                   {"visible": True, "limit": 3}, {"workspace": True, "visible": True, "limit": 3}],
                         ids=["a user's", "a workspace's (admin)", "a workspace's", "a user's page",
                              "a workspace's page"])
async def test_a_users_query_reads_the_users_it_answers(stack, alice, asked):
    """users/query of a user (others than admins: the users they share a workspace with) or of a workspace reads those
    users, not every user of the instance one by one: EXPLAIN ANALYZE of the store's own query, beside a workspace of
    5,000 other users (analyzed). Before, each filter was `($n IS NULL OR EXISTS (...))`, which PostgreSQL cannot
    join: every user was read and filtered (with migration 015's users (created_at, id), in index order: 200-640 ms
    a request on 200,000 users). Then the co-member filter joined workspace_members with itself, which the planner
    estimated from the whole column: beside that large workspace, alice's one co-member (herself) was estimated as
    nearly 5,000, and every user was read (a hash semi join over all users; for a page, users in order until the
    matches: docs/performance.md item 71); the fresh-clone CI met it once other tests had made a 13,000-member
    workspace on the worker's database before this file. The generic plan (parameters unknown) too."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await a_large_workspace(conn)
        me = uuid.UUID(alice.user_id)
        members = {r["user_id"] for r in await conn.fetch(
            "SELECT user_id FROM auth.workspace_members WHERE workspace_id = $1", alice.workspace_id)}
        async with conn.transaction():
            await conn.execute("SET LOCAL search_path TO auth")
            recorder = Recorder(conn)
            await store.list_users(recorder, ids=None,
                                   workspace_id=alice.workspace_id if asked.get("workspace") else None,
                                   co_members_of=me if asked.get("visible") else None, limit=asked.get("limit"))
            answered = await conn.fetch(recorder.sql, *recorder.args)
            custom = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + recorder.sql, *recorder.args)
            # the plan of the store's prepared statement after 5 runs (when the server may keep a generic one, made
            # without its parameters' values), with the settings the store makes for it: planned for its values
            for setting in recorder.settings:
                await conn.execute(setting)
            await conn.execute("PREPARE listing AS " + recorder.sql)
            values = ", ".join("NULL" if a is None else "'{" + ",".join(map(str, a)) + "}'" if isinstance(a, list)
                               else f"'{a}'" for a in recorder.args)
            for _ in range(6):
                await conn.execute(f"EXECUTE listing({values})")
            sixth = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE listing({values})")
            await conn.execute("DEALLOCATE listing")
    finally:
        await conn.close()
    assert recorder.settings == ["SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_bitmapscan = off"]
    assert {r["id"] for r in answered} <= members and len(answered) == min(len(members), asked.get("limit", 10**6))
    for plan in (custom, sixth):
        plan = json.loads(plan) if isinstance(plan, str) else plan
        assert rows_read(plan[0]["Plan"], "users") <= 2 * len(members), json.dumps(plan)


class Explaining:
    """auth's pool (its schema first) that also EXPLAIN ANALYZEs each users query the store fetches: the plans."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.plans, self.fetched, self.counted = pool, [], 0, 0

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            yield _ExplainingConnection(self, conn)

    async def fetch(self, sql: str, *args, conn=None):
        conn = conn or self.pool
        if " FROM users u" in sql:
            self.fetched += 1
            plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            self.plans.append((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
        return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args, conn=None):
        if "count(*)" in sql and " FROM users u" in sql:  # store.users_answer_size
            self.counted += 1
        return await (conn or self.pool).fetchrow(sql, *args)


class _ExplainingConnection:
    """A connection an Explaining pool lent: its users queries go through the pool's account."""

    def __init__(self, owner: Explaining, conn: asyncpg.Connection) -> None:
        self.owner, self.conn = owner, conn

    def __getattr__(self, name: str):
        return getattr(self.conn, name)

    async def fetch(self, sql: str, *args):
        return await self.owner.fetch(sql, *args, conn=self.conn)

    async def fetchrow(self, sql: str, *args):
        return await self.owner.fetchrow(sql, *args, conn=self.conn)


def rows_handled(node: dict) -> float:
    """Every row a plan's nodes produced or threw away (filters, join filters), over all their loops."""
    own = sum(node.get(key, 0) for key in ("Actual Rows", "Rows Removed by Filter", "Rows Removed by Join Filter"))
    return own * node.get("Actual Loops", 1) + sum(rows_handled(child) for child in node.get("Plans", []))


async def big_workspace(stack, account, count: int, email_domain: str = "example.com") -> None:
    """`count` users made in one statement (one created_at: the newest users) added to the account's workspace,
    the tables analyzed (a page's cursor then is at the statistics' newest time: estimated one row)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        made = await conn.fetch(
            "INSERT INTO auth.users (id, username, email, password_hash) SELECT gen_random_uuid(), $1 || g || $2,"
            " $1 || g || $2, 'x' FROM generate_series(1, $3) g RETURNING id", f"big-{uuid.uuid4().hex[:8]}-",
            f"@{email_domain}", count)
        await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                           " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", account.workspace_id,
                           [r["id"] for r in made])
        await conn.execute("ANALYZE auth.users; ANALYZE auth.workspace_members")
    finally:
        await conn.close()


def principal_of(account) -> Principal:
    return Principal(subject=account.user_id, kind="user", admin=False, client_id="test", username=account.email,
                     issued_at=time.time())


@pytest.mark.parametrize("by_workspace", [True, False], ids=["a workspace's members", "a user's co-members"])
async def test_every_page_of_a_large_workspace_reads_its_own_users(stack, alice, by_workspace):
    """users/query a page at a time (limit 1000, each next cursor) of a 4,000-member workspace whose members were
    made at one moment (as the UI's 13,000-member test made them): every page's query handles a bounded number of
    rows. Before, a page after the first (its cursor: one row estimated) joined the caller's co-members, hashed with
    the caller themself appended (`UNION ALL SELECT $me`), by scanning that whole set again for every user read:
    ~1,000 x 2,000 rows a page here, 1.3-4.3 s a page of 13,000 members (past the gateway's 5 s under load)."""
    await big_workspace(stack, alice, 4000)
    settings = stack.settings()
    pool = Explaining(await create_pool(settings.postgres, "auth"))
    try:
        everyone = await pool.fetchval("SELECT count(*) FROM users")
        deps = handlers.AuthDeps(pool=pool, settings=settings.auth, keys={})
        asked = {"workspace_id": alice.workspace_id} if by_workspace else {}
        seen, cursor = [], None
        while True:
            page = await query_users(deps, alice, QueryUsers(**asked, limit=1000, cursor=cursor))
            seen.extend(page.users)
            if (cursor := page.next_cursor) is None:
                break
    finally:
        await pool.pool.close()
    assert len(seen) == len(set(seen)) == 4001 and seen[0] == alice.user_id
    handled = [rows_handled(plan) for plan in pool.plans]
    assert len(handled) == 5 and max(handled) <= 10 * everyone, (handled, everyone, json.dumps(pool.plans)[:3000])


async def test_a_whole_users_query_too_large_for_a_reply_is_refused_before_it_is_read(stack, alice, monkeypatch):
    """users/query without limit whose answer cannot fit a reply: 422 reply_too_large telling to pass limit. A list
    longer than a page (MAX_PAGE; 100 here) is counted in PostgreSQL after its first MAX_PAGE + 1 users are read, and
    refused before the rest is read (before 86498a9, auth built the whole answer, 1.3 s for 13,000 users idle, seconds
    under load after the gateway had given up, to answer the same 422 from shared.bus.encode_reply). One no longer
    than a page is read at once, with no COUNT, and refused by encode_reply once encoded. An answer that fits is
    answered as before, and a page of the same workspace is answered."""
    await big_workspace(stack, alice, 300)
    settings = stack.settings()
    pool = Explaining(await create_pool(settings.postgres, "auth"))
    try:
        whole = QueryUsers(workspace_id=alice.workspace_id)
        fits = handlers.AuthDeps(pool=pool, settings=settings.auth, keys={}, reply_limit=lambda: 8 * 1024**2)
        encoded = await handlers.query_users(fits, principal_of(alice), whole)
        answer = Users.model_validate_json(encoded)
        assert len(answer.users) == 301 and pool.fetched == 1 and pool.counted == 0
        size = len(encoded)
        small = handlers.AuthDeps(pool=pool, settings=settings.auth, keys={}, reply_limit=lambda: size // 2)
        # no longer than a page: read, encoded, refused by encode_reply (shared/bus.py) as it would be on the bus
        refused_reply = Reply.model_validate_json(encode_reply(
            await handlers.query_users(small, principal_of(alice), whole), size // 2 + REPLY_HEADROOM, "auth"))
        assert refused_reply.status == 422 and refused_reply.error.code == "reply_too_large", refused_reply
        assert pool.fetched == 2 and pool.counted == 0
        monkeypatch.setattr(handlers.paging, "MAX_PAGE", 100)  # longer than a page: counted first
        with pytest.raises(ReplyTooLarge) as refused:
            await handlers.query_users(small, principal_of(alice), whole)
        assert pool.fetched == 3 and pool.counted == 1, "the rest of the users were read out"
        assert "(301 users)" in refused.value.msg and "pass limit" in refused.value.msg, refused.value.msg
        assert refused.value.status == 422 and refused.value.code == "reply_too_large"
        page = await query_users(small, alice, QueryUsers(workspace_id=alice.workspace_id, limit=1000))
        assert list(page.users) == list(answer.users)
        # longer than a page and fitting: counted, then read whole in one query: the same list
        assert Users.model_validate_json(await handlers.query_users(fits, principal_of(alice), whole)) == answer
        assert pool.fetched == 6 and pool.counted == 2
    finally:
        await pool.pool.close()
    monkeypatch.undo()
    # over HTTP: 13,000 members with ~215-character emails (10.1 MiB whole): the same 422, with what to pass
    await big_workspace(stack, alice, 12700, "".join(f"{letter * 60}." for letter in "xyz") + "example.com")
    started = time.monotonic()
    answer = post(stack, "users/query", alice.token, {"workspace_id": alice.workspace_id})
    assert answer.status_code == 422 and answer.json()["code"] == "reply_too_large", answer.text[:300]
    assert "would be at least " in answer.json()["msg"] and "pass limit" in answer.json()["msg"], answer.text[:300]
    print(f"refused in {time.monotonic() - started:.2f} s")


async def test_an_admins_whole_list_that_fits_is_read_without_a_count(stack, alice):
    """users/query without limit of an administrator (every user) or of a workspace, no longer than a page: one
    query, the users read at once, no COUNT before them (docs/performance.md item 57). Before, every whole list was
    counted first (store.users_answer_size) for the early 422, an extra query for every list that fits. The same
    users either way."""
    settings = stack.settings()
    pool = Explaining(await create_pool(settings.postgres, "auth"))
    try:
        deps = handlers.AuthDeps(pool=pool, settings=settings.auth, keys={}, reply_limit=lambda: 8 * 1024**2)
        admin_principal = Principal(subject=str(uuid.uuid4()), kind="user", admin=True, client_id="test",
                                    username="admin", issued_at=time.time())
        few = await pool.fetch("SELECT id FROM users u ORDER BY u.created_at, u.id LIMIT 3")
        for asked, who in (({"user_ids": [str(r["id"]) for r in few]}, admin_principal),
                           ({"workspace_id": alice.workspace_id}, principal_of(alice)), ({}, principal_of(alice))):
            pool.fetched = pool.counted = 0
            answer = Users.model_validate_json(await handlers.query_users(deps, who, QueryUsers(**asked)))
            assert answer.users and (pool.fetched, pool.counted) == (1, 0), (asked, pool.fetched, pool.counted)
    finally:
        await pool.pool.close()


async def test_a_whole_list_longer_than_a_page_is_read_at_one_moment(stack, alice, monkeypatch):
    """users/query without limit of a list longer than a page (MAX_PAGE, 5 here) answers its users as one query read
    them: two users who join the workspace together (one transaction) while it is read are both listed or neither.
    Before, its first MAX_PAGE + 1 users and the rest after the last of them were two reads: the two joining between
    them, the one older than those first users was missing and the newer one listed, a list that never was."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    pool = await create_pool(stack.settings().postgres, "auth")
    try:
        async def user(name: str) -> uuid.UUID:
            return await conn.fetchval(
                "INSERT INTO auth.users (id, username, email, password_hash) VALUES (gen_random_uuid(), $1, $1, 'x')"
                " RETURNING id", f"{name}-{uuid.uuid4().hex[:8]}@example.com")

        older = await user("older")  # made before the members below: among the list's first users
        await more_members(stack, alice, 20)
        newer = await user("newer")
        read, list_users = [], store.list_users

        async def listing(*args, **kwargs):
            rows = await list_users(*args, **kwargs)
            if not read:  # after the first read: both join in one transaction
                await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                                   " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", alice.workspace_id, [older, newer])
            read.append(len(rows))
            return rows

        monkeypatch.setattr(handlers.store, "list_users", listing)
        monkeypatch.setattr(handlers.paging, "MAX_PAGE", 5)
        deps = handlers.AuthDeps(pool=pool, settings=stack.settings().auth, keys={}, reply_limit=lambda: 8 * 1024**2)
        answer = await query_users(deps, alice, QueryUsers(workspace_id=alice.workspace_id))
        listed = (str(older) in answer.users, str(newer) in answer.users)
        assert listed in ((True, True), (False, False)), (listed, read)
        assert len(answer.users) == (23 if listed[0] else 21), (len(answer.users), read)
    finally:
        await pool.close()
        await conn.close()


async def test_a_user_in_no_workspace_sees_themself_only(stack, admin, alice, bob):
    """The co-member filter is a join of the caller's memberships (86498a9): a caller in none still sees themself
    (by id), whole or a page, and asking for others' ids answers none of them. Guards that change: the old query
    appended the caller to the co-members (UNION ALL), so this passes on the old code too."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute("DELETE FROM auth.workspace_members WHERE user_id = $1", uuid.UUID(alice.user_id))
    finally:
        await conn.close()
    for asked in ({}, {"limit": 2}, {"user_ids": [alice.user_id, bob.user_id]}, {"user_ids": [bob.user_id]}):
        answer = post(stack, "users/query", alice.token, asked)
        assert answer.status_code == 200, answer.text[:300]
        expected = [] if asked.get("user_ids") == [bob.user_id] else [alice.user_id]
        assert list(answer.json()["users"]) == expected and "next_cursor" not in answer.json(), (asked, answer.json())
    # and an administrator sees both
    both = admin.post("users/query", {"user_ids": [alice.user_id, bob.user_id]})["users"]
    assert sorted(both) == sorted([alice.user_id, bob.user_id])


async def test_the_rest_after_a_cursor_asked_whole_is_counted_from_the_cursor(stack, alice, monkeypatch):
    """A cursor without `limit` answers the rest of the list whole (docs/api-paging.md): the early 422's count (of a
    rest longer than a page: MAX_PAGE, 5 here) is of the users after the cursor only. Before (86498a9) it counted the
    whole list whatever the cursor, so a rest that fits a reply was refused because the whole list would not have."""
    await big_workspace(stack, alice, 300)
    settings = stack.settings()
    pool = await create_pool(settings.postgres, "auth")
    try:
        encoded = await handlers.query_users(handlers.AuthDeps(pool=pool, settings=settings.auth, keys={}),
                                             principal_of(alice), QueryUsers(workspace_id=alice.workspace_id))
        whole, size = Users.model_validate_json(encoded), len(encoded)
        small = handlers.AuthDeps(pool=pool, settings=settings.auth, keys={}, reply_limit=lambda: size // 2)
        monkeypatch.setattr(handlers.paging, "MAX_PAGE", 5)
        first = await query_users(small, alice, QueryUsers(workspace_id=alice.workspace_id, limit=290))
        rest = await query_users(small, alice, QueryUsers(workspace_id=alice.workspace_id, cursor=first.next_cursor))
        assert list(first.users) + list(rest.users) == list(whole.users) and len(rest.users) == 11
        assert rest.next_cursor is None
        # the rest from near the start still does not fit: refused early, counted from that cursor
        second = await query_users(small, alice, QueryUsers(workspace_id=alice.workspace_id, limit=1))
        with pytest.raises(ReplyTooLarge) as refused:
            await handlers.query_users(small, principal_of(alice), QueryUsers(workspace_id=alice.workspace_id,
                                                                              cursor=second.next_cursor))
        assert "(300 users)" in refused.value.msg, refused.value.msg
    finally:
        await pool.close()
