"""A page of 1000 users of users/query: auth's build of the answer and the gateway's handling of it (docs/performance.md
item 57), and the queries of an administrator's whole list that fits a reply.

    .venv/bin/python -m bench.users_page [--dsn postgresql://...] [--users 1000] [--rounds 8] [--calls 30]
    .venv/bin/python -m bench.users_page --stale 13000 [--rounds 2]

A (the code before item 57, put together from the functions that are still there): auth made a UserRecord a user
(handlers._user_record), paging.page encoded each to size the page, Users(...) then reply_ok dumped them again and
encode_reply encoded the Reply; the gateway read the reply (shared.bus.request: Reply.model_validate_json), then
FastAPI validated the data against the route's response_model (m.Users) and encoded it (what its dump_json fast path
does: fastapi.routing.serialize_response). B (now): auth encodes the page from its rows at once (handlers.users_answer,
orjson) and encode_reply puts those bytes in the envelope; the gateway cuts them out of it (shared.bus.reply_data_bytes)
and answers them as they are. The rows are real asyncpg records (store.list_users) of a scratch schema; both answers are
checked to be the same bytes before timing. Rounds alternate A B / B A; each prints the medians of `calls` calls.

Then the whole list of an administrator (no `limit`, no filter) that fits, of a schema of `--whole` users (50 and 1000
by default): A the COUNT (store.users_answer_size, the early 422 check) then the list read; B handlers._whole_list (one
read of at most MAX_PAGE + 1 rows, no COUNT for a list no longer than a page).

With --stale N (docs/performance.md item 74), the walk of a workspace filled since the tables were last analyzed: two
analyzed workspaces of N members and 5,000 other users, then autovacuum off on auth's tables (to hold the state) and a
new workspace of its owner and N users made in one statement (one created_at, ~215-character emails, as the UI's
13,000-member test makes them); its pages of 1000 walked with the cursor through store.list_users, as users/query
reads them: by workspace (`workspace_id`, the owner a member) and as the owner's co-members; each page's ms, then the
same after an ANALYZE. Run from an old tree (`git archive <rev> | tar -x -C <scratch dir>`, this file copied in) for its
figures: the store and the migrations are read from the working directory.

On scratch schemas (auth's migrations) of the given PostgreSQL, dropped afterwards; without --dsn, of a scratch
pgserver PostgreSQL in a temporary directory (its Unix socket), removed afterwards."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from fastapi.routing import serialize_response
from fastapi.utils import create_model_field

from bench.timing import load, ms, postgres, timed
from services.auth import handlers, store
from shared import paging, subjects
from shared.authz import Principal
from shared.bus import _reply_data, encode_reply, reply_data_bytes, reply_ok
from shared.db import _server_settings, apply_migrations, load_migrations
from shared.messages.auth import Users

ADMIN = Principal(subject=str(uuid.UUID(int=1)), kind="user", admin=True, client_id="sdk", username="bench",
                  issued_at=0.0)
MAX_PAYLOAD = 8 * 1024**2
SUBJECT = subjects.AUTH_USERS_QUERY
USERS_FIELD = create_model_field(name="Response", type_=Users, mode="serialization")


async def old_auth(rows: list[Any], limit: int | None) -> bytes:
    records, next_cursor = await paging.page(rows, limit, lambda r: handlers._user_record(r, ADMIN), paging.key_cursor)
    return encode_reply(reply_ok(Users(users={r.id: r for r in records}, next_cursor=next_cursor)), MAX_PAYLOAD,
                        SUBJECT)


async def new_auth(rows: list[Any], limit: int | None) -> bytes:
    return encode_reply(await handlers.users_answer(rows, limit, ADMIN), MAX_PAYLOAD, SUBJECT)


async def old_gateway(body: bytes) -> bytes:
    data = _reply_data(SUBJECT, body, None)
    return await serialize_response(field=USERS_FIELD, response_content=data, dump_json=True)


async def new_gateway(body: bytes) -> bytes:
    return reply_data_bytes(SUBJECT, body, Users)  # as the gateway does: the top level checked (1-2 µs)


async def page(pool: asyncpg.Pool, users: int, rounds: int, calls: int) -> None:
    rows = await store.list_users(pool, ids=None, workspace_id=None, co_members_of=None, limit=users + 1)
    limit = users if len(rows) > users else None
    a_body, b_body = await old_auth(rows, limit), await new_auth(rows, limit)
    a_http, b_http = await old_gateway(a_body), await new_gateway(b_body)
    assert a_body == b_body and a_http == b_http, "the answers differ"
    print(f"a page of {min(users, len(rows))} users: reply {len(a_body)} bytes, HTTP body {len(a_http)} bytes",
          flush=True)
    for round_ in range(rounds):
        sides = [("A", old_auth, old_gateway, a_body), ("B", new_auth, new_gateway, b_body)]
        for name, auth, gateway, body in sides if round_ % 2 == 0 else sides[::-1]:
            built = await timed(lambda auth=auth: auth(rows, limit), calls)
            handled = await timed(lambda gateway=gateway, body=body: gateway(body), calls)
            print(f"round {round_} {name}: auth {ms(built)}, gateway {ms(handled)}, load {load(2)}", flush=True)


async def whole(pool: asyncpg.Pool, users: int, rounds: int, calls: int) -> None:
    """An administrator's whole list: every user of a schema holding `users`, no filter."""
    deps = handlers.AuthDeps(pool=pool, settings=None, keys={}, reply_limit=lambda: MAX_PAYLOAD - 4096)

    async def old() -> list[Any]:
        await handlers._refuse_a_whole_answer_too_large(deps, None, None, None, None)
        return await store.list_users(pool, ids=None, workspace_id=None, co_members_of=None)

    async def new() -> list[Any]:
        return await handlers._whole_list(deps, None, None, None, None)

    assert [r["id"] for r in await old()] == [r["id"] for r in await new()] and len(await new()) == users
    for round_ in range(rounds):
        sides = [("A", old), ("B", new)]
        for name, read in sides if round_ % 2 == 0 else sides[::-1]:
            print(f"whole list of {users}, round {round_} {name}: {ms(await timed(read, calls))}, load {load(2)}",
                  flush=True)


@contextlib.asynccontextmanager
async def scratch(dsn: str, users: int) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a scratch schema (auth's migrations) holding `users` users, dropped afterwards."""
    schema = f"bench_auth_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        conn = await asyncpg.connect(dsn, server_settings=_server_settings(schema))
        await apply_migrations(conn, schema, load_migrations(Path("services/auth/migrations")))
        await conn.execute("DELETE FROM users")  # the first admin a migration may make: `users` users exactly
        # users as invite_user makes them: the email is the username (a third with a temporary password, a tenth
        # deactivated), created one after another
        await conn.execute(
            "INSERT INTO users (id, username, email, password_hash, temporary_password, enabled, created_at)"
            " SELECT gen_random_uuid(), 'user' || g || '.' || $1 || '@example.com', 'user' || g || '.' || $1 ||"
            " '@example.com', 'x', g % 3 = 0, g % 10 <> 0, now() - (g || ' seconds')::interval"
            " FROM generate_series(1, $2) g", uuid.uuid4().hex[:6], users)
        await conn.execute("ANALYZE users")
        await conn.close()
        pool = await asyncpg.create_pool(dsn, server_settings=_server_settings(schema), min_size=2, max_size=2)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def _made(conn: asyncpg.Connection, count: int, workspace: int | None) -> list[uuid.UUID]:
    """`count` users in one statement (one created_at), members of `workspace` when given."""
    tag = uuid.uuid4().hex[:8]
    made = [r["id"] for r in await conn.fetch(
        "INSERT INTO users (id, username, email, password_hash) SELECT gen_random_uuid(), $1 || g || $2, $1 || g || $2,"
        " 'x' FROM generate_series(1, $3) g RETURNING id", f"member-{tag}-{'x' * 180}-", "@example.com", count)]
    if workspace is not None:
        await conn.execute("INSERT INTO workspace_members (workspace_id, user_id, user_type)"
                           " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", workspace, made)
    return made


async def _walk(pool: asyncpg.Pool, owner: uuid.UUID, workspace: int | None) -> tuple[list[float], int]:
    """Every page of 1000 of the workspace's users (or, `workspace` None, of the owner's co-members) as users/query
    reads them: each page's ms, and the users read."""
    pages, after, read = [], None, 0
    while True:
        started = time.perf_counter()
        rows = await store.list_users(pool, ids=None, workspace_id=workspace,
                                      co_members_of=None if workspace else owner, after=after, limit=1001,
                                      member=owner if workspace else None)
        pages.append((time.perf_counter() - started) * 1000)
        read += min(len(rows), 1000)
        if len(rows) <= 1000:
            return pages, read
        after = (rows[999]["created_at"], rows[999]["id"])


async def stale(dsn: str, members: int, rounds: int) -> None:
    schema = f"bench_auth_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        conn = await asyncpg.connect(dsn, server_settings=_server_settings(schema))
        await apply_migrations(conn, schema, load_migrations(Path("services/auth/migrations")))
        someone = (await _made(conn, 1, None))[0]
        for n in range(2):
            big = await conn.fetchval("INSERT INTO workspaces (name, created_by) VALUES ($1, $2) RETURNING id",
                                      f"big-{n}", someone)
            await _made(conn, members, big)
        await _made(conn, 5000, None)
        await conn.execute("ANALYZE users; ANALYZE workspace_members; ANALYZE workspaces")
        for table in ("users", "workspace_members", "workspaces"):
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        owner = (await _made(conn, 1, None))[0]
        workspace = await conn.fetchval("INSERT INTO workspaces (name, created_by) VALUES ('new', $1) RETURNING id",
                                        owner)
        await conn.execute("INSERT INTO workspace_members (workspace_id, user_id, user_type) VALUES ($1, $2, 'OWNER')",
                           workspace, owner)
        await _made(conn, members, workspace)
        pool = await asyncpg.create_pool(dsn, server_settings=_server_settings(schema), min_size=1, max_size=1)
        try:
            for state in ("stale", "analyzed"):
                if state == "analyzed":
                    await conn.execute("ANALYZE users; ANALYZE workspace_members")
                for round_ in range(rounds):
                    for name, asked in (("workspace", workspace), ("co-members", None)):
                        pages, read = await _walk(pool, owner, asked)
                        assert read == members + 1, (read, members)
                        print(f"{state} round {round_} {name}: {len(pages)} pages, {sum(pages):.0f} ms, median"
                              f" {statistics.median(pages):.1f}, max {max(pages):.1f}; each"
                              f" {' '.join(f'{p:.1f}' for p in pages)}; load {load(2)}", flush=True)
        finally:
            await pool.close()
        await conn.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def run(dsn: str, args: argparse.Namespace) -> None:
    print(f"start {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, load {load(2)}", flush=True)
    if args.stale:
        await stale(dsn, args.stale, args.rounds)
        print(f"end {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, load {load(2)}", flush=True)
        return
    async with scratch(dsn, args.users + 1) as pool:
        await page(pool, args.users, args.rounds, args.calls)
    for users in args.whole:
        async with scratch(dsn, users) as pool:
            await whole(pool, users, args.rounds, args.calls)
    print(f"end {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, load {load(2)}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", help="a PostgreSQL to use (default: a scratch pgserver, removed afterwards)")
    parser.add_argument("--users", type=int, default=1000, help="users a page holds")
    parser.add_argument("--whole", type=int, nargs="*", default=[50, 1000], help="an admin's whole lists to read")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--stale", type=int, metavar="N", help="walk a new N-member workspace, stale then analyzed")
    args = parser.parse_args()
    with postgres(args.dsn, "bench_users_pg_") as dsn:
        await run(dsn, args)

if __name__ == "__main__":
    asyncio.run(main())
