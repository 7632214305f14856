"""Log segments store null-free numeric tensors packed (services/log_store/segments.py) and read them back as
the same fixed-size lists; anything else is stored as it was."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.log_store.segments import TENSOR, encode_segment, unpack_schema, unpack_tensors
from shared.arrow_codec import tensor_array


def _round_trip(table: pa.Table, **read) -> tuple[pa.Table, pa.Schema]:
    data = encode_segment(table, row_group_rows=3)
    parquet = pq.ParquetFile(pa.BufferReader(data))
    return unpack_tensors(parquet.read(**read)), parquet.schema_arrow


def test_tensors_come_back_as_written_and_are_stored_packed():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (7, 2, 3, 4), dtype=np.uint8)
    floats = rng.standard_normal((7, 29)).astype(np.float32)
    table = pa.table({
        "time": pa.array(np.arange(7, dtype=np.int64)),
        "in.tensor": tensor_array(floats).slice(0),  # a tensor
        "in.image": tensor_array(images),  # nested dims, 1-byte values
        "in.scalar": pa.array(np.arange(7, dtype=np.float64)),  # not a list: as it is
        "in.ragged": pa.array([[1.0]] * 6 + [[1.0, 2.0]]),  # variable-size list: as it is
        "in.holes": pa.FixedSizeListArray.from_arrays(pa.array([1.0, None] * 7), 2),  # a null inside: as it is
        "out.dense_1": tensor_array(rng.standard_normal((7, 1)).astype(np.float64)),
    })
    back, stored = _round_trip(table)
    assert back.equals(table)
    packed = {f.name for f in stored if f.metadata and TENSOR in f.metadata}
    assert packed == {"in.tensor", "in.image", "out.dense_1"}
    assert pa.types.is_fixed_size_binary(stored.field("in.tensor").type)
    assert unpack_schema(stored) == table.schema


def test_a_sliced_table_and_column_reads_unpack_the_right_rows():
    floats = np.arange(40, dtype=np.float32).reshape(10, 4)
    table = pa.table({"time": pa.array(np.arange(10, dtype=np.int64)), "in.x": tensor_array(floats)}).slice(3, 5)
    back, _ = _round_trip(table, columns=["in.x"])
    assert back.column("in.x").to_pylist() == floats[3:8].tolist()
    # rows read from several row groups (3 rows each), as pages read them
    data = encode_segment(table, row_group_rows=2)
    groups = pq.ParquetFile(pa.BufferReader(data)).read_row_groups([1, 2])
    assert unpack_tensors(groups).column("in.x").to_pylist() == floats[5:8].tolist()
    assert unpack_tensors(groups.slice(0, 0)).column("in.x").to_pylist() == []


def test_the_engines_segment_buffer_is_the_log_stores_bytes():
    """encode_segment_buffer (the engine's writer, handed to the PUT as it is) holds exactly the bytes the log
    store's encode_segment writes."""
    from shared.log_segments import encode_segment_buffer

    table = pa.table({"time": pa.array(np.arange(50, dtype=np.int64)), "model": pa.array(["m"] * 50),
                      "out.y": tensor_array(np.ones((50, 3), dtype=np.float32))})
    buffer = encode_segment_buffer(table, row_group_rows=16)
    assert isinstance(buffer, pa.Buffer)
    assert buffer.to_pybytes() == encode_segment(table, row_group_rows=16)


def test_a_tensor_snappy_does_not_shrink_is_stored_uncompressed_and_the_rest_compressed():
    """Measured float inputs do not compress: snappy's pass over them was ~12 % of a segment's write for no byte
    saved, so such a packed column is written as it is, while a tensor that compresses, `time` and a nested list
    (`metadata.elapsed`, whose Parquet path is not its name) stay snappy; the rows read back the same."""
    rng = np.random.default_rng(2)
    rows = 3000  # 348 KB of noise: sampled at three places
    table = pa.table({
        "time": pa.array(np.arange(rows, dtype=np.int64)),
        "in.noise": tensor_array(rng.standard_normal((rows, 29)).astype(np.float32)),
        "in.onehot": tensor_array(np.eye(29, dtype=np.float32)[np.arange(rows) % 29]),
        "metadata.elapsed": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
                                                     pa.array(np.ones(2 * rows, np.int64))),
    })
    data = encode_segment(table, row_group_rows=1024)
    meta = pq.read_metadata(pa.BufferReader(data))
    codecs = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression
              for i in range(meta.num_columns)}
    assert codecs == {"time": "SNAPPY", "in.noise": "UNCOMPRESSED", "in.onehot": "SNAPPY",
                      "metadata.elapsed.list.element": "SNAPPY"}
    assert unpack_tensors(pq.read_table(pa.BufferReader(data))).equals(table)
    # a column that repeats itself far apart (a load generator's one request again and again) is judged by what
    # snappy's window sees, not by the repeats: still stored as it is
    repeated = pa.table({"time": pa.array(np.arange(2 * rows, dtype=np.int64)),
                         "in.noise": pa.concat_arrays([table.column("in.noise").chunk(0)] * 2)})
    meta = pq.read_metadata(pa.BufferReader(encode_segment(repeated, row_group_rows=8192)))
    assert meta.row_group(0).column(1).compression == "UNCOMPRESSED"


def _log_like_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table({"time": pa.array(np.arange(rows, dtype=np.int64)), "model": pa.array(["m"] * rows),
                     "in.tensor": tensor_array(rng.standard_normal((rows, 29)).astype(np.float32)),
                     "out.y": tensor_array(rng.standard_normal((rows, 1)).astype(np.float32))})


def test_a_segment_is_written_into_one_buffer_allocated_at_once(monkeypatch):
    """The Parquet write goes into one buffer of the table's size (plus slack) allocated before it, not into a
    stream that starts small and doubles, copying what it holds into new memory each time (docs/performance.md
    item 68); the bytes are the same."""
    from shared import log_segments

    table = _log_like_table(5000)
    expected = encode_segment(table, row_group_rows=2048)

    def no_growing_stream(*args, **kwargs):
        raise AssertionError("a segment of a 600 KB table went to the growing BufferOutputStream")

    monkeypatch.setattr(log_segments.pa, "BufferOutputStream", no_growing_stream)  # its pa: see _growing_streams
    buffer = log_segments.encode_segment_buffer(table, row_group_rows=2048)
    assert buffer.to_pybytes() == expected
    assert buffer.size == len(expected)


def _growing_streams(monkeypatch) -> list[int]:
    """Counts the growing streams made from here on (one an entry). Patched on shared.log_segments' own `pa`, not
    on pyarrow: imported before pyarrow was (services.log_store.handlers does, collected first from
    test_log_owners.py), its `pa` is a lean_imports.LazyModule that took a copy of pyarrow's attributes at its first
    read, so a stand-in set on pyarrow afterwards is never called (the counts stayed 0)."""
    from shared import log_segments

    made: list[int] = []
    real = log_segments.pa.BufferOutputStream

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(log_segments.pa, "BufferOutputStream", counted)
    return made


def test_a_segment_larger_than_its_buffer_is_written_again_whole(monkeypatch):
    """A write that does not fit the buffer (Parquet's output above the table's size plus the slack) is not cut
    short: it is written again into the growing stream, and so is a table above SINK_MAX."""
    from shared import log_segments

    table = _log_like_table(3000)
    expected = encode_segment(table, row_group_rows=1024)
    growing = _growing_streams(monkeypatch)
    monkeypatch.setattr(log_segments, "SINK_SLACK", -table.nbytes + 1000)  # room for 1,000 bytes
    assert log_segments.encode_segment_buffer(table, row_group_rows=1024).to_pybytes() == expected
    assert len(growing) == 1
    monkeypatch.setattr(log_segments, "SINK_SLACK", 0)
    monkeypatch.setattr(log_segments, "SINK_MAX", 1000)

    def allocated_at_once(size, *args, **kwargs):
        raise AssertionError(f"{size:,} bytes allocated at once for a table above SINK_MAX")

    monkeypatch.setattr(log_segments.pa, "allocate_buffer", allocated_at_once)
    assert log_segments.encode_segment_buffer(table, row_group_rows=1024).to_pybytes() == expected
    assert len(growing) == 2


@pytest.mark.parametrize("spare", [-1, 0], ids=["one_byte_short", "its_size"])
def test_a_buffer_one_byte_short_of_the_segment_is_not_used_and_one_of_its_size_is(monkeypatch, spare):
    """At the buffer's edge: one byte short of the segment's Parquet (the footer's closing magic out of bounds),
    the write fails and goes again to the growing stream, whole; with exactly its size, the one buffer holds it."""
    from shared import log_segments

    table = _log_like_table(3000)
    expected = encode_segment(table, row_group_rows=1024)
    growing = _growing_streams(monkeypatch)
    monkeypatch.setattr(log_segments, "SINK_SLACK", len(expected) - table.nbytes + spare)
    buffer = log_segments.encode_segment_buffer(table, row_group_rows=1024)
    assert (buffer.size, buffer.to_pybytes() == expected) == (len(expected), True)
    assert len(growing) == (1 if spare < 0 else 0)


class _CountingStore:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.gets = objects, 0

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        self.gets += 1
        return self.objects[key][offset:offset + length]


def _large_segment(rows: int) -> bytes:
    """A segment above SMALL_OBJECT (random float32: nothing compresses), in row groups of 1,000 rows."""
    from services.log_store.segments import SMALL_OBJECT

    rng = np.random.default_rng(3)
    table = pa.table({"time": pa.array(np.arange(rows, dtype=np.int64)),
                      "in.tensor": tensor_array(rng.random((rows, 64), dtype=np.float32))})
    data = encode_segment(table, row_group_rows=1000)
    assert len(data) > SMALL_OBJECT
    return data


def test_row_groups_of_a_large_segment_are_kept_for_the_next_pages_within_the_bound():
    from services.log_store.segments import SegmentReader

    data = _large_segment(20_000)
    store = _CountingStore({"k": data})
    group_bytes = 1000 * (8 + 256)
    reader = SegmentReader(store, group_cache_bytes=int(group_bytes * 4.5))  # type: ignore[arg-type]
    expected = np.arange(20_000)
    for lo in range(0, 3000, 100):  # 30 pages in 3 row groups: each group fetched once (and the footer)
        page = reader.read("k", len(data), lo, lo + 100, None)
        assert page.column("time").to_pylist() == list(expected[lo:lo + 100])
    assert store.gets == 1 + 3
    assert reader.read("k", len(data), 0, 10, ["time"]).column_names == ["time"]  # fewer columns: served kept
    assert store.gets == 4
    for lo in range(3000, 20_000, 1000):  # 17 more groups: the oldest are dropped, the bytes stay bounded
        reader.read("k", len(data), lo, lo + 1000, None)
        assert reader.groups_bytes <= reader.group_cache_bytes
    assert len(reader.groups) == 4
    store.gets = 0
    reader.read("k", len(data), 0, 100, None)  # dropped: fetched again
    assert store.gets == 1
    reader.forget("k")
    assert not reader.groups and reader.groups_bytes == 0


def test_a_row_group_above_half_of_the_bound_is_read_for_its_page_and_not_kept():
    from services.log_store.segments import SegmentReader

    data = _large_segment(20_000)
    store = _CountingStore({"k": data})
    reader = SegmentReader(store, group_cache_bytes=int(1000 * 264 * 1.5))  # type: ignore[arg-type]
    reader.read("k", len(data), 0, 100, None)
    reader.read("k", len(data), 100, 200, None)
    assert store.gets == 1 + 2 and not reader.groups


def test_a_full_engine_segment_of_wide_rows_is_fetched_once_for_the_pages_through_it():
    """An engine cuts a segment at `engine_segment_bytes` (16 MiB since session 37) of records: with rows above ~2 KB
    that is fewer than 8,192 rows, one row group of 16 MiB and more decoded, which was above a quarter of
    GROUP_CACHE_BYTES and never kept, so every 4 MiB page through the segment fetched and decoded all of it again
    (10 GETs, 144 MiB for a 16 MiB segment of 8 KB rows in 2 MiB pages; a 4 MiB segment's group was kept)."""
    from services.log_store.segments import SegmentReader
    from shared.settings import LogSettings

    width = 2048  # float32: 8 KB a row
    rows = LogSettings().engine_segment_bytes // (width * 4) + 1  # what makes the engine cut it
    table = pa.table({"time": pa.array(np.arange(rows, dtype=np.int64)),
                      "in.tensor": tensor_array(np.random.default_rng(5).random((rows, width), dtype=np.float32))})
    data = encode_segment(table, row_group_rows=LogSettings().row_group_rows)
    store = _CountingStore({"k": data})
    reader = SegmentReader(store)  # type: ignore[arg-type]
    page = 256  # rows of a ~2 MiB page
    for lo in range(0, rows, page):
        assert reader.read("k", len(data), lo, min(rows, lo + page), None).num_rows == min(page, rows - lo)
    assert store.gets == 2 and len(reader.groups) == 1  # the footer's read, then the group once


def test_a_kept_read_of_no_column_does_not_answer_a_read_of_every_column():
    """columns=[] (no column: the rows' count) and None (every column) are two reads: the group read for [] was kept
    as if it held every column, and the next read of every column was answered with no column."""
    from services.log_store.segments import SegmentReader

    data = _large_segment(20_000)
    reader = SegmentReader(_CountingStore({"k": data}))  # type: ignore[arg-type]
    counted = reader.read("k", len(data), 0, 100, [])
    assert (counted.num_columns, counted.num_rows) == (0, 100)
    page = reader.read("k", len(data), 0, 100, None)
    assert page.column_names == ["time", "in.tensor"] and page.column("time").to_pylist() == list(range(100))
    assert reader.read("k", len(data), 0, 100, []).num_columns == 0
