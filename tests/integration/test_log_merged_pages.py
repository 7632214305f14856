"""Paging through a merged (large) segment: each of its row groups is fetched from object storage once, not once
per page (services/log_store/segments.py, SegmentReader's row-group cache; docs/logs.md, "Retention and
compaction").

The segment is made by the stack's log store (batches published the way an engine publishes them, merged by a
maintenance pass) and read through `pipelines/get_logs`; the object-storage GETs a page costs are counted by running
the log store's page code (`pages.scan`, what the route calls) over the stack's S3 and tables in this process."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats as nats_client
import numpy as np
import pyarrow as pa

from services.log_store import pages
from services.log_store.segments import SMALL_OBJECT, SegmentReader
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.db import create_pool
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from shared.messages.logs import GetLogs
from shared.objectstore import MinioObjectStore
from tests.integration.conftest import query
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import _create, _maintain, all_rows

BATCHES, ROWS, WIDTH = 10, 2_500, 48  # ~4.9 MiB of random float32: a merged segment above SMALL_OBJECT
PAGE = 500  # rows a page: a row group (8,192) serves ~16 pages


class CountingStore:
    """The stack's object store, counting the ranged GETs a SegmentReader makes."""

    def __init__(self, inner: MinioObjectStore) -> None:
        self.inner, self.gets = inner, 0

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        self.gets += 1
        return self.inner.read_range_sync(bucket, key, offset, length)


async def _publish(nc, workspace_id: int, pipeline: str, first_ms: int, index: int) -> None:
    rng = np.random.default_rng(index)
    times = np.arange(first_ms + index * ROWS, first_ms + (index + 1) * ROWS, dtype=np.int64)
    table = pa.table({"time": pa.array(times),
                      "in.tensor": tensor_array(rng.random((ROWS, WIDTH), dtype=np.float32)),
                      "out.dense_1": tensor_array(rng.random((ROWS, 1), dtype=np.float32)),
                      "metadata.last_model": pa.array(["{}"] * ROWS),
                      "metadata.pipeline_version": pa.array(["v"] * ROWS),
                      "metadata.elapsed": pa.array([[1, 2]] * ROWS, pa.list_(pa.int64())),
                      "metadata.dropped": pa.array([[]] * ROWS, pa.list_(pa.string()))})
    deployment = fake_deployment(workspace_id, pipeline)
    await announce(nc, workspace_id, deployment)
    batch_id = str(uuid.uuid4())
    await nc.jetstream().publish(f"logs.inference.{deployment}", to_ipc_stream(table), headers={
        MSG_ID: batch_id, BATCH_ID: batch_id, LOG_HEADER: log_header(workspace_id, pipeline, deployment, "v")})


def _live_segments(stack, workspace_id: int, pipeline: str) -> list:
    return query(stack, "SELECT s.object_key, s.bytes, s.row_count, p.id AS pipeline FROM log_store.segments s "
                 "JOIN log_store.pipelines p ON p.id = s.pipeline_id WHERE p.workspace_id = $1 AND p.name = $2 "
                 "AND s.superseded_at IS NULL", workspace_id, pipeline)


async def test_paging_a_merged_segment_fetches_each_row_group_once(stack, alice):
    name = f"merged-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(_create, stack, alice, name)
    first_ms = int(time.time() * 1000) - BATCHES * ROWS
    total = BATCHES * ROWS
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        for index in range(BATCHES):
            await _publish(nc, alice.workspace_id, name, first_ms, index)
        deadline = time.monotonic() + 60
        while sum(s["row_count"] for s in await asyncio.to_thread(_live_segments, stack, alice.workspace_id,
                                                                  name)) < total:
            assert time.monotonic() < deadline, "the batches were not stored within 60 s"
            await asyncio.sleep(0.2)
        await _maintain(nc, compact=True, retention=False, purge=False)
    finally:
        await nc.close()
    segments = await asyncio.to_thread(_live_segments, stack, alice.workspace_id, name)
    assert [s["row_count"] for s in segments] == [total], "compaction merged the batches' segments into one"
    merged = segments[0]
    assert merged["bytes"] > SMALL_OBJECT  # read by ranged GETs of its row groups, not fetched whole

    # the route: small pages through the merged segment give every row once, in order
    rows = await asyncio.to_thread(all_rows, stack, alice, name, page_size=PAGE, order="Asc")
    assert [r["time"] for r in rows] == list(range(first_ms, first_ms + total))

    # what those pages cost in GETs: the footer, then each row group once (the old reader: one or two per page)
    store = CountingStore(MinioObjectStore(stack.settings().s3))
    reader = SegmentReader(store)  # type: ignore[arg-type]
    groups = -(-total // 8192)
    pool = await create_pool(stack.settings().postgres, "log_store")
    try:
        cursor, seen, count = None, 0, 0
        while True:
            cmd = GetLogs(pipeline_id=name, workspace_id=alice.workspace_id, order="Asc", page_size=PAGE)
            table, page = await pages.scan(pool, reader, merged["pipeline"], cmd, cursor, 4 * 1024 * 1024)
            seen += table.num_rows
            count += 1
            if page.status == "All" or page.cursor is None:
                break
            cursor = pages.decode_cursor(page.cursor, "Asc")
    finally:
        await pool.close()
    assert seen == total
    assert count >= total // PAGE
    assert store.gets <= groups + 2, f"{store.gets} GETs for {count} pages of {groups} row groups"
