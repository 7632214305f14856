"""Object-storage reads a log page and an assay's field read cost, segments left as written (2-4 MiB, never merged:
`compact_below_bytes`) against the same rows merged into one segment (what compaction would write if it took them).

    python -m bench.log_compaction_reads

Counts the GETs and bytes `services.log_store.segments.SegmentReader` asks of object storage (an in-memory store
stands in for S3: the question is how many requests, not how fast one is). Rows are ccfraud's (29 float32 inputs,
one output, the metadata columns), 1,000- and 10,000-row pages read in order from the first row to the last, as a client
following the cursor does; the field read is one output column over every row (an assay's window)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from services.log_store.segments import SegmentReader
from shared.arrow_codec import tensor_array
from shared.log_segments import POS, encode_segment


class CountingStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets = 0
        self.bytes = 0

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        self.gets += 1
        self.bytes += length
        return self.objects[key][offset:offset + length]


def rows(n: int, first: int) -> pa.Table:
    rng = np.random.default_rng(first)
    return pa.table({
        "time": pa.array(np.arange(first, first + n, dtype=np.int64)),
        "in.tensor": tensor_array(rng.random((n, 29), dtype=np.float32)),
        "out.dense_1": tensor_array(rng.random((n, 1), dtype=np.float32)),
        "metadata.last_model": pa.array(['{"model_name":"ccfraud","model_sha":"abc"}'] * n),
        "metadata.pipeline_version": pa.array(["v1"] * n),
        "metadata.elapsed": pa.array([[1000, 2000]] * n, pa.list_(pa.int64())),
        POS: pa.array(np.arange(first, first + n, dtype=np.int64)),
    })


def measure(segments: list[tuple[str, int, int]], store: CountingStore, page: int) -> dict[str, float]:
    """GETs and MiB of paging through every row (every column, then `time` alone), then of one column over every row
    (a fresh reader each: cold)."""
    out: dict[str, float] = {}
    reader = SegmentReader(store)  # type: ignore[arg-type]
    store.gets = store.bytes = 0
    pages = 0
    for key, size, count in segments:
        for lo in range(0, count, page):
            reader.read(key, size, lo, min(lo + page, count), None)
            pages += 1
    out |= {"pages": pages, "page_gets": store.gets, "page_mib": store.bytes / 2**20}
    reader = SegmentReader(store)  # type: ignore[arg-type]
    store.gets = store.bytes = 0
    for key, size, count in segments:  # pages of one narrow column (`dataset: ["time"]`)
        for lo in range(0, count, page):
            reader.read(key, size, lo, min(lo + page, count), ["time"])
    out |= {"time_gets": store.gets, "time_mib": store.bytes / 2**20}
    reader = SegmentReader(store)  # type: ignore[arg-type]
    store.gets = store.bytes = 0
    for key, size, _ in segments:
        reader.read_columns(key, size, ["out.dense_1"])
    return out | {"field_gets": store.gets, "field_mib": store.bytes / 2**20}


def main() -> None:
    store = CountingStore()
    per_segment, count = 30_000, 10
    written = []
    for i in range(count):
        data = encode_segment(rows(per_segment, i * per_segment), 8192)
        store.objects[f"s{i}"] = data
        written.append((f"s{i}", len(data), per_segment))
    merged = encode_segment(rows(per_segment * count, 0), 8192)
    store.objects["merged"] = merged
    sizes = [size for _, size, _ in written]
    print(f"{count} segments of {per_segment} rows, {min(sizes) / 2**20:.2f}-{max(sizes) / 2**20:.2f} MiB each; "
          f"merged: {len(merged) / 2**20:.1f} MiB")
    for page in (1000, 10_000):
        for name, segments in (("as written", written), ("merged", [("merged", len(merged), per_segment * count)])):
            print(f"{page}-row pages, {name}:", {k: round(v, 1) for k, v in measure(segments, store, page).items()})


if __name__ == "__main__":
    main()
