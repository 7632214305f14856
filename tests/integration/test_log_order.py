"""Inference logs come back in time order across schema changes (issue 14): rows of every schema merged by time,
Asc and Desc, at any page size, before and after compaction; `SchemaChange` ends a page only where the next row
in time order has another schema."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import nats as nats_client
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from tests.integration.conftest import post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import _create, _maintain, get_logs, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, infer
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration
PAGE_SIZES = (1, 2, 3, 4, 7, 100)


def _pages(stack, account, pipeline: str, order: str, page_size: int, **extra) -> tuple[list[dict], list[tuple]]:
    """Every row, paged, and each page as (status, rows)."""
    rows, pages, cursor = [], [], None
    for _ in range(5000):
        body = {"pipeline_id": pipeline, "workspace_id": account.workspace_id, "order": order,
                "page_size": page_size, **extra, **({"cursor": cursor} if cursor else {})}
        response = get_logs(stack, account, body)
        assert response.status_code == 200, response.text
        page = response.json()
        status = response.headers["x-iteration-status"]
        pages.append((status, page))
        rows += page
        if status == "All":
            return rows, pages
        cursor = response.headers["x-iteration-cursor"]
    raise AssertionError("paging did not end")


def _check_history(stack, account, pipeline: str, expected: list[tuple[int, float, int]]) -> None:
    """expected: (time, value, schema width) of every row in (time, storage) order."""

    def key(row: dict) -> tuple[int, float, int]:
        return row["time"], row["out"]["dense_1"][0], len(row["in"]["tensor"])

    for page_size in PAGE_SIZES:
        asc, asc_pages = _pages(stack, account, pipeline, "Asc", page_size)
        desc, desc_pages = _pages(stack, account, pipeline, "Desc", page_size)
        got_asc, got_desc = [key(r) for r in asc], [key(r) for r in desc]
        assert got_asc == expected, f"page_size {page_size}: Asc is not the history sorted by time"
        assert got_desc == expected[::-1], f"page_size {page_size}: Desc is not newest first"
        for rows, pages in ((got_asc, asc_pages), (got_desc, desc_pages)):
            seen = 0
            for status, page in pages:
                assert len({len(r["in"]["tensor"]) for r in page}) <= 1, "a page mixes schemas"
                seen += len(page)
                if status == "SchemaChange":  # ends only where the next row in order has the other schema
                    assert rows[seen][2] != rows[seen - 1][2], f"page_size {page_size}: needless SchemaChange"
                elif status == "RecordLimited":
                    assert len(page) == page_size
            assert seen == len(expected)


def _arrow_request(rows: np.ndarray) -> bytes:
    """An Arrow IPC file whose tensor is a variable-length list of float64 (JSON requests give fixed-size
    float32 tensors). Since 271a048 the engine makes it the JSON reader's type on arrival, so both log one schema."""
    table = pa.table({"tensor": pa.array(rows.astype(np.float64).tolist(), pa.list_(pa.float64()))})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_pandas_and_arrow_requests_interleaved_page_in_time_order(stack, alice):
    _upload_bytes(stack, alice, "orderfraud", ccfraud_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "orderfraud"}]}}]}
    _, url, pipeline = _deploy_definition(stack, alice, "ordered", definition)
    try:
        features = sample_rows(40, seed=11)
        for i in range(20):  # pandas-records and Arrow requests alternate, 2 rows each
            rows = features[2 * i:2 * i + 2]
            if i % 2 == 0:
                response = infer(url, alice.token, [{"tensor": r.tolist()} for r in rows])
            else:
                response = infer(url, alice.token, _arrow_request(rows),
                                 content_type="application/vnd.apache.arrow.file")
            assert response.status_code == 200, response.text
            time.sleep(0.005 if i % 3 else 0.03)
        logged = wait_rows(stack, alice, "ordered", 40, order="Asc")
        assert len(logged) == 40
        schema_changes = set()
        for page_size in (1, 3, 4, 7, 100):
            asc, asc_pages = _pages(stack, alice, "ordered", "Asc", page_size)
            desc, _ = _pages(stack, alice, "ordered", "Desc", page_size)
            times = [r["time"] for r in asc]
            assert len(asc) == 40 and times == sorted(times), f"page_size {page_size}: {times}"
            assert [r["time"] for r in desc] == times[::-1]
            assert sorted(r["out"]["dense_1"][0] for r in asc) == sorted(r["out"]["dense_1"][0] for r in desc)
            schema_changes.add(sum(1 for status, _ in asc_pages if status == "SchemaChange"))
        # one schema for both formats (271a048: a rectangular list column becomes the model input's fixed-size list on
        # arrival), so no page ends at a SchemaChange; paging across real schema changes is the tests below
        assert schema_changes == {0}, schema_changes
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


async def _publish_rows(nc, pipeline: str, workspace_id: int, rows: list[tuple[int, float]], width: int) -> None:
    """One batch as the engine publishes it: rows (time, value) with a `width`-float input tensor."""
    n = len(rows)
    batch = str(uuid.uuid4())
    table = pa.table({"time": pa.array([t for t, _ in rows], pa.int64()),
                      "in.tensor": tensor_array(np.array([[v] * width for _, v in rows], dtype=np.float32)),
                      "out.dense_1": tensor_array(np.array([[v] for _, v in rows], dtype=np.float32)),
                      "metadata.last_model": pa.array(["{}"] * n), "metadata.pipeline_version": pa.array(["v"] * n),
                      "metadata.elapsed": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
                      "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string()))})
    deployment = fake_deployment(workspace_id, pipeline)
    await announce(nc, workspace_id, deployment)
    await nc.jetstream().publish(f"logs.inference.{deployment}", to_ipc_stream(table), headers={
        MSG_ID: batch, BATCH_ID: batch, LOG_HEADER: log_header(workspace_id, pipeline, deployment, "v")})


async def test_mixed_schema_history_pages_equal_the_history_sorted_by_time(stack, alice):
    """Two schemas, late batches, unsorted rows inside a batch, equal times, several segments; paged Asc and
    Desc at several sizes, then again after compaction merged the segments."""
    await asyncio.to_thread(_create, stack, alice, "mixedorder")
    nc = await nats_client.connect(stack.settings().nats.url)
    t0 = int(time.time() * 1000) - 60_000
    plan = [  # (rows (time offset, value), width, stored before the next batch is sent: a segment of its own)
        ([(0, 0.0), (0, 1.0), (0, 2.0)], 3, False),
        ([(10, 3.0), (11, 4.0)], 3, False),
        ([(5, 5.0), (6, 6.0), (12, 7.0)], 5, True),       # older than rows already stored, other schema
        ([(20, 8.0), (2, 9.0), (25, 10.0), (1, 11.0)], 3, True),  # unsorted inside the batch
        ([(15, 12.0), (15, 13.0), (3, 14.0)], 5, True),   # late
        ([(30, 15.0), (31, 16.0)], 3, False),
        ([(4, 17.0), (40, 18.0)], 5, True),
        ([(8, 19.0), (9, 20.0), (10, 21.0)], 3, True),    # 10 ties with a row of the same schema stored before
        ([(50, 22.0)], 5, True),
        ([(45, 24.0), (52, 25.0)], 5, True),              # two segments of one schema in a row: compacted
    ]
    expected: list[tuple[int, float, int]] = []
    try:
        for seq, (rows, width, own_segment) in enumerate(plan):
            await _publish_rows(nc, "mixedorder", alice.workspace_id, [(t0 + dt, v) for dt, v in rows], width)
            expected += [(t0 + dt, v, width, seq) for dt, v in rows]  # type: ignore[misc]
            if own_segment:
                # rows are served only once written to a segment, so the next batch cannot join this one's
                # (a fixed pause could be shorter than a flush on a loaded machine)
                await asyncio.to_thread(wait_rows, stack, alice, "mixedorder", len(expected))
        ordered = [(t, v, w) for t, v, w, _ in sorted(expected, key=lambda r: (r[0], r[3]))]  # type: ignore[misc]
        await asyncio.to_thread(wait_rows, stack, alice, "mixedorder", len(ordered))
        await asyncio.to_thread(_check_history, stack, alice, "mixedorder", ordered)
        report = await _maintain(nc, compact=True, retention=False, purge=False)
        assert report["new_segments"] >= 1
        await asyncio.to_thread(_check_history, stack, alice, "mixedorder", ordered)
        # a cursor made before compaction continues exactly after its row
        body = {"pipeline_id": "mixedorder", "workspace_id": alice.workspace_id, "order": "Asc", "page_size": 5}
        first = await asyncio.to_thread(get_logs, stack, alice, body)
        cursor = first.headers["x-iteration-cursor"]
        await _publish_rows(nc, "mixedorder", alice.workspace_id, [(t0 + 60, 23.0)], 3)
        await asyncio.to_thread(wait_rows, stack, alice, "mixedorder", len(ordered) + 1)
        await _maintain(nc, compact=True, retention=False, purge=True)
        rest = await asyncio.to_thread(get_logs, stack, alice, {**body, "cursor": cursor})
        got = [r["time"] for r in first.json()] + [r["time"] for r in rest.json()]
        assert got == [t for t, _, _ in (ordered + [(t0 + 60, 23.0, 3)])][:len(got)]
        # a time range cuts the merged order, not the positions
        window = {"start_time": _iso(t0 + 5), "end_time": _iso(t0 + 15)}
        asc, _ = await asyncio.to_thread(_pages, stack, alice, "mixedorder", "Asc", 2, **window)
        assert [r["time"] for r in asc] == [t for t, _, _ in ordered if t0 + 5 <= t <= t0 + 15]
    finally:
        await nc.close()


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
