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
