"""shared/log_segments.py unpack_schema (the log store's pages, services/log_store/segments.py): the schema a page reads
from a segment's Parquet schema (packed tensor columns as fixed-size lists again), behind SegmentReader.fingerprint
(once per segment a page meets) and a read of no row group. It built an empty table and ran unpack_tensors over it (~170
us of the ~270 us of each segment's first fingerprint); it is now worked out field by field, held here equal to what
unpack_tensors gives a table of that schema, for tensors of several types and shapes, plain fields, field and schema
metadata, non-nullable fields, and a real segment's schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shared.log_segments
from services.log_store import segments
from shared.arrow_codec import tensor_array
from shared.log_segments import POS, TENSOR, encode_segment, unpack_tensors
from shared.logrecords import InferenceRecord, build_batch

SCHEMAS = [
    pa.schema([pa.field("time", pa.int64(), nullable=False),
               pa.field("in.t", pa.binary(116), metadata={TENSOR: b"<f4:29"}),
               pa.field("in.img", pa.binary(48), nullable=False, metadata={TENSOR: b"<f8:2,3", b"other": b"kept"}),
               pa.field("out.y", pa.binary(2), metadata={TENSOR: b"|u1:2"}),
               pa.field("in.tag", pa.string(), metadata={b"unit": b"label"}),
               pa.field("in.bin", pa.binary(4)),  # fixed-size binary that is no packed tensor
               pa.field("in.named", pa.binary(8), metadata={b"railyard.other": b"<f4:2"})],
              metadata={b"schema": b"level"}),
    pa.schema([pa.field("time", pa.int64()), pa.field("in.x", pa.list_(pa.float32(), 3))]),  # written before packing
    pa.schema([]),
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_unpacked_schema_is_what_unpack_tensors_gives_a_table_of_it(schema):
    expected = unpack_tensors(schema.empty_table()).schema
    assert segments.unpack_schema(schema).equals(expected, check_metadata=True)


def test_a_segments_schema_unpacks_as_its_rows_read_back():
    rows = 4
    inputs = pa.table({"tensor": tensor_array(np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3)),
                       "tag": pa.array(["a", "b", "c", "d"])})
    outputs = pa.table({"dense_1": tensor_array(np.ones((rows, 1), np.float64))})
    table = build_batch([InferenceRecord(1000, inputs, outputs, "m", (5, 9))], "v")
    table = table.append_column(POS, pa.array(np.arange(rows, dtype=np.int64)))
    parquet = pq.ParquetFile(pa.BufferReader(encode_segment(table, 8192)))
    assert any(TENSOR in (field.metadata or {}) for field in parquet.schema_arrow)  # packed: something to unpack
    read = unpack_tensors(parquet.read())
    assert segments.unpack_schema(parquet.schema_arrow).equals(read.schema, check_metadata=True)


def test_no_table_is_built_for_it(monkeypatch):
    """Counted, not timed: the old way ran unpack_tensors over an empty table of the schema."""
    def refuse(table):
        raise AssertionError("unpack_schema built a table and unpacked it")

    monkeypatch.setattr(shared.log_segments, "unpack_tensors", refuse)
    monkeypatch.setattr(segments, "unpack_tensors", refuse)
    assert [field.name for field in segments.unpack_schema(SCHEMAS[0])] == [field.name for field in SCHEMAS[0]]
