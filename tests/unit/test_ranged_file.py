"""shared/objectstore.RangedFile: a stored object read by ranges, as pyarrow (a segment's footer and some
column chunks) and zipfile (a package's index) read it: only the ranges they ask for are fetched."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.objectstore import RangedFile


def _ranges(data: bytes) -> tuple[list[tuple[int, int]], object]:
    asked: list[tuple[int, int]] = []

    def read_range(offset: int, length: int) -> bytes:
        asked.append((offset, length))
        return data[offset:offset + length]

    return asked, read_range


def test_pyarrow_reads_a_column_of_a_parquet_object_through_ranges():
    table = pa.table({"a": np.arange(50_000, dtype=np.int64), "b": np.random.default_rng(0).random(50_000)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=10_000)
    data = sink.getvalue().to_pybytes()
    asked, read_range = _ranges(data)
    source = RangedFile(read_range, len(data), prefetch_tail=64 * 1024)
    assert pq.ParquetFile(source).read(columns=["a"]).column("a").equals(table.column("a"))
    assert sum(length for _, length in asked) < len(data)  # column b was never fetched


def test_zipfile_lists_an_archive_from_its_index_alone():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("backend/railyard-ml.json", "{}")
        archive.writestr("state.bin", np.random.default_rng(1).bytes(1_000_000))
    data = buffer.getvalue()
    asked, read_range = _ranges(data)
    with zipfile.ZipFile(RangedFile(read_range, len(data))) as archive:
        assert archive.namelist() == ["backend/railyard-ml.json", "state.bin"]
    assert sum(length for _, length in asked) < 100_000  # the state's megabyte was never read
