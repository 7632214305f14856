"""Dictionaries inside struct, list and map columns (shared/logrecords.py `_named_nested`, `named_dictionaries`,
`drop_oversized`; services/engine/logbatcher.py `_split`). Since session 34 a row counts the dictionary value it
names, also below the top (`row_sizes`), but only top-level dictionary columns were pruned: a nested dictionary went
whole with every slice of its batch and with every row that lost its column for size. So a struct input naming a
2 MiB value kept those 2 MiB in every payload after drop_oversized nulled it, and a batch of small rows whose struct's
dictionary alone was above the bus limit lost every row. Both paths run only when a row or a payload is over its
limit. drop_oversized also set a column it nulled by name alone, losing its field's metadata."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from services.engine.logbatcher import LogBatcher
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import InferenceRecord, build_batch, drop_oversized, named_dictionaries
from shared.settings import LogSettings
from tests.unit.test_log_batcher import DEPLOYMENT, RefusingStream

BIG = "x" * (2 << 20)


def _tags(values: list[str | None]) -> pa.DictionaryArray:
    return pa.array(values).dictionary_encode()


def test_a_row_naming_a_large_nested_value_loses_its_column_and_the_value_leaves_the_payload():
    tags = _tags(["small", BIG, "small", "other"])
    meta = pa.StructArray.from_arrays([tags, pa.array([1, 2, 3, 4])], names=["tag", "n"])
    inputs = pa.table({"meta": meta, "x": tensor_array(np.ones((4, 2), np.float32))})
    table = build_batch([InferenceRecord(1, inputs, pa.table({"y": pa.array([1.0, 2.0, 3.0, 4.0])}), "m", (1, 2))],
                        "v")
    kept = drop_oversized(table, 1 << 20)
    assert kept.column("metadata.dropped").to_pylist() == [[], ["in.meta"], [], []]
    assert kept.column("in.meta").to_pylist() == [{"tag": "small", "n": 1}, None, {"tag": "small", "n": 3},
                                                  {"tag": "other", "n": 4}]
    assert kept.column("in.meta").type == table.column("in.meta").type
    assert kept.column("in.meta").chunk(0).field(0).dictionary.to_pylist() == ["small", "other"]
    assert len(to_ipc_stream(kept)) < 64 * 1024  # was: 2 MiB, in every slice of the batch


def test_a_column_that_loses_rows_keeps_its_fields_metadata_and_becomes_nullable():
    field = pa.field("in.tag", pa.string(), nullable=False, metadata={b"unit": b"label"})
    schema = pa.schema([pa.field("time", pa.int64()), field])
    table = pa.table({"time": [1, 2], "in.tag": ["a", BIG]}, schema=schema)
    kept = drop_oversized(table, 1 << 20)
    assert kept.column("in.tag").to_pylist() == ["a", None]
    assert kept.schema.field("in.tag").metadata == {b"unit": b"label"}  # was: None
    assert kept.schema.field("in.tag").nullable  # a null in a non-nullable field: Parquet's writer refuses it
    assert kept.schema.field("time") == schema.field("time")


def _nested_columns(tags: pa.DictionaryArray) -> dict[str, pa.Array]:
    n = len(tags)
    offsets = pa.array(range(0, n + 1, 2), pa.int32())
    return {
        "struct": pa.StructArray.from_arrays([tags, pa.array(range(n))], names=["tag", "n"],
                                             mask=pa.array([i % 7 == 3 for i in range(n)])),
        "list": pa.ListArray.from_arrays(offsets, tags, mask=pa.array([i % 5 == 4 for i in range(n // 2)])),
        "large_list": pa.LargeListArray.from_arrays(pa.array(range(0, n + 1, 2), pa.int64()), tags),
        "fixed_size_list": pa.FixedSizeListArray.from_arrays(tags, 2),
        "map": pa.MapArray.from_arrays(offsets, pa.array([f"k{i}" for i in range(n)]), tags),
        "struct_of_list": pa.StructArray.from_arrays(
            [pa.ListArray.from_arrays(offsets, tags), pa.array(range(n // 2))], names=["tags", "n"]),
    }


@pytest.mark.parametrize("kind", ["struct", "list", "large_list", "fixed_size_list", "map", "struct_of_list"])
def test_a_slice_keeps_only_the_nested_dictionary_values_its_rows_name(kind):
    tags = _tags([f"{i:02d}" + "v" * 2000 for i in range(40)])  # 40 distinct values of 2 KB: 80 KB
    column = _nested_columns(tags)[kind]
    table = pa.table({"in.c": column, "time": pa.array(range(len(column)))})
    part = table.slice(3, 4)
    named = named_dictionaries(part)
    assert named.schema == part.schema and named.to_pylist() == part.to_pylist()
    named.validate(full=True)
    assert len(to_ipc_stream(named)) < 20 * 1024 < 64 * 1024 < len(to_ipc_stream(part))  # was: the 80 KB, whole
    assert named_dictionaries(named) is named  # nothing more to leave out: the same table


def test_columns_without_a_dictionary_value_left_out_are_the_same_table():
    tags = _tags(["a", "b"])
    table = pa.table({"in.c": pa.StructArray.from_arrays([tags, pa.array([1, 2])], names=["tag", "n"]),
                      "in.x": pa.array([1.0, 2.0])})
    assert named_dictionaries(table) is table


async def test_a_batch_whose_struct_dictionary_alone_is_above_the_bus_limit_is_cut_into_slices_that_fit():
    # each row small (one 8 KB value in a struct), the struct's dictionary (200 distinct values, 1.6 MB) above the
    # bus limit and sent whole with every slice: all 200 rows were lost (lost_rows 200) while only top-level
    # dictionaries were pruned
    stream = RefusingStream()
    stream.full = False
    batcher = LogBatcher(stream, DEPLOYMENT, LogSettings(engine_flush_ms=1), 1024 * 1024)
    tags = [f"{i:03d}" + "x" * 8192 for i in range(200)]
    meta = pa.StructArray.from_arrays([_tags(tags), pa.array(range(200))], names=["tag", "n"])
    batcher.add(InferenceRecord(0, pa.table({"meta": meta}),
                                pa.table({"y": pa.array(np.arange(200, dtype=np.float64))}), "m", (1, 2)))
    await asyncio.wait_for(batcher.flush(), 30)
    assert (batcher.lost_rows, batcher.lost_records, batcher.held_rows) == (0, 0, 0)
    assert stream.published and all(len(payload) <= batcher.max_bytes for payload, _ in stream.published)
    tables = [pa.ipc.open_stream(payload).read_all() for payload, _ in stream.published]
    assert [row["tag"] for table in tables for row in table.column("in.meta").to_pylist()] == tags  # once, in order
    assert [y for table in tables for y in table.column("out.y").to_pylist()] == list(map(float, range(200)))
