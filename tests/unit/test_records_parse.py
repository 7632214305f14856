"""Records bodies read by simdjson (services/gateway/records_parse.py) give the table the general path
(shared.arrow_codec.records_json_to_table) gives, with the same types, for every body it takes; every other body
goes to that path and gets its exact answer or error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.gateway.records_parse import FAST_BODY, read_records, read_records_fast
from shared.arrow_codec import records_json_to_table
from shared.errors import RailyardError

RNG = np.random.default_rng(11)
ROWS = 200  # enough rows for every body to pass FAST_BODY


def _body(rows: list) -> bytes:
    return json.dumps(rows).encode()


def _floats() -> list:
    return RNG.normal(size=(ROWS, 29)).astype(np.float32).tolist()


def _outcome(read, body: bytes):
    try:
        table = read(body)
    except (RailyardError, OverflowError) as exc:  # OverflowError: an int scalar above int64, as before
        return type(exc), str(exc)
    return table.schema, repr(table.to_pydict())  # repr: NaN is not equal to itself


def _same(body: bytes) -> None:
    assert len(body) > FAST_BODY
    assert _outcome(read_records, body) == _outcome(records_json_to_table, body)


TAKEN = {
    "float tensors": [{"tensor": row} for row in _floats()],
    "int tensors": [{"t": list(range(i, i + 20))} for i in range(ROWS)],
    "ints then floats in a later row": [{"t": [i] * 20 if i < 30 else [i + 0.5] * 20} for i in range(ROWS)],
    "floats then ints in a later row": [{"t": [i + 0.5] * 20 if i < 3 else [i] * 20} for i in range(ROWS)],
    "ints and floats in one row": [{"t": [1, 2.5] * 10} for _ in range(ROWS)],
    "scalars and tensors, keys in other orders": [
        {"a": i, "t": row, "b": i + 0.5} if i % 2 else {"b": float(i), "t": row, "a": i}
        for i, row in enumerate(_floats())],
    "int scalars then a float": [{"x": i, "y": [i] * 30} for i in range(ROWS - 1)] + [{"x": 1.5, "y": [0] * 30}],
    "exponents, negative zero, big ints": [{"t": [1e-05, -0.0, 1e300, 2.5e-300, 9007199254740993, -(2**63)] * 5}
                                           for _ in range(ROWS)],
    "one row, a wide tensor": [{"t": list(np.linspace(0, 1, 2000))}],
    "odd keys": [{"we\"ird \\ ключ": row} for row in _floats()],
}


@pytest.mark.parametrize("name", TAKEN)
def test_numeric_bodies_are_read_alike(name):
    body = _body(TAKEN[name])
    assert read_records_fast(body) is not None, "the fast path should take this body"
    _same(body)


def test_float_and_int_types_follow_the_values():
    assert str(read_records(_body(TAKEN["int tensors"])).schema.field("t").type.value_type) == "int64"
    assert str(read_records(_body(TAKEN["ints then floats in a later row"])).schema.field("t").type.value_type) \
        == "double"
    table = read_records(_body(TAKEN["int scalars then a float"]))
    assert str(table.schema.field("x").type) == "double" and str(table.schema.field("y").type.value_type) == "int64"


LEFT = {
    "nested tensors": [{"img": [[1.0, 2.0], [3.0, 4.0]]} for _ in range(ROWS * 5)],
    "ragged nested": [{"t": [[1.0], [2.0, 3.0]] if i == 7 else [[1.0, 2.0], [3.0]]} for i in range(ROWS * 5)],
    "a list in one row": [{"t": [1.0] * 20 if i != 5 else [1.0] * 19 + [[1.0]]} for i in range(ROWS)],
    "ragged": [{"t": [1.0] * (20 + (i == 9))} for i in range(ROWS)],
    "empty tensors": [{"t": []} for _ in range(ROWS * 3)],
    "strings": [{"t": [1.0] * 20, "label": "a[b"} for _ in range(ROWS)],
    "a `[` in a key": [{"t[0]": [1.0] * 20} for _ in range(ROWS)],
    "booleans": [{"t": [1.0] * 19 + [True]} for _ in range(ROWS)],
    "boolean scalars": [{"t": [1.0] * 20, "f": True} for _ in range(ROWS)],
    "nulls": [{"t": [1.0] * 19 + [None]} for _ in range(ROWS)],
    "null scalars": [{"t": [1.0] * 20, "x": None} for _ in range(ROWS)],
    "a missing key": [{"a": 1.0, "t": [1.0] * 20} for _ in range(ROWS - 1)] + [{"t": [1.0] * 20}],
    "an extra key": [{"t": [1.0] * 20} for _ in range(ROWS - 1)] + [{"t": [1.0] * 20, "z": 1}],
    "another key": [{"t": [1.0] * 20} for _ in range(ROWS - 1)] + [{"u": [1.0] * 20}],
    "tensor then scalar": [{"t": [1.0] * 20} for _ in range(ROWS - 1)] + [{"t": 1.0}],
    "scalar then tensor": [{"t": 1.0} for _ in range(ROWS * 5)] + [{"t": [1.0] * 20}],
    "an object value": [{"t": {"x": 1.0}} for _ in range(ROWS * 5)],
    "uint64 beyond int64": [{"t": [2**64 - 1] + [1] * 20} for _ in range(ROWS)],
    "uint64 scalar": [{"t": [1] * 20, "x": 2**63} for _ in range(ROWS)],
    "a record, not a list": {"t": list(range(2000))},
    "not records": [[1.0] * 20 for _ in range(ROWS)],
    "a list among the rows": [{"t": [1.0] * 20} for _ in range(ROWS - 1)] + [[1.0] * 20],
    "ints, then a string in a later row": [{"t": [1] * 20} for _ in range(ROWS - 1)] + [{"t": [1] * 19 + ["x"]}],
    "floats, then empty in a later row": [{"t": [1.5] * 20} for _ in range(ROWS - 1)] + [{"t": []}],
}


@pytest.mark.parametrize("name", LEFT)
def test_other_bodies_go_to_the_general_path(name):
    body = _body(LEFT[name])
    assert read_records_fast(body) is None
    _same(body)


RAW = {
    "a repeated key": b"[" + b",".join([b'{"t": [1.0, 2.0], "t": [3.0, 4.0]}'] * 400) + b"]",
    "huge ints": b"[" + b",".join([b'{"t": [1, 100000000000000000000000000000]}'] * 400) + b"]",
    "out of range float": b"[" + b",".join([b'{"t": [1.0, 1e400]}'] * 400) + b"]",
    "NaN": b"[" + b",".join([b'{"t": [1.0, NaN]}'] * 400) + b"]",
    "truncated": _body(TAKEN["float tensors"])[:-3],
    "trailing garbage": _body(TAKEN["float tensors"]) + b"x",
    "invalid UTF-8 in a key": b"[" + b",".join([b'{"t\xff": [1.0, 2.0]}'] * 400) + b"]",
    "a lone surrogate in a key": b"[" + b",".join([b'{"t\\ud800": [1.0, 2.0]}'] * 400) + b"]",
}


@pytest.mark.parametrize("name", RAW)
def test_odd_bodies_are_answered_as_before(name):
    body = RAW[name]
    assert read_records_fast(body) is None
    _same(body)


def test_one_kept_parser_reads_every_body_and_a_live_document_gets_a_new_one(monkeypatch):
    # a fresh simdjson parser per request allocated ~15x the body, handed back to the kernel each time (oip1)
    import simdjson

    from services.gateway import json_fast

    made = []

    class Counted(simdjson.Parser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(simdjson, "Parser", Counted)
    monkeypatch.setattr(json_fast, "_parser", [])
    body = _body([{"x": row, "y": 1.5} for row in _floats()])
    expected = records_json_to_table(body)
    for _ in range(3):
        assert read_records_fast(body).equals(expected)
    assert len(made) == 1
    held = json_fast.parse(b'{"a": [1, 2]}')["a"]  # an Array of the kept parser's document (an OIP request's)
    assert read_records_fast(body).equals(expected) and list(held) == [1, 2]
    assert len(made) == 2


def test_brackets_are_counted_without_an_array_the_bodys_size_and_stop_past_the_limit(monkeypatch):
    from services.gateway import json_fast

    body = _body([{"x": row} for row in _floats()])
    assert json_fast.count_brackets(body, 10**9) == body.count(b"[") == 1 + ROWS
    assert json_fast.count_brackets(body, 1 + ROWS) == 1 + ROWS
    assert json_fast.count_brackets(body, 40) == 41
    assert json_fast.count_brackets(b"[" * 1000, 2) == 3 and json_fast.count_brackets(b"{}", 2) == 0
    sizes = []  # of the bool arrays numpy counts `[` in
    count_nonzero = np.count_nonzero
    monkeypatch.setattr(np, "count_nonzero", lambda array: sizes.append(array.size) or count_nonzero(array))
    big = _body([{"x": row} for row in RNG.normal(size=(2000, 29)).tolist()])
    assert read_records_fast(big) is not None
    assert sizes and max(sizes) <= 1 << 16 < len(big)


def test_a_byte_order_mark_is_refused_as_the_general_path_refuses_it():
    """simdjson skips a UTF-8 byte order mark, orjson refuses it (RFC 8259 section 8.1): a body past FAST_BODY was
    read where a smaller one was a 400."""
    body = b"\xef\xbb\xbf" + _body([{"tensor": [0.5] * 29}] * ROWS)
    assert read_records_fast(body) is None
    _same(body)
    assert _outcome(read_records, body)[0] != "table"
