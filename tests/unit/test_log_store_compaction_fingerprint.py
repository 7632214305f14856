"""A compacted segment keeps the schema fingerprint of the segments it merges (services/log_store/handlers.py
`_compact_pipeline`). Parquet has no timestamp[s], time32[s] nor date64: a segment of such columns reads back as
timestamp[ms], time32[ms] and date32, and the merge's fingerprint was worked out from that read-back, another one than
its fresh segments' (worked out from the batch the replica or the stream gave). Pages end at a fingerprint change
(`SchemaChange`), so a pipeline logging such a column had its pages stop between its compacted rows and its newer
fresh ones, and compaction never joined the two again."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

from services.log_store import handlers, store
from shared.log_segments import encode_segment
from shared.settings import LogSettings

WORKSPACE, PIPELINE = 7, "p"


def _segment(first_pos: int, seconds: list[int]) -> tuple[dict, bytes]:
    rows = len(seconds)
    table = pa.table({"time": pa.array([s * 1000 for s in seconds], pa.int64()),
                      "in.at": pa.array(seconds, pa.timestamp("s")),
                      "in.day": pa.array([86_400_000 * (19_000 + s) for s in seconds], pa.date64()),
                      "in.clock": pa.array([s % 86_400 for s in seconds], pa.time32("s")),
                      "out.y": pa.array([float(s) for s in seconds], pa.float32())})
    key = f"ws-{WORKSPACE}/{PIPELINE}/k{first_pos}.parquet"
    data = encode_segment(table, 1000)
    ref = handlers._describe(table, key, len(data), WORKSPACE, PIPELINE)  # as ingestion describes a fresh one
    row = {"id": first_pos, "first_pos": first_pos, "last_pos": first_pos + rows - 1, "row_count": rows,
           "min_time": ref.min_time, "max_time": ref.max_time, "schema_fp": ref.schema_fp, "object_key": key,
           "bytes": len(data), "versions": [], "dropped": [], "level": 0}
    return row, data


async def test_a_compacted_segment_keeps_its_segments_fingerprint(monkeypatch):
    first, first_data = _segment(0, [1_700_000_000, 1_700_000_001])
    second, second_data = _segment(2, [1_700_000_002])
    assert first["schema_fp"] == second["schema_fp"]
    objects = {first["object_key"]: first_data, second["object_key"]: second_data}
    replaced: list[store.NewSegment] = []

    async def small_segments(pool, pipeline_id, below_rows, min_age, below_bytes):
        return [first, second]

    async def replace_segments(pool, old_ids, seg, pipeline_id, first_pos, level):
        replaced.append(seg)
        return True

    async def put_bytes(bucket, key, data):
        objects[key] = data

    monkeypatch.setattr(store, "small_segments", small_segments)
    monkeypatch.setattr(store, "replace_segments", replace_segments)
    from shared.log_segments import read_segment

    reader = SimpleNamespace(read_all=lambda key, size: read_segment(objects[key]), remember=lambda key, data: None)
    deps = SimpleNamespace(pool=None, objects=SimpleNamespace(put_bytes=put_bytes), settings=LogSettings(),
                           reader=reader, orphan_sweep=handlers.OrphanSweep())
    report = SimpleNamespace(compacted_segments=0, new_segments=0)
    await handlers._compact_pipeline(deps, {"id": 1, "workspace_id": WORKSPACE, "name": PIPELINE}, report)
    (merged,) = replaced
    assert report.compacted_segments == 2 and merged.row_count == 3
    # the merge read back timestamp[ms], time32[ms] and date32; it is still the run's schema for pages
    assert read_segment(objects[merged.object_key]).schema.field("in.at").type == pa.timestamp("ms")
    assert merged.schema_fp == first["schema_fp"]


async def test_a_segment_merged_before_the_fix_and_the_fresh_ones_after_it_are_one_page(monkeypatch):
    """A merge before 4dabda3b stored its read-back's fingerprint (timestamp[ms], date32, time32[ms]) in the index,
    and such segments are still there: a page compared the index's fingerprints and ended with SchemaChange between
    the merged rows and the fresh ones after them, though it reads both alike (Parquet gives the fresh segments'
    timestamp[s], date64 and time32[s] back the same way). A page compares the schemas it reads: one page, with all
    the rows. A real change of schema (another output type) still ends the page."""
    import numpy as np

    from services.log_store import pages
    from services.log_store.segments import POS, SegmentReader
    from shared.log_segments import read_segment
    from shared.messages.logs import GetLogs

    old, old_data = _segment(0, [1_700_000_000, 1_700_000_001])
    back = read_segment(old_data)  # as the merge read its run back before 4dabda3b, and described it
    assert back.schema.field("in.at").type == pa.timestamp("ms")
    merged_data = encode_segment(back.append_column(POS, pa.array(np.arange(2), pa.int64())), 1000)
    merged_key = f"ws-{WORKSPACE}/{PIPELINE}/merged.parquet"
    old.update(object_key=merged_key, bytes=len(merged_data), level=1,
               schema_fp=handlers._describe(back, merged_key, len(merged_data), WORKSPACE, PIPELINE).schema_fp)
    fresh, fresh_data = _segment(2, [1_700_000_002, 1_700_000_003])
    assert old["schema_fp"] != fresh["schema_fp"]  # the index's fingerprints differ
    other = pa.table({"time": pa.array([1_700_000_004_000], pa.int64()), "out.y": pa.array([4], pa.int64())})
    other_key = f"ws-{WORKSPACE}/{PIPELINE}/other.parquet"
    other_data = encode_segment(other, 1000)
    changed = {**fresh, "id": 9, "first_pos": 4, "last_pos": 4, "row_count": 1, "min_time": 1_700_000_004_000,
               "max_time": 1_700_000_004_000, "object_key": other_key, "bytes": len(other_data),
               "schema_fp": handlers._describe(other, other_key, len(other_data), WORKSPACE, PIPELINE).schema_fp}
    objects = {merged_key: merged_data, fresh["object_key"]: fresh_data, other_key: other_data}
    segments = [old, fresh, changed]
    for seg in segments:
        seg["sorted"] = True

    async def segments_by_time(pool, pipeline_id, desc, bound, start, end, after, limit):
        return [] if after is not None else (segments[::-1] if desc else segments)

    monkeypatch.setattr(pages.store, "segments_by_time", segments_by_time)
    store_ = SimpleNamespace(read_range_sync=lambda bucket, key, start, length: objects[key][start:start + length])
    reader = SegmentReader(store_)
    for order, times in (("Asc", [1_700_000_000, 1_700_000_001, 1_700_000_002, 1_700_000_003]),
                         ("Desc", [1_700_000_003, 1_700_000_002, 1_700_000_001, 1_700_000_000])):
        cmd = GetLogs(pipeline_id=PIPELINE, workspace_id=WORKSPACE, order=order, page_size=100)
        if order == "Desc":  # the changed schema comes first: its page, then the four rows of one schema
            page, meta = await pages.scan(None, reader, 1, cmd, None, 4 << 20)
            assert meta.status == "SchemaChange" and page.num_rows == 1
            cursor = pages.decode_cursor(meta.cursor, order)
        else:
            cursor = None
        page, meta = await pages.scan(None, reader, 1, cmd, cursor, 4 << 20)
        assert meta.status == "SchemaChange" if order == "Asc" else meta.status == "All", (order, meta)
        assert page.column("in.at").cast(pa.int64()).to_pylist() == [t * 1000 for t in times]
