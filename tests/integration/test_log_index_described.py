"""An engine's segment descriptions are recorded and indexed in one statement (store.index_described: one round trip
to PostgreSQL instead of a look-up of the batch ids and a transaction of three inserts). It must record what the
look-up and the transaction record for the same batches (committed_batches, then commit_segments of those not
recorded: the path of every other batch), run here side by side on two schemas of the stack's PostgreSQL: positions
in the order given, across pipelines and calls; a batch recorded before skipped with its segment; versions and dropped
names as given. A refused segment leaves nothing of its call; calls racing on the same batch ids record each once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from services.log_store import store
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIGRATIONS = Path("services/log_store/migrations")
NAMES = ["v1", "", "a,b", "{x}", 'q"uote', "back\\slash", "ünï", "NULL", " sp "]


def _segment(n: int, workspace_id: int, pipeline: str) -> store.NewSegment:
    low = -(2**62) + n * 7_919 if n % 3 == 0 else 1_764_000_000_000 + n
    return store.NewSegment(workspace_id=workspace_id, pipeline=pipeline, row_count=1 + n % 5 * 37, min_time=low,
                            max_time=low + n, schema_fp=f"fp{n % 2}", versions=NAMES[n % 4:n % 4 + n % 3],
                            dropped=NAMES[n % 5:n % 5 + n % 4], object_key=f"ws-{workspace_id}/{pipeline}/k{n}",
                            bytes=2**40 + n)


async def _index(pool: asyncpg.Pool) -> tuple[list[tuple], list[tuple], list[str]]:
    pipelines = await pool.fetch("SELECT workspace_id, name, next_pos FROM pipelines ORDER BY 1, 2")
    segments = await pool.fetch(
        "SELECT p.workspace_id, p.name, s.first_pos, s.last_pos, s.row_count, s.min_time, s.max_time, s.schema_fp, "
        "s.versions, s.dropped, s.object_key, s.bytes, s.level, s.sorted, s.superseded_at IS NULL AS live "
        "FROM segments s JOIN pipelines p ON p.id = s.pipeline_id ORDER BY 1, 2, 3")
    batches = await pool.fetch("SELECT batch_id FROM batches ORDER BY 1")
    return [tuple(r) for r in pipelines], [tuple(r) for r in segments], [r["batch_id"] for r in batches]


async def test_descriptions_indexed_in_one_statement_as_the_transaction_indexes_them(stack):
    calls: list[list[tuple[str, store.NewSegment]]] = []
    n = 0
    for call in range(12):
        batch = []
        for i in range(call % 5):
            n += 1
            # every fourth a batch id of an earlier call (a redelivery: its segment must not be indexed again)
            batch_id = f"b{n - 5}" if n % 4 == 0 and n > 5 else f"b{n}"
            if batch_id not in {b for b, _ in batch}:
                batch.append((batch_id, _segment(n, 1 + n % 2, "pq"[i % 2])))
        calls.append(batch)
    async with service_schema(stack, "logindexa", MIGRATIONS) as before, \
            service_schema(stack, "logindexb", MIGRATIONS) as now:
        for batch in calls:
            recorded = await store.committed_batches(before, [b for b, _ in batch]) if batch else set()
            fresh = [(b, s) for b, s in batch if b not in recorded]
            if fresh:
                await store.commit_segments(before, [b for b, _ in fresh], [s for _, s in fresh])
            await store.index_described(now, batch)
        expected = await _index(before)
        assert len(expected[1]) > 15 and {p[0] for p in expected[0]} == {1, 2}  # the calls above do what they say
        assert len(expected[1]) < sum(len(c) for c in calls)  # some were recorded before
        assert await _index(now) == expected

        # a segment PostgreSQL refuses (no rows) fails the call: nothing of it is recorded
        with pytest.raises(asyncpg.CheckViolationError):
            await store.index_described(now, [("fresh-1", _segment(1000, 1, "p")),
                                              ("fresh-2", replace(_segment(1001, 1, "p"), row_count=0))])
        assert await _index(now) == expected

        # calls racing on the same batch ids: each recorded once, positions contiguous
        racing = [[(f"r{(c * 3 + j) % 20}", _segment(2000 + c * 3 + j, 3, "pq"[j % 2])) for j in range(3)]
                  for c in range(16)]
        racing = [list(dict(batch).items()) for batch in racing]
        await asyncio.gather(*(store.index_described(now, batch) for batch in racing))
        pipelines, segments, batches = await _index(now)
        assert len([b for b in batches if b.startswith("r")]) == 20
        assert len([s for s in segments if s[0] == 3]) == 20
        for workspace_id, name, next_pos in pipelines:
            position = 0
            for seg in (s for s in segments if s[:2] == (workspace_id, name)):
                assert (seg[2], seg[3]) == (position, position + seg[4] - 1), seg
                position += seg[4]
            assert position == next_pos
