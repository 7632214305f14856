"""SQL of the assay_runner service (asyncpg, `$n` parameters only), in schema `assay_runner`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import lock_text, xact_lock
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's (outbox.py)

ASSAY_LOCK = "assay_runner.assay"
"""The advisory lock space of "scoring this assay's due windows" (one assay runner at a time per assay)."""


async def create(pool: asyncpg.Pool, workspace_id: int, pipeline_id: int, pipeline_name: str, name: str,
                 active: bool, status: str, config: dict[str, Any], warning: float | None, alert: float,
                 width: float, interval: float, run_until: datetime | None, next_run: datetime,
                 baseline_summary: dict[str, Any], created_by: uuid.UUID | None) -> int:
    return await pool.fetchval(
        "INSERT INTO assays (workspace_id, pipeline_id, pipeline_name, name, active, status, config, "
        "warning_threshold, alert_threshold, width_seconds, interval_seconds, run_until, next_run, baseline_summary, "
        "created_by) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14::jsonb, $15) "
        "RETURNING id", workspace_id, pipeline_id, pipeline_name, name, active, status, json.dumps(config), warning,
        alert, width, interval, run_until, next_run, json.dumps(baseline_summary), created_by)


NAME_LOCK = "assay_runner.assay_name"
"""The advisory lock space of "creating an assay of this name in this pipeline" (two creates of one name wait)."""


async def named(db: asyncpg.Pool | asyncpg.Connection, pipeline_id: int, name: str) -> int | None:
    """The id of the pipeline's assay named `name` (names are unique per pipeline), or None."""
    return await db.fetchval("SELECT id FROM assays WHERE pipeline_id = $1 AND name = $2 ORDER BY id LIMIT 1",
                             pipeline_id, name)


async def lock_name(conn: asyncpg.Connection, pipeline_id: int, name: str) -> None:
    """Hold the name's lock in the pipeline until the transaction ends: a create checks the name under it, so two
    creates of one name at once store one assay (a unique index would refuse the rows of a database created before
    names were unique)."""
    await xact_lock(conn, NAME_LOCK, pipeline_id, name)


async def get(pool: asyncpg.Pool, assay_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM assays WHERE id = $1", assay_id)


async def by_pipeline(pool: asyncpg.Pool, pipeline_id: int, before: int | None = None,
                      limit: int | None = None) -> list[asyncpg.Record]:
    """A pipeline's assays, newest first: those with an id below `before` (a page's cursor), `limit` at most (None:
    all). A cursor past the largest bigint reads as that (no id reaches it)."""
    return await pool.fetch("SELECT * FROM assays WHERE pipeline_id = $1 AND ($2::bigint IS NULL OR id < $2)"
                            " ORDER BY id DESC LIMIT $3", pipeline_id, _bigint(before), limit)


def _bigint(value: int | None) -> int | None:
    return None if value is None else min(value, 2**63 - 1)


async def set_active(pool: asyncpg.Pool, assay_id: int, active: bool,
                     resume: Callable[[asyncpg.Record], datetime] | None = None) -> tuple[datetime, datetime] | None:
    """Turn the assay on or off. With `resume`, an assay turned on from off starts its schedule at `resume(row)` (its
    row read under a row lock, in the transaction that turns it on: `next_run`, `interval_seconds`, `run_until`)
    instead of where it paused: answers (next_run paused at, next_run now) then, else None."""
    if not active or resume is None:
        await pool.execute("UPDATE assays SET active = $2, updated_at = now() WHERE id = $1", assay_id, active)
        return None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT active, next_run, interval_seconds, run_until FROM assays WHERE id = $1 "
                                  "FOR UPDATE", assay_id)
        if row is None or row["active"]:  # gone meanwhile, or already on: nothing paused
            await conn.execute("UPDATE assays SET updated_at = now() WHERE id = $1", assay_id)
            return None
        moved = resume(row)
        await conn.execute("UPDATE assays SET active = true, next_run = $2, updated_at = now() WHERE id = $1",
                           assay_id, moved)
    return row["next_run"], moved


async def next_due(pool: asyncpg.Pool) -> datetime | None:
    """The earliest window end of an active assay (None: no assay is active)."""
    return await pool.fetchval("SELECT min(next_run) FROM assays WHERE active")


async def due(pool: asyncpg.Pool, now: datetime) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM assays WHERE active AND next_run <= $1 ORDER BY next_run", now)


@asynccontextmanager
async def claim(pool: asyncpg.Pool, assay_id: int,
                due_before: datetime) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Record] | None]:
    """The connection holding the assay's advisory lock (held until the block ends) and the assay's row, read again
    under it, when it is still active and due; None when another assay runner holds the lock (it is scoring the
    assay now) or has moved it on since `due` was read. The lock is a session lock on a connection of its own, so a
    pass holds no row lock and no transaction while it reads the log store (set_active is not kept waiting); a
    runner that dies releases it with its connection. The pass uses that connection for its reads and its commit
    (`record_results`): taking another from the pool while holding it, a pass waited for ever with
    `postgres.pool_max` 1 (and with 2, for as long as a command or the outbox held the other)."""
    async with pool.acquire() as lock_conn:
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1::text, 0))",
                                        lock_text(ASSAY_LOCK, assay_id)):
            yield None
            return
        try:
            row = await lock_conn.fetchrow("SELECT * FROM assays WHERE id = $1 AND active AND next_run <= $2",
                                           assay_id, due_before)
            yield None if row is None else (lock_conn, row)
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock(hashtextextended($1::text, 0))",
                                    lock_text(ASSAY_LOCK, assay_id))


async def record_results(db: asyncpg.Pool | asyncpg.Connection, assay_id: int, results: list[dict[str, Any]],
                         last_run: datetime, next_run: datetime, still_active: bool, status: str,
                         read_next_run: datetime) -> bool:
    """Store a pass's results, their events (a result's `_event`: (subject, event), in the outbox) and move the
    schedule on, in one transaction. Only when the assay's next_run is still `read_next_run`, the one the pass
    started from: otherwise another assay runner has stored these windows already (it held the assay's lock
    while this one had lost it with its connection), and nothing is written (False). A result whose window is
    stored already is not stored again and its event is not added. `active` is only ever turned off here (past
    run_until): an assay set inactive while the pass scored its windows stays inactive (the windows it had due
    are stored). `db`: the pass's connection (`claim`'s), or a pool to take one from."""
    async with _connection(db) as conn, conn.transaction():
        moved = await conn.fetchval(
            "UPDATE assays SET last_run = $2, next_run = $3, active = active AND $4, status = $5, "
            "updated_at = now() WHERE id = $1 AND next_run = $6 RETURNING id", assay_id, last_run, next_run,
            still_active, status, read_next_run)
        if moved is None:
            return False
        for result in results:
            inserted = await conn.fetchval(
                "INSERT INTO results (assay_id, window_start, window_end, score, status, result) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (assay_id, window_start) DO NOTHING RETURNING id",
                assay_id, result["_start"], result["_end"], result["score"], result["status"],
                json.dumps({k: v for k, v in result.items() if not k.startswith("_")}))
            if inserted is not None and result.get("_event") is not None:
                await add_event(conn, *result["_event"])
    return True


@asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def results(pool: asyncpg.Pool, assay_id: int, start: datetime | None, end: datetime | None,
                  limit: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, result, analyzed_at FROM results WHERE assay_id = $1 "
        "AND ($2::timestamptz IS NULL OR window_start >= $2) AND ($3::timestamptz IS NULL OR window_start < $3) "
        "ORDER BY window_start DESC LIMIT $4", assay_id, start, end, limit)
