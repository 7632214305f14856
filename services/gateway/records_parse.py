"""pandas-records request bodies read by simdjson straight into numpy columns, for the common shape: a list of
row objects whose columns are flat numeric tensors or numeric scalars. orjson made a Python float per value
(29,000 for a 1,000-row ccfraud request) that numpy then read and the gateway freed; simdjson writes each row's
tensor into a buffer of doubles or 64-bit integers. The table is the one `shared.arrow_codec.records_json_to_table`
builds (the same types by the same rules: a column is float64 when any of its values is written as a float,
int64 otherwise); any other body — nested tensors, strings, booleans, nulls, rows with other keys, numbers out of
range, invalid JSON — goes to that function, which reads it and gives its exact error
(`tests/unit/test_records_parse.py` compares both on every kind)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from services.gateway.json_fast import count_brackets, parse
from shared.arrow_codec import MAX_COLUMNS, _numeric_column, records_json_to_table, tensor_array, uint64_range

# below it orjson's own path is quicker (the parser's set-up); 16 ccfraud rows are ~9.8 KB
FAST_BODY = 4096


def _tensor_column(values: list) -> pa.Array | None:
    """A column of flat numeric arrays as one fixed-size-list array: int64 when every value is an integer,
    float64 when any is a float (numpy's reading of the same lists); None when the rows differ in length or
    hold anything but numbers."""
    import simdjson

    if not all(type(value) is simdjson.Array for value in values):
        return None
    try:
        buffers = [value.as_buffer(of_type="i") for value in values]
        dtype = np.int64
    except TypeError:  # a float (or a non-number, which the float pass refuses too)
        buffers = [value.as_buffer(of_type="d") for value in values]
        dtype = np.float64
    sizes = {buffer.size for buffer in buffers}
    if len(sizes) != 1 or not (size := sizes.pop()):
        return None  # ragged or empty: the general path names the column
    matrix = np.frombuffer(b"".join(buffers), dtype).reshape(len(values), size // 8)
    if dtype is np.float64 and uint64_range(matrix):
        return None  # an int past int64 (simdjson's uint64, refused) or a float as large: the general path says which
    return tensor_array(matrix)


def _only_tensor_column(document, name: str) -> pa.Array | None:
    """`_tensor_column` of the rows' `name` for a body whose rows hold that one key (the common body: one tensor
    a row), in one pass over the rows instead of one per check: every row an object of that key alone, its value
    an array of the first one's length, read as 64-bit integers while every value is one, else again as doubles.
    None (or KeyError, TypeError) for anything else, as the general loop would."""
    import simdjson

    obj, arr = simdjson.Object, simdjson.Array
    for kind, dtype in (("i", np.int64), ("d", np.float64)):
        buffers, size = [], None
        try:
            for row in document:
                if type(row) is not obj or len(row) != 1:
                    return None
                value = row[name]  # KeyError: a row of another key
                if type(value) is not arr:
                    return None
                buffer = value.as_buffer(of_type=kind)
                if size is None:
                    size = buffer.size
                elif buffer.size != size:
                    return None  # ragged: the general path names the column
                buffers.append(buffer)
        except TypeError:  # a float (then the double pass), or a non-number (which the double pass refuses too)
            if dtype is np.float64:
                raise
            continue
        if not size:
            return None
        matrix = np.frombuffer(b"".join(buffers), dtype).reshape(len(buffers), size // 8)
        if dtype is np.float64 and uint64_range(matrix):
            return None  # an int past int64 or a float as large: the general path says which
        return tensor_array(matrix)
    return None


def read_records_fast(body: bytes) -> pa.Table | None:
    """The table for a body of flat numeric columns, or None for anything else (then the general path reads
    it). The document is the kept parser's (`json_fast.parse`: a fresh parser per call allocated ~15x the body),
    and nothing of it outlives this call."""
    import simdjson

    if body.startswith(b"\xef\xbb\xbf"):  # simdjson skips a byte order mark, orjson (JSON's RFC 8259) refuses it
        return None
    try:
        document = parse(body)
        if type(document) is not simdjson.Array or not len(document):
            return None
        first = document[0]
        if type(first) is simdjson.Object and len(first) == 1:
            (name,) = first.keys()
            if type(first[name]) is simdjson.Array:  # one tensor a row: one pass (~1.28 -> ~1.10 ms for 1,000 rows)
                array = _only_tensor_column(document, name)
                expected = 1 + len(document)  # as below
                if array is None or count_brackets(body, expected) != expected:
                    return None
                return pa.Table.from_arrays([array], names=[name])
        rows = list(document)
        if not all(type(row) is simdjson.Object for row in rows):
            return None
        columns = list(rows[0].keys())
        width = len(columns)
        if not width or width > MAX_COLUMNS:
            return None  # records of no keys (no rows) or too many: the general path refuses them by name
        if len(set(columns)) != width or not all(len(row) == width for row in rows):
            return None  # a repeated key, or rows with other keys: the general path says which
        arrays, tensors = [], 0
        for name in columns:
            values = [row[name] for row in rows]  # KeyError: a row without this key
            if type(values[0]) is simdjson.Array:
                array = _tensor_column(values)
                tensors += 1
            elif all(type(value) in (int, float) for value in values):
                array = _numeric_column(values)
            else:
                return None
            if array is None:
                return None
            arrays.append(array)
        # as_buffer flattens nested lists, even ragged ones: a `[` more than one per tensor value (a nested
        # list, or one inside a key) and the general path reads the body instead
        expected = 1 + tensors * len(rows)
        if count_brackets(body, expected) != expected:
            return None
        return pa.Table.from_arrays(arrays, names=columns)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError):  # UnicodeDecodeError is a ValueError
        return None


def read_records(body: bytes) -> pa.Table:
    """A pandas-records body as a table, validated as `records_json_to_table` does (its errors, its types)."""
    if len(body) > FAST_BODY:
        table = read_records_fast(body)
        if table is not None:
            return table
    return records_json_to_table(body)
