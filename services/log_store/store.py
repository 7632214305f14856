"""SQL of the log_store service (asyncpg, `$n` parameters only), in schema `log_store`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from shared import subjects
from shared.messages.base import Event
from shared.messages.logs import LogBatchQuarantined
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's

# the log store's events (shared/outbox.py; migration 007): a quarantined batch's, written with its quarantine row
EVENT_TYPES: dict[str, type[Event]] = {subjects.EVENT_LOGS_BATCH_QUARANTINED: LogBatchQuarantined}
ORDER_FIELD = "quarantine_id"  # one event per quarantined batch: none waits for another

NO_TIME_LOW = -(2**62)
NO_TIME_HIGH = 2**62
SEGMENT_COLUMNS = ("id, pipeline_id, first_pos, last_pos, row_count, min_time, max_time, schema_fp, object_key, bytes, "
                   "sorted")


class Raced(Exception):
    """Someone else changed the same rows meanwhile (a batch id committed, a segment retired): retry."""


@dataclass
class NewSegment:
    workspace_id: int
    pipeline: str
    row_count: int
    min_time: int
    max_time: int
    schema_fp: str
    versions: list[str]
    dropped: list[str]
    object_key: str
    bytes: int


async def committed_batches(pool: asyncpg.Pool, batch_ids: list[str]) -> set[str]:
    rows = await pool.fetch("SELECT batch_id FROM batches WHERE batch_id = ANY($1::text[])", batch_ids)
    return {r["batch_id"] for r in rows}


async def committed_requests(pool: asyncpg.Pool, request_ids: list[str]) -> set[str]:
    rows = await pool.fetch("SELECT request_id FROM requests WHERE request_id = ANY($1::text[])", request_ids)
    return {r["request_id"] for r in rows}


async def commit_segments(pool: asyncpg.Pool, batch_ids: list[str], segments: list[NewSegment],
                          request_ids: list[str] | None = None) -> None:
    """Remember the batches (and the requests to store once) and index the segments in one transaction. Each
    pipeline's positions are taken under its row lock, so segments become visible in the order of their
    positions."""
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetch(
            "INSERT INTO batches (batch_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING batch_id",
            batch_ids)
        if len(inserted) != len(batch_ids):
            raise Raced()
        if request_ids:
            inserted = await conn.fetch(
                "INSERT INTO requests (request_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING "
                "RETURNING request_id", request_ids)
            if len(inserted) != len(request_ids):
                raise Raced()
        for seg in segments:
            row = await conn.fetchrow(
                "INSERT INTO pipelines (workspace_id, name, next_pos) VALUES ($1, $2, $3) "
                "ON CONFLICT (workspace_id, name) DO UPDATE SET next_pos = pipelines.next_pos + EXCLUDED.next_pos "
                "RETURNING id, next_pos - $3 AS first_pos", seg.workspace_id, seg.pipeline, seg.row_count)
            await conn.execute(
                "INSERT INTO segments (pipeline_id, first_pos, last_pos, row_count, min_time, max_time, schema_fp, "
                "versions, dropped, object_key, bytes, sorted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
                "true)",
                row["id"], row["first_pos"], row["first_pos"] + seg.row_count - 1, seg.row_count, seg.min_time,
                seg.max_time, seg.schema_fp, seg.versions, seg.dropped, seg.object_key, seg.bytes)


# Record each batch and index its segment, one statement (one round trip; it is its own transaction): a batch
# recorded before (a redelivery, another process's copy, committed or committing: ON CONFLICT waits for it) is
# skipped with its segment, so a description indexed twice is recorded once. Each pipeline's row is moved once by the
# sum of its new segments' rows (a row may be updated once a statement) and locked until the statement commits, so
# segments become visible in the order of their positions; its segments take positions in the order given. Rows are
# inserted in key order (batch ids, then pipelines), so two such statements wait for each other, never deadlock.
INDEX_DESCRIBED = """
WITH described AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::bigint[], $6::bigint[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[]) WITH ORDINALITY
        AS d (batch_id, workspace_id, pipeline, row_count, min_time, max_time, schema_fp, versions, dropped,
              object_key, bytes, n)
), recorded AS (
    INSERT INTO batches (batch_id) SELECT batch_id FROM described ORDER BY batch_id ON CONFLICT DO NOTHING
    RETURNING batch_id
), fresh AS (
    SELECT d.*, sum(d.row_count) OVER (PARTITION BY d.workspace_id, d.pipeline ORDER BY d.n) AS upto,
           sum(d.row_count) OVER (PARTITION BY d.workspace_id, d.pipeline) AS total
    FROM described d JOIN recorded r USING (batch_id)
), moved AS (
    INSERT INTO pipelines (workspace_id, name, next_pos)
    SELECT workspace_id, pipeline, sum(row_count) FROM fresh GROUP BY workspace_id, pipeline ORDER BY 1, 2
    ON CONFLICT (workspace_id, name) DO UPDATE SET next_pos = pipelines.next_pos + EXCLUDED.next_pos
    RETURNING id, workspace_id, name, next_pos
)
INSERT INTO segments (pipeline_id, first_pos, last_pos, row_count, min_time, max_time, schema_fp, versions, dropped,
                      object_key, bytes, sorted)
SELECT m.id, m.next_pos - f.total + f.upto - f.row_count, m.next_pos - f.total + f.upto - 1, f.row_count, f.min_time,
       f.max_time, f.schema_fp,
       ARRAY(SELECT v FROM jsonb_array_elements_text(f.versions::jsonb) WITH ORDINALITY AS e (v, i) ORDER BY i),
       ARRAY(SELECT v FROM jsonb_array_elements_text(f.dropped::jsonb) WITH ORDINALITY AS e (v, i) ORDER BY i),
       f.object_key, f.bytes, true
FROM fresh f JOIN moved m ON m.workspace_id = f.workspace_id AND m.name = f.pipeline
"""


async def index_described(pool: asyncpg.Pool, described: list[tuple[str, NewSegment]]) -> None:
    """Record the batches of engine segment descriptions (batch id, its segment; ids unique) and index the segments
    of those not recorded before, in one statement (INDEX_DESCRIBED). What commit_segments after committed_batches
    does for such batches, without the look-up and the transaction's own round trips: the insert of a batch's id
    decides whether its segment is indexed, in the same statement, so nothing races between them."""
    if not described:
        return
    segments = [seg for _, seg in described]
    await pool.execute(
        INDEX_DESCRIBED, [batch_id for batch_id, _ in described], [s.workspace_id for s in segments],
        [s.pipeline for s in segments], [s.row_count for s in segments], [s.min_time for s in segments],
        [s.max_time for s in segments], [s.schema_fp for s in segments],
        [json.dumps(s.versions) for s in segments], [json.dumps(s.dropped) for s in segments],
        [s.object_key for s in segments], [s.bytes for s in segments])


async def pipeline(pool: asyncpg.Pool, workspace_id: int, name: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipelines WHERE workspace_id = $1 AND name = $2", workspace_id, name)


async def set_retention(pool: asyncpg.Pool, workspace_id: int, name: str, days: float) -> None:
    await pool.execute(
        "INSERT INTO pipelines (workspace_id, name, retention_days) VALUES ($1, $2, $3) "
        "ON CONFLICT (workspace_id, name) DO UPDATE SET retention_days = EXCLUDED.retention_days",
        workspace_id, name, days)


async def segments_by_time(pool: asyncpg.Pool, pipeline_id: int, desc: bool, bound: tuple[int, int] | None,
                           start: int | None, end: int | None, after: tuple[int, int] | None,
                           limit: int) -> list[asyncpg.Record]:
    """Live segments that may hold rows beyond the (time, position) `bound` in page order, inside [start, end],
    in the order of the smallest key each can yield: (min_time, first_pos) up for Asc, (max_time, last_pos) down
    for Desc (a row's key is never beyond those). `after` is that key of the last segment of the previous call,
    so a long list is walked in chunks."""
    low = start if start is not None else NO_TIME_LOW
    high = end if end is not None else NO_TIME_HIGH
    if desc:
        bound = bound or (NO_TIME_HIGH, NO_TIME_HIGH)
        mark = after or (NO_TIME_HIGH, NO_TIME_HIGH)
        return await pool.fetch(
            f"SELECT {SEGMENT_COLUMNS} FROM segments WHERE pipeline_id = $1 AND superseded_at IS NULL "
            "AND (min_time, first_pos) < ($2, $3) AND min_time <= $4 AND max_time >= $5 "
            "AND (max_time, last_pos) < ($6, $7) ORDER BY max_time DESC, last_pos DESC LIMIT $8",
            pipeline_id, bound[0], bound[1], high, low, mark[0], mark[1], limit)
    bound = bound or (NO_TIME_LOW, NO_TIME_LOW)
    mark = after or (NO_TIME_LOW, NO_TIME_LOW)
    return await pool.fetch(
        f"SELECT {SEGMENT_COLUMNS} FROM segments WHERE pipeline_id = $1 AND superseded_at IS NULL "
        "AND (max_time, last_pos) > ($2, $3) AND max_time >= $4 AND min_time <= $5 "
        "AND (min_time, first_pos) > ($6, $7) ORDER BY min_time, first_pos LIMIT $8",
        pipeline_id, bound[0], bound[1], low, high, mark[0], mark[1], limit)


async def pipelines(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM pipelines ORDER BY id")


async def expire(pool: asyncpg.Pool, pipeline_id: int, before_ms: int) -> int:
    """Retire the live segments whose newest row is older than before_ms; their objects go after the grace."""
    rows = await pool.fetch(
        "UPDATE segments SET superseded_at = now() WHERE pipeline_id = $1 AND superseded_at IS NULL "
        "AND max_time < $2 RETURNING id", pipeline_id, before_ms)
    return len(rows)


async def small_segments(pool: asyncpg.Pool, pipeline_id: int, below_rows: int, min_age: float,
                         below_bytes: int = 2**62) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {SEGMENT_COLUMNS}, level, versions, dropped FROM segments WHERE pipeline_id = $1 "
        "AND superseded_at IS NULL AND row_count < $2 AND bytes < $4 "
        "AND created_at < now() - make_interval(secs => $3) "
        "ORDER BY first_pos", pipeline_id, below_rows, min_age, below_bytes)


async def replace_segments(pool: asyncpg.Pool, old_ids: list[int], seg: NewSegment, pipeline_id: int,
                           first_pos: int, level: int) -> bool:
    """Swap a run of segments for their merge, atomically; False when one of them is gone meanwhile."""
    async with pool.acquire() as conn, conn.transaction():
        retired = await conn.fetch(
            "UPDATE segments SET superseded_at = now() WHERE id = ANY($1::bigint[]) AND superseded_at IS NULL "
            "RETURNING id", old_ids)
        if len(retired) != len(old_ids):
            raise Raced()  # rolls back: the run changed under us
        await conn.execute(
            "INSERT INTO segments (pipeline_id, first_pos, last_pos, row_count, min_time, max_time, schema_fp, "
            "versions, dropped, object_key, bytes, level, sorted) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, true)",
            pipeline_id, first_pos, first_pos + seg.row_count - 1, seg.row_count, seg.min_time, seg.max_time,
            seg.schema_fp, seg.versions, seg.dropped, seg.object_key, seg.bytes, level)
    return True


async def superseded(pool: asyncpg.Pool, grace: float) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, object_key FROM segments WHERE superseded_at IS NOT NULL "
        "AND superseded_at < now() - make_interval(secs => $1)", grace)


async def delete_segment(pool: asyncpg.Pool, segment_id: int) -> None:
    await pool.execute("DELETE FROM segments WHERE id = $1", segment_id)


QUARANTINED_SEGMENT = "Railyard-Quarantined-Segment"  # a quarantined description's segment key (its headers)


async def known_keys(pool: asyncpg.Pool, keys: list[str]) -> set[str]:
    """The keys an index row names: a segment's, or the engine segment of a quarantined description (its rows)."""
    rows = await pool.fetch(
        "SELECT object_key FROM segments WHERE object_key = ANY($1::text[]) UNION SELECT headers ->> $2 FROM"
        " quarantine WHERE headers ->> $2 = ANY($1::text[])", keys, QUARANTINED_SEGMENT)
    return {r["object_key"] for r in rows}


async def prune_batches(pool: asyncpg.Pool, hours: float) -> int:
    rows = await pool.fetch(
        "DELETE FROM batches WHERE committed_at < now() - make_interval(secs => $1) RETURNING 1", hours * 3600)
    await pool.execute("DELETE FROM requests WHERE committed_at < now() - make_interval(secs => $1)", hours * 3600)
    return len(rows)


async def segments_between(pool: asyncpg.Pool, pipeline_id: int, start: int, end: int) -> list[asyncpg.Record]:
    """Live segments with rows whose time may fall in [start, end), in position order."""
    return await pool.fetch(
        f"SELECT {SEGMENT_COLUMNS} FROM segments WHERE pipeline_id = $1 AND superseded_at IS NULL "
        "AND max_time >= $2 AND min_time < $3 ORDER BY first_pos", pipeline_id, start, end)


async def quarantine(pool: asyncpg.Pool, batch_id: str, workspace_id: int | None, pipeline: str | None,
                     subject: str, reason: str, rows: int | None, size: int, object_key: str,
                     headers: str) -> int:
    """Record a batch set aside (its bytes are at object_key) and, in the same transaction, put its
    events.logs.batch_quarantined in the outbox; its id, so it is never retried again."""
    async with pool.acquire() as conn, conn.transaction():
        quarantine_id = await conn.fetchval(
            "INSERT INTO quarantine (batch_id, workspace_id, pipeline, subject, reason, rows, bytes, object_key, "
            "headers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id", batch_id, workspace_id,
            pipeline, subject, reason, rows, size, object_key, headers)
        await conn.execute("INSERT INTO batches (batch_id) VALUES ($1) ON CONFLICT DO NOTHING", batch_id)
        await add_event(conn, subjects.EVENT_LOGS_BATCH_QUARANTINED, LogBatchQuarantined(
            quarantine_id=quarantine_id, batch_id=batch_id, workspace_id=workspace_id, pipeline=pipeline,
            reason=reason, rows=rows))
    return quarantine_id


async def quarantined(pool: asyncpg.Pool, workspace_id: int | None, before_id: int | None, limit: int
                      ) -> tuple[list[asyncpg.Record], int]:
    rows = await pool.fetch(
        "SELECT id, batch_id, workspace_id, pipeline, subject, reason, rows, bytes, quarantined_at FROM quarantine "
        "WHERE ($1::bigint IS NULL OR workspace_id = $1) AND ($2::bigint IS NULL OR id < $2) "
        "ORDER BY id DESC LIMIT $3", workspace_id, before_id, limit)
    total = await pool.fetchval("SELECT count(*) FROM quarantine WHERE ($1::bigint IS NULL OR workspace_id = $1)",
                                workspace_id)
    return rows, int(total)
