"""PostgreSQL access: one asyncpg pool per process, each service in its own schema, numbered migrations.

Migrations are files `NNN_name.sql` in a service's `migrations/` folder. They are applied in order,
each once, inside one transaction that holds an advisory lock on the schema, so replicas starting
at the same moment serialize and all but the first find nothing to do. A migration whose file
changed after it was applied stops the start-up: edit by adding a new file, never an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from shared.settings import PostgresSettings

log = logging.getLogger("railyard.db")
_T = TypeVar("_T")

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk disagree with what the database has applied."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def load_migrations(directory: Path) -> list[Migration]:
    """Read `NNN_name.sql` files in version order; duplicate numbers are an error."""
    found: dict[int, Migration] = {}
    if not directory.is_dir():
        return []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_RE.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version} in {directory}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def apply_migrations(conn: asyncpg.Connection, schema: str, migrations: list[Migration],
                           *, lock_timeout: float | None = None) -> list[int]:
    """Apply what is missing; return the versions applied now (empty when up to date). With `lock_timeout`
    (seconds), waiting longer than that for any one lock (the advisory lock of another starter, a table a migration
    alters) raises asyncpg.LockNotAvailableError, everything rolled back."""
    check_schema_name(schema)
    applied_now: list[int] = []
    async with conn.transaction():
        if lock_timeout is not None:
            await conn.execute(f"SET LOCAL lock_timeout = '{max(1, round(lock_timeout * 1000))}ms'")
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"railyard-migrations:{schema}")
        # a service's own role may not create schemas (shared.db_roles made its schema for it); CREATE SCHEMA
        # IF NOT EXISTS checks that privilege even when the schema exists, so look first
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f'SELECT version, checksum FROM "{schema}".schema_migrations')
        done = {r["version"]: r["checksum"] for r in rows}
        await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {schema}/{migration.version:03d}_{migration.name} changed after it was applied"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    return applied_now


def _server_settings(schema: str) -> dict[str, str]:
    return {"search_path": f'"{schema}",public', "application_name": f"railyard-{schema}"}


async def create_pool(settings: PostgresSettings, schema: str) -> asyncpg.Pool:
    """A pool whose connections use the service's schema first. With `pool_min` 0 (the default) it opens
    connections as they are needed and closes each after `pool_idle_seconds` unused: an idle service holds no
    PostgreSQL backend (each ~15-20 MiB of RSS), and the first query after a pause pays a connection (~4-12 ms
    measured on the development machine)."""
    check_schema_name(schema)
    return await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        max_inactive_connection_lifetime=settings.pool_idle_seconds,
        server_settings=_server_settings(schema),
        command_timeout=30,
        setup=_note_held,  # the connections work begun by `begin` takes, for `leave` to cut
    )


MIGRATION_LOCK_TIMEOUT = 10.0
"""Seconds `migrate` waits for any one lock before it rolls back and tries again (`MIGRATION_RETRY_PAUSE` later)."""

MIGRATION_RETRY_PAUSE = 1.0
"""Seconds between `migrate`'s tries: a table lock queued behind a long transaction lets the table's readers on."""

MIGRATION_GIVE_UP = 540.0
"""Seconds `migrate` keeps trying for its locks before it raises: under the Kubernetes startup probe's 10 minutes."""

MIGRATION_CLIENT_CHECK_MS = 2000
"""How often (ms) the migrating backend checks that its client is still there during a long statement, and the
TCP keepalive's idle seconds x probes bound a client whose host vanished: a dead starter's migration is rolled
back and its advisory lock let go, not held until the statement ends or the kernel's 2-hour keepalive."""


async def migrate(settings: PostgresSettings, schema: str, migrations: list[Migration], *,
                  lock_timeout: float = MIGRATION_LOCK_TIMEOUT, give_up_after: float = MIGRATION_GIVE_UP) -> list[int]:
    """apply_migrations on a connection of its own, closed afterwards (a service's start leaves no backend
    open for it).

    A migration's statements have no time limit (no command_timeout, statement_timeout 0 whatever the role or
    database says): a migration that rewrites a large table (auth's 016: 75 s for 1,000,000 memberships) cut at a
    limit would be rolled back at every start, and the service never start. What bounds a start instead: each lock
    is waited for at most `lock_timeout` seconds, then everything is rolled back and tried again, for
    `give_up_after` seconds in all (MigrationError); and the backend ends the transaction itself when its client
    is gone (MIGRATION_CLIENT_CHECK_MS, idle_in_transaction_session_timeout), so a starter that died or was
    killed by a startup probe holds no lock for the next one."""
    check_schema_name(schema)
    keepalive = max(1, MIGRATION_CLIENT_CHECK_MS // 1000)
    session = {**_server_settings(schema), "statement_timeout": "0", "idle_in_transaction_session_timeout": "60s",
               "client_connection_check_interval": str(MIGRATION_CLIENT_CHECK_MS),
               "tcp_keepalives_idle": str(keepalive * 5), "tcp_keepalives_interval": str(keepalive),
               "tcp_keepalives_count": "3"}
    conn = await asyncpg.connect(settings.dsn, server_settings=session, command_timeout=None)
    try:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + give_up_after
        tries = 0
        while True:
            tries += 1
            try:
                return await apply_migrations(conn, schema, migrations, lock_timeout=lock_timeout)
            except asyncpg.LockNotAvailableError as error:
                if loop.time() + MIGRATION_RETRY_PAUSE >= give_up_at:
                    raise MigrationError(
                        f"migrations of {schema}: no lock after {tries} tries of {lock_timeout:g} s (another replica"
                        " applying them, or a transaction on a table a migration alters): gave up; the next start"
                        " tries again") from error
                log.warning("migrations of %s: waited %g s for a lock (another replica applying them, or a transaction"
                            " on a table a migration alters): rolled back, trying again", schema, lock_timeout)
                await asyncio.sleep(MIGRATION_RETRY_PAUSE)
    finally:
        await conn.close()


def close_idle(pool: asyncpg.Pool) -> int:
    """Close the pool's connections above `pool_min` that nobody holds now, as asyncpg does once they have been
    idle for `pool_idle_seconds` (the same call), without waiting for it: after a service's start, whose work
    (migrations, the start hook's queries) is done. Returns how many were closed."""
    before = pool.get_size()
    try:
        for holder in list(pool._holders):  # asyncpg keeps no public list of them
            if pool.get_size() <= pool.get_min_size():
                break
            if holder.is_connected() and holder.is_idle():
                holder._maybe_cancel_inactive_callback()
                holder._deactivate_inactive_connection()
    except Exception:  # noqa: BLE001 - private internals of another asyncpg: its own idle close still runs after
        pass            # pool_idle_seconds, and a service's start must not stop over this
    return before - pool.get_size()


def _connections(pool: asyncpg.Pool) -> list[object]:
    holders = getattr(pool, "_holders", ())  # asyncpg keeps no public list (and a test's stand-in pool has none)
    return [holder._con for holder in holders if getattr(holder, "_con", None) is not None]


@contextlib.asynccontextmanager
async def background_pass(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A background loop's pass (an outbox's idle round, a rare sweep) on `pool`: the connections the pass opened
    are closed when it ends, if idle, instead of waiting `pool_idle_seconds` (those it found open are kept, and so
    are those a request holds then). A loop that looks every minute and found nothing otherwise held a PostgreSQL
    backend half of the time, and a stack's loops started together held one each at the same moments
    (docs/performance.md, item 61); a pass pays a connection instead (~4-12 ms, off any request's path)."""
    found = _connections(pool)  # kept referenced: no connection opened meanwhile can take one's id()
    before = set(map(id, found))
    try:
        yield pool
    finally:
        try:
            for holder in list(getattr(pool, "_holders", ())):
                if pool.get_size() <= pool.get_min_size():
                    break
                if holder._con is not None and id(holder._con) not in before and holder.is_idle():
                    holder._maybe_cancel_inactive_callback()
                    holder._deactivate_inactive_connection()
        except Exception:  # noqa: BLE001 - private internals (as close_idle): asyncpg's own idle close still runs
            pass


async def ping(pool: asyncpg.Pool, settings: PostgresSettings | None = None) -> None:
    """PostgreSQL answers: on one of the pool's idle connections, or, when the pool has none and `settings` are
    given, on a connection opened for the check and closed after it (a health check does not keep a backend)."""
    if settings is not None and pool.get_idle_size() == 0:
        conn = await asyncpg.connect(settings.dsn, timeout=2, command_timeout=2)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return
    async with pool.acquire(timeout=2) as conn:
        await conn.fetchval("SELECT 1")


def lock_text(space: str, *key: object) -> str:
    """The text an advisory lock of `space` and `key` is hashed from: "<space>:<key parts joined by ':'>", the same
    text the SQL concatenation `'<space>:' || $1::bigint || ':' || $2::text` gives for ints and strings."""
    return f"{space}:{':'.join(map(str, key))}"


async def xact_lock(conn: asyncpg.Connection, space: str, *key: object) -> None:
    """Hold the advisory lock of `space` and `key` until the transaction ends (pg_advisory_xact_lock on the 64-bit
    hash of `lock_text(space, *key)`): a key space of its own per kind of thing, as every service shares the
    database (a bare pg_advisory_xact_lock(id) made pipeline 7 and workspace 7 wait on each other)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", lock_text(space, *key))


LEFT: set[asyncio.Task] = set()
"""Database work `within` gave up on (or `leave` was given): cancelled, ending in the background."""

CUT_AFTER = 1.0
"""Seconds work left (`leave`) has to end after its cancel before the pool connections it holds are terminated."""

POOL_CLOSE_SECONDS = 2.0
"""Seconds `close_pool` waits for a pool's connections to be let go and closed before it terminates them."""

_Held = list[tuple[Any, "asyncio.Task[Any] | None"]]  # (a pool connection's proxy, the task that took it)
_HOLDING: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("railyard_db_holding", default=None)
_HELD_BY: weakref.WeakKeyDictionary[asyncio.Future, _Held] = weakref.WeakKeyDictionary()


async def _note_held(conn: asyncpg.Connection) -> None:
    """The pools' `setup` (create_pool), called by each acquire in the acquiring task's context: a connection taken
    by work begun with `begin` (or by a task that work started: it inherits the context) is noted on that work, with
    the task that took it (`_cut` cuts only what was cancelled with the work). Those let go are dropped then: a task
    the work started that runs on (a loop) would otherwise add every connection it ever took."""
    held = _HOLDING.get()
    if held is not None:
        held[:] = [entry for entry in held if getattr(entry[0], "_con", None) is not None]
        held.append((conn, asyncio.current_task()))


def begin(work: Coroutine[Any, Any, _T] | asyncio.Future[_T]) -> asyncio.Future[_T]:
    """`work` as a task of its own whose connections of create_pool's pools are noted, for `leave` to cut if it
    outlives its cancel. Those of tasks it starts are noted too, and cut only if the work's cancel reached them (a
    task it awaits, or through gather, wait_for or a TaskGroup; not one it left to run on, shielded, or waits for with
    asyncio.wait, which cancels nothing). `work` is a coroutine, or a task `begin` made (itself returned): any other
    future is a TypeError. Before, one was only wrapped, nothing of it noted: its connections were never cut and work
    given up on held them as asyncpg does (the command timeout, 30 s), as Scheduler.stop's left loop did; a future
    runs in a context of its own, which `begin` cannot note, so it is refused rather than bounded in name only."""
    if not asyncio.iscoroutine(work):
        if isinstance(work, asyncio.Future) and work in _HELD_BY:
            return work
        raise TypeError(f"shared.db.begin takes a coroutine or a task begun by it, not {type(work).__name__}: the"
                        " connections of other work cannot be noted, nor cut once it is given up on")
    held: _Held = []
    context = contextvars.copy_context()
    context.run(_HOLDING.set, held)
    task = asyncio.get_running_loop().create_task(work, context=context)
    _HELD_BY[task] = held
    return task


async def within(seconds: float, work: Coroutine[Any, Any, _T] | asyncio.Future[_T],
                 gave_up: Callable[[], BaseException]) -> _T:
    """What `work` answers within `seconds`; else `gave_up()` is raised and the work is cancelled and left to end in
    the background, not waited for (also when the caller is cancelled). Neither asyncio.wait_for (on Python 3.11 it
    loses a cancel that comes as the work ends, bpo-42130) nor asyncio.timeout, which waits for its cancelled block
    to end: a query cancelled on a connection whose server stopped answering (stopped, a network partition) ends
    only once the server answers asyncpg's cancel request and the connection's reset (the transaction's ROLLBACK,
    the pool's release: no timeout of their own), so a caller bounded that way waited as long as the server was
    away. The work left holds its connection (and whatever its transaction locked on the server) until it ends, at
    most CUT_AFTER (`leave`). The deployer's request-path steps and the task scheduler's log writes, end records,
    beats and stop steps use it. `work` is what `begin` takes (a coroutine, or a task it made)."""
    task = begin(work)
    try:
        done, _ = await asyncio.wait((task,), timeout=max(seconds, 0.0))
    finally:
        if not task.done():
            leave(task)
    if not done:
        raise gave_up()
    return task.result()


def leave(task: asyncio.Future) -> None:
    """`task` cancelled and kept (LEFT) until it ends; an error it ends with is logged, not left unretrieved. Begun by
    `begin`, the pool connections it still holds CUT_AFTER seconds after the cancel are terminated (`_cut`)."""
    task.cancel()
    LEFT.add(task)
    task.add_done_callback(_left_ended)
    held = _HELD_BY.get(task)
    if held is not None:
        asyncio.get_running_loop().call_later(CUT_AFTER, _cut, task, held)


def _cut(task: asyncio.Future, held: _Held) -> None:
    """Terminate the connections work left still holds CUT_AFTER after its cancel (its server did not answer the
    cancel request). asyncpg bounds that wait by the pool's command timeout (30 s), the connection held meanwhile:
    work given up on while the server stopped answering (stopped, the connections' network path gone) held the
    pool's few connections (postgres.pool_max) for that long, and every query of the process waited for one. A server
    that answers acknowledges a cancel in milliseconds, which stops the query there (a terminated client's query runs
    on to its end on the server): that is tried first. The server rolls back a transaction whose client is gone; a
    COMMIT it was sent stands or not as it had it, as when the work was left."""
    if task.done():
        return
    cut = 0
    for conn, taker in held:
        if taker is not task and (taker is None or not taker.cancelling()):
            # a task the work started and does not wait for (a task of its own, which the work's cancel did not
            # cancel): not given up on, its query not cut. Before, any task started in the work's context had its
            # connection cut with the work's, one the server answered included
            continue
        con = getattr(conn, "_con", None)  # None once released: asyncpg detaches a pool connection's proxy then
        if con is not None and not getattr(con, "_aborted", False):
            # not is_closed(): that is True at once for a connection asyncpg is closing, and a release closes one
            # (past the pool's max_queries, or expired: Pool.expire_connections) waiting for the server to drop it,
            # its holder held meanwhile, up to the command timeout (30 s) on a server that stopped answering. Before,
            # such a connection was skipped. A terminate completes the close's waits (asyncpg's abort)
            con.terminate()  # its holder returns to the pool at once
            cut += 1
    if cut:
        log.info("database work given up on still held %d connection(s) %.3g s after its cancel: terminated", cut,
                 CUT_AFTER)


def _left_ended(task: asyncio.Future) -> None:
    LEFT.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.info("database work given up on ended with %r", task.exception())


async def close_pool(pool: asyncpg.Pool, seconds: float = POOL_CLOSE_SECONDS) -> None:
    """pool.close() (every connection let go, then closed), within `seconds`; past them the pool is terminated and
    what it cut is logged. A server that answers lets a pool close in milliseconds once the work holding a connection
    lets it go (work still under way at the bound is cut as well, as the kill would); one that stopped answering held
    the close of each connection for the command timeout (30 s: asyncpg waits for the server to drop a connection it
    asked to end) and of each connection work still held, so a service's stop waited until the embedded stack killed
    it.
    Nothing acknowledged is cut: a service closes its pool after its commands are answered and its consumers stopped
    (shared/service.py); what still holds a connection then is work given up on (its caller told it was not done) or
    a background step whose transaction the server rolls back, as it would on the kill."""
    closing = asyncio.ensure_future(pool.close())
    done, _ = await asyncio.wait((closing,), timeout=seconds)
    if done:
        return closing.result()
    holders = list(getattr(pool, "_holders", ()))  # asyncpg keeps no public list of them
    held = sum(1 for holder in holders if getattr(holder, "_in_use", None) is not None)
    # not is_closed(): asyncpg marks a connection it is closing closed at once, and the close of an idle one (waiting
    # for the server to drop it) is what a frozen server holds; a holder lets its connection go once it is closed
    open_ = sum(1 for holder in holders if holder._con is not None)
    closing.cancel()  # asyncpg's close terminates the pool when cancelled (a synchronous abort of each connection)
    await asyncio.wait((closing,), timeout=seconds)
    # what held the close: work (under way, or waiting for a server that stopped answering: a healthy server's work
    # past the bound is cut too) or, none held, the server not answering the close of idle ones. Before, it said the
    # server did not answer whatever held it
    why = ("work still held connections: under way, or waiting for a server that stopped answering" if held else
           "the server did not answer")
    log.warning("closing the database pool: its connections were not let go within %.3g s (%s): %d open"
                " connection(s) terminated, %d of them held by work (%d given-up database work(s) still ending); the"
                " server rolls back a transaction open on them (a statement under way outside one may still run to"
                " its end)", seconds, why, open_, held, len(LEFT))
