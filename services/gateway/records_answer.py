"""The seed's records answer (`[{time, in, out, check_failures, metadata}, ...]`) as JSON bytes, written row by
row from numpy for numeric columns: building a dict per row and a Python float per value was most of a 1,000-row
answer's time in the gateway. The bytes are the same as `orjson.dumps(seed_records(...))` (a unit test compares
them); columns of other types (strings, nulls, variable-size lists) take that path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

NUMPY = orjson.OPT_SERIALIZE_NUMPY
FEW_ROWS = 16


def _rows_json(column: pa.ChunkedArray | pa.Array) -> list[bytes] | None:
    """Each row's value as JSON, for numeric scalars and fixed-size tensors without nulls; None otherwise."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        return None
    shape = [len(array)]
    values = array
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()
        if values.null_count:
            return None
    if pa.types.is_floating(values.type):
        numbers = values.to_numpy(zero_copy_only=False).astype(np.float64)  # as Python floats print
    elif pa.types.is_integer(values.type):
        numbers = values.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        return None
    matrix = numbers.reshape(shape)
    if matrix.ndim == 1:  # one call, then cut at the commas (numbers hold none)
        return orjson.dumps(matrix, option=NUMPY)[1:-1].split(b",") if len(matrix) else []
    if matrix.ndim == 2 and matrix.shape[0] and matrix.shape[1]:  # one call, then cut between the rows' brackets
        rows = orjson.dumps(matrix, option=NUMPY)[2:-2].split(b"],[")
        return [b"[" + row + b"]" for row in rows]
    return [orjson.dumps(row, option=NUMPY) for row in matrix]


def _object_rows(table: pa.Table) -> list[bytes] | None:
    """`{"name":value,...}` per row, or None when a column is not numeric."""
    columns = []
    for name in table.column_names:
        rows = _rows_json(table.column(name))
        if rows is None:
            return None
        columns.append((orjson.dumps(name) + b":", rows))
    if not columns:
        return [b"{}"] * table.num_rows
    if len(columns) == 1:
        key, rows = columns[0]
        return [b"{" + key + row + b"}" for row in rows]
    return [b"{" + b",".join(key + rows[i] for key, rows in columns) + b"}" for i in range(table.num_rows)]


def seed_records_json(inputs: pa.Table, outputs: pa.Table, meta: dict[str, Any], at_ms: int,
                      slow: Callable[[pa.Table, pa.Table, dict[str, Any], int], list[dict[str, Any]]]) -> bytes:
    """The answer's bytes; `slow` is the general path (services/gateway/inference.py: seed_records), also taken
    for a few rows, where numpy's set-up costs more than it saves."""
    if inputs.num_rows < FEW_ROWS:
        return orjson.dumps(slow(inputs, outputs, meta, at_ms))
    ins, outs = _object_rows(inputs), _object_rows(outputs)
    if ins is None or outs is None or len(ins) != len(outs):
        return orjson.dumps(slow(inputs, outputs, meta, at_ms))
    metadata = orjson.dumps({"last_model": meta.get("last_model", ""),
                             "pipeline_version": meta.get("pipeline_version", ""), "elapsed": meta.get("elapsed", [])})
    head = b'{"time":' + orjson.dumps(at_ms) + b',"in":'
    tail = b',"check_failures":[],"metadata":' + metadata + b"}"
    return b"[" + b",".join(head + i + b',"out":' + o + tail for i, o in zip(ins, outs, strict=True)) + b"]"
