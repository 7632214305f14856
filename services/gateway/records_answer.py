"""The seed's records answer (`[{time, in, out, check_failures, metadata}, ...]`) as JSON bytes, written from numpy
for numeric columns: building a dict per row and a Python float per value was most of a 1,000-row answer's time in
the gateway. Each numeric column is serialized in one orjson call and cut at the row boundaries; the answer is
then one `join` of a list in which the rows' pieces alternate with the constant parts (keys, brackets, time,
check_failures, metadata), so no row is assembled on its own. The bytes are the same as
`orjson.dumps(seed_records(...), option=NUMPY)` (a unit test compares them); columns of other types (strings,
nulls, variable-size lists) take that path. float32 and float16 values print in their shortest form that reads back
as the same float32 (orjson's numpy output, `0.1`, not the exact double `0.10000000149011612`), as a JSON log page
prints them (`shared.logrecords.page_values`): an answer and its logged rows read alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from shared.errors import InvalidRequest

NUMPY = orjson.OPT_SERIALIZE_NUMPY
FEW_ROWS = 16


def _json_type(kind: pa.DataType) -> bool:
    """Does a column of this Arrow type become JSON (numbers, booleans, strings, nulls, lists and objects)?"""
    if pa.types.is_dictionary(kind):
        return _json_type(kind.value_type)
    if pa.types.is_map(kind):
        return _json_type(kind.key_type) and _json_type(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind) or \
            pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return _json_type(kind.value_type)
    if pa.types.is_struct(kind):
        return all(_json_type(field.type) for field in kind)
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind) or
            pa.types.is_null(kind))


def check_json_answerable(inputs: pa.Table, arrow_answer: str) -> None:
    """InvalidRequest naming the first input column the records answer (which echoes the inputs) cannot write as
    JSON: decimals, bytes, timestamps, durations, unions. Checked before the inference runs; an Arrow answer
    carries any type."""
    for field in inputs.schema:
        if not _json_type(field.type):
            raise InvalidRequest(f"column {field.name!r}: {field.type} values have no JSON form for the records "
                                 "answer; send numbers, booleans or strings, or ask for Arrow "
                                 f"(Accept: {arrow_answer})")


def _between_brackets(text: bytes) -> list[memoryview]:
    """The rows of a 2-D numeric matrix's JSON (`[[1.0,2.0],[3.0,4.0]]`) without their brackets, as views of
    the text: numbers hold no `]`, so each row ends at one (numpy finds them; bytes.split(b"],[") took twice as
    long as the rest of the cut)."""
    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == ord("]"))[:-1]
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 2, ends[:-1] + 3  # past `[[`, then past each `],[`
    view = memoryview(text)
    return [view[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]


def _rows_json(column: pa.ChunkedArray | pa.Array) -> tuple[bytes, list[bytes] | list[memoryview], bytes] | None:
    """Each row's value as JSON, for numeric scalars and fixed-size tensors without nulls, as (opening, pieces,
    closing): a row is `opening + piece + closing`, so the brackets every row shares are written with the
    constant parts. None for other columns."""
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
    if pa.types.is_floating(values.type):  # float32 (and float16) in their shortest form, as log pages print them
        numbers = values.to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(values.type):
        numbers = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    else:
        return None
    matrix = numbers.reshape(shape)
    if matrix.ndim == 1:  # one call, then cut at the commas (numbers hold none)
        return b"", orjson.dumps(matrix, option=NUMPY)[1:-1].split(b",") if len(matrix) else [], b""
    if matrix.ndim == 2 and matrix.shape[1] == 1:  # a value a row (a model's score): the flat list cut at its commas
        return b"[", orjson.dumps(matrix.reshape(-1), option=NUMPY)[1:-1].split(b",") if len(matrix) else [], b"]"
    if matrix.ndim == 2 and matrix.shape[0] and matrix.shape[1]:  # one call, then cut between the rows' brackets
        return b"[", _between_brackets(orjson.dumps(matrix, option=NUMPY)), b"]"
    return b"", [orjson.dumps(row, option=NUMPY) for row in matrix], b""


def _object_slots(table: pa.Table, constants: list[bytes], slots: list[list[bytes] | list[memoryview]]) -> bool:
    """Append `{"name":value,...}` for every row to the row template: its constant parts to `constants` (the
    last one left open for the next to extend), each column's pieces to `slots`. False when a column is not
    numeric."""
    constants[-1] += b"{"
    for index, name in enumerate(table.column_names):
        rows = _rows_json(table.column(name))
        if rows is None or len(rows[1]) != table.num_rows:
            return False
        opening, pieces, closing = rows
        constants[-1] += (b"," if index else b"") + orjson.dumps(name) + b":" + opening
        constants.append(closing)
        slots.append(pieces)
    constants[-1] += b"}"
    return True


def seed_records_json(inputs: pa.Table, outputs: pa.Table, meta: dict[str, Any], at_ms: int,
                      slow: Callable[[pa.Table, pa.Table, dict[str, Any], int], list[dict[str, Any]]]) -> bytes:
    """The answer's bytes; `slow` is the general path (services/gateway/inference.py: seed_records), also taken
    for a few rows, where numpy's set-up costs more than it saves."""
    rows = inputs.num_rows
    if rows < FEW_ROWS or outputs.num_rows != rows:
        return orjson.dumps(slow(inputs, outputs, meta, at_ms), option=NUMPY)
    constants, slots = [b'{"time":' + orjson.dumps(at_ms) + b',"in":'], []
    if not _object_slots(inputs, constants, slots):
        return orjson.dumps(slow(inputs, outputs, meta, at_ms), option=NUMPY)
    constants[-1] += b',"out":'
    if not _object_slots(outputs, constants, slots):
        return orjson.dumps(slow(inputs, outputs, meta, at_ms), option=NUMPY)
    metadata = orjson.dumps({"last_model": meta.get("last_model", ""),
                             "pipeline_version": meta.get("pipeline_version", ""), "elapsed": meta.get("elapsed", [])})
    constants[-1] += b',"check_failures":[],"metadata":' + metadata + b"}"
    if not slots:  # no columns at all: every row is the same
        return b"[" + b",".join([constants[0]] * rows) + b"]"
    # one row is constants[0], slots[0][i], constants[1], ..., slots[-1][i], constants[-1]; the rows' last and
    # first constants meet, joined by the comma between rows
    last = constants.pop()
    constants[0] = last + b"," + constants[0]
    width = len(constants) + len(slots)
    parts: list[bytes | memoryview | None] = [None] * width
    parts[0::2] = constants
    parts = parts * rows
    for index, pieces in enumerate(slots):
        parts[2 * index + 1::width] = pieces
    parts[0] = b"[" + parts[0][len(last) + 1:]  # the first row has no row before it
    parts.append(last + b"]")
    return b"".join(parts)  # type: ignore[arg-type]
