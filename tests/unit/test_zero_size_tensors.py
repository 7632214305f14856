"""Tensors with a zero-size dimension (a model output of shape [N, 0], rows of no values): the engine builds them as
fixed-size lists of size 0 (pyarrow's FixedSizeListArray.from_arrays refuses size 0, and given the type divides by
it), the replica's segment write stores them (Parquet has no zero-length FIXED_LEN_BYTE_ARRAY to pack them into:
every write failed, "Invalid FIXED_LEN_BYTE_ARRAY length: 0"; unpacked, pyarrow writes them but cannot read them
back, and a string one ends the process), and a segment reads back with every row an empty list."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.arrow_codec import tensor_array

SHAPES = {"[2,0]": (2, 0), "[2,0,3]": (2, 0, 3), "[2,3,0]": (2, 3, 0), "[0,0]": (0, 0)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_zero_size_tensor_is_a_fixed_size_list_of_its_shape(shape):
    array = tensor_array(np.zeros(shape, np.float32))
    array.validate(full=True)
    kind = pa.float32()
    for size in reversed(shape[1:]):
        kind = pa.list_(kind, size)
    assert array.type == kind and len(array) == shape[0]
    assert array.to_pylist() == np.zeros(shape).tolist()


def test_strings_of_zero_size_too():
    array = tensor_array(np.zeros((3, 0), "U1"))
    assert array.type == pa.list_(pa.string(), 0) and array.to_pylist() == [[], [], []]


def test_a_model_with_a_zero_size_output_answers(tmp_path):
    from services.engine.runtimes import OnnxRuntime
    from tests.models import zero_size_onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(zero_size_onnx())
    runtime = OnnxRuntime(path)
    runtime.load()
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    answer = runtime.predict(pa.table({"x": tensor_array(rows)}))
    assert answer.column_names == ["total", "none"]
    assert answer.column("total").to_pylist() == [[3.0], [12.0]]
    assert answer.schema.field("none").type == pa.list_(pa.float32(), 0)
    assert answer.column("none").to_pylist() == [[], []]


def _zero_size_table() -> pa.Table:
    return pa.table({
        "time": pa.array([3, 1, 2], pa.int64()),
        "in.x": tensor_array(np.ones((3, 2), np.float32)),
        "out.none": tensor_array(np.zeros((3, 0), np.float32)),
        "out.rows_of_none": tensor_array(np.zeros((3, 2, 0), np.int64)),
        "out.none_of_rows": tensor_array(np.zeros((3, 0, 2), np.float64)),
        "out.flags": pa.array([[], None, []], pa.list_(pa.bool_(), 0)),  # a null: never packed
        "out.y": tensor_array(np.full((3, 1), 0.5, np.float32)),
    })


def _read(data: bytes | pa.Buffer) -> pa.Table:
    from services.log_store.segments import unpack_tensors

    return unpack_tensors(pq.read_table(pa.BufferReader(data)))


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "sliced"])
def test_a_segment_with_zero_size_tensors_is_written_and_reads_back_as_empty_lists(sliced):
    from shared.log_segments import encode_segment, sort_by_time

    table = _zero_size_table()
    table = sort_by_time(table.slice(1) if sliced else table)
    stored = _read(encode_segment(table, 1000))
    assert stored.column_names == table.column_names
    assert stored.num_rows == table.num_rows
    for name in ("out.none", "out.rows_of_none", "out.none_of_rows", "out.flags"):
        assert stored.column(name).to_pylist() == table.column(name).to_pylist(), name
        assert pa.types.is_list(stored.schema.field(name).type), name
    assert stored.schema.field("out.y").type == table.schema.field("out.y").type  # packed as before
    assert stored.column("out.y").to_pylist() == table.column("out.y").to_pylist()
    assert stored.column("in.x").to_pylist() == table.column("in.x").to_pylist()


def test_a_zero_size_string_tensor_is_written_without_ending_the_process():
    """pyarrow writes a fixed-size list of strings of size 0 by failing a check that aborts the process (a
    replica's, or the log store's): run in a child so the old code fails this test, not the test run."""
    script = (
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "from shared.log_segments import encode_segment\n"
        "from services.log_store.segments import unpack_tensors\n"
        "table = pa.table({'time': pa.array([1, 2], pa.int64()), 'out.labels': pa.array([[], []], "
        "pa.list_(pa.string(), 0))})\n"
        "read = unpack_tensors(pq.read_table(pa.BufferReader(encode_segment(table, 100))))\n"
        "print(read.column('out.labels').to_pylist(), flush=True)\n"
        "import os; os._exit(0)\n")  # pyarrow's reader threads can abort an interpreter's exit now and then
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[[], []]"


def test_the_replica_stores_a_zero_size_output_as_a_segment():
    """The engine's own write (LogBatcher with an object store): fast-lane records of a zero-size output go as a
    segment, not through the stream as rows after a failed write."""
    from services.engine.logbatcher import LogBatcher
    from shared.log_segments import SEGMENT_HEADER, SegmentRef
    from shared.logrecords import ArrayRecord, RecordLayout
    from shared.settings import LogSettings
    from tests.unit.test_log_batcher import DEPLOYMENT, Objects, RefusingStream

    layout = RecordLayout(pa.schema([("x", pa.list_(pa.float32(), 3))]), (3,),
                          pa.schema([("total", pa.list_(pa.float32(), 1)), ("none", pa.list_(pa.float32(), 0))]))
    stream, objects = RefusingStream(), Objects()
    stream.full = False
    batcher = LogBatcher(stream, DEPLOYMENT, LogSettings(), 8 * 1024 * 1024, objects=objects)
    for at in (20, 10):
        x = np.full(6, at, np.float32)
        batcher.add(ArrayRecord(at, layout, [x], [np.full((2, 1), 3.0 * at, np.float32), np.zeros((2, 0),
                                                                                                    np.float32)],
                                2, "m", (1, 2)))
    asyncio.run(batcher.flush())
    (body, headers), = stream.published
    assert headers.get(SEGMENT_HEADER) == "1", "the rows went through the stream: the segment write failed"
    ref = SegmentRef.from_json(body, 1, "p")
    stored = _read(objects.stored[ref.key])
    assert ref.rows == 4 and stored.column("time").to_pylist() == [10, 10, 20, 20]
    assert stored.column("out.none").to_pylist() == [[]] * 4
    assert stored.column("out.total").to_pylist() == [[30.0], [30.0], [60.0], [60.0]]


def test_a_segment_read_back_keeps_the_fingerprint_it_was_described_with():
    """Compaction reads segments back and describes what it writes again; pages end at a fingerprint change
    (SchemaChange) and only segments of one fingerprint are merged: the description is of the schema as stored (the
    zero-size tensor as a list), so a segment read back, and a compacted one, keep it."""
    from shared.log_segments import ENGINE_SUFFIX, describe, encode_segment, segment_key, sort_by_time
    from shared.logrecords import schema_fingerprint

    table = sort_by_time(_zero_size_table())
    key = segment_key(1, "p", ENGINE_SUFFIX)
    data = encode_segment(table, 1000)
    described = describe(table, key, len(data))
    read = _read(data)
    assert schema_fingerprint(read.schema) == described.schema_fp
    assert describe(read, key, len(data)).schema_fp == described.schema_fp
    again = _read(encode_segment(read, 1000))  # compacted: written from what was read
    assert again.schema == read.schema and again.to_pylist() == read.to_pylist()


def test_a_zero_size_tensor_inside_a_struct_is_a_column_parquet_cannot_store():
    """A fixed-size list of size 0 inside a struct (or a map, or a list of structs) is not relisted (`_relisted`
    takes a column's own lists only): pyarrow wrote it but could not read it back (a replica reading back a refused
    PUT's segment lost the whole flush), and a string one ended the process as it was written (a replica's; the log
    store's again at each redelivery of the batch). Such a column is one Parquet cannot store: the replica sends the
    rows through the stream and the log store drops the column, named in `metadata.dropped`. In a child, so the old
    code fails this test, not the test run."""
    from shared.log_segments import unwritable

    inner = pa.struct([("a", pa.list_(pa.string(), 0))])
    for kind in (inner, pa.struct([("a", pa.list_(pa.float32(), 0))]), pa.list_(inner), pa.list_(inner, 2),
                 pa.map_(pa.string(), pa.list_(pa.int64(), 0))):
        assert unwritable(kind), kind
    for kind in (pa.list_(pa.string(), 0), pa.list_(pa.list_(pa.float32(), 0), 2), pa.list_(pa.list_(pa.int8(), 2)),
                 pa.struct([("a", pa.list_(pa.float32(), 2))]), pa.list_(pa.struct([("a", pa.float32())]), 0)):
        assert not unwritable(kind), kind
    script = (
        "import asyncio, os, numpy as np, pyarrow as pa\n"
        "from services.engine.logbatcher import LogBatcher\n"
        "from services.log_store.segments import drop_unwritable\n"
        "from shared.logrecords import InferenceRecord, expand_runs, storage_order\n"
        "from shared.settings import LogSettings\n"
        "from tests.unit.test_log_batcher import DEPLOYMENT, Objects, RefusingStream\n"
        "labels = pa.StructArray.from_arrays([pa.array([[], []], pa.list_(pa.string(), 0))], ['a'])\n"
        "stream, objects = RefusingStream(), Objects()\n"
        "stream.full = False\n"
        "batcher = LogBatcher(stream, DEPLOYMENT, LogSettings(), 8 * 1024 * 1024, objects=objects)\n"
        "batcher.add(InferenceRecord(10, pa.table({'x': pa.array([1.0, 2.0]), 'labels': labels}),\n"
        "                            pa.table({'y': pa.array([3.0, 4.0])}), 'm', (1, 2)))\n"
        "asyncio.run(batcher.flush())\n"
        "(body, headers), = stream.published\n"
        "table, dropped = drop_unwritable(storage_order(expand_runs(pa.ipc.open_stream(body).read_all())))\n"
        "print(sorted(objects.stored), 'Railyard-Segment' in headers, dropped, table.column('in.x').to_pylist(),\n"
        "      table.column('metadata.dropped').to_pylist(), batcher.lost_rows, batcher.held_rows, flush=True)\n"
        "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] False ['in.labels'] [1.0, 2.0] [['in.labels'], ['in.labels']] 0 0"
