"""Property tests of the data plane's parsers: whatever bytes a client sends as an inference body, each reader
either returns a table or raises the typed `InvalidRequest` (413 `PayloadTooLarge` for an Arrow bomb) — never
another exception, which the gateway would answer as a 500. Bodies are arbitrary bytes and structure-aware ones
(JSON trees close to valid records and OIP requests; Arrow IPC streams and files with odd schemas, cut or
corrupted). Where a fast path exists beside the general one, both must give the same answer.

The readers: pandas-records (services/gateway/records_parse.py, shared/arrow_codec.py records_json_to_table),
Arrow IPC (shared/arrow_codec.py from_ipc, as services/gateway/inference.py reads a body, then as the engine
turns a column into a model's tensor), OIP v2 JSON and JSON + binary (services/gateway/oip.py parse_request and
encode_response). `make fuzz-api` (docs/testing.md) covers the JSON command bodies; this file the data plane.
Every case the search found is kept below as an explicit example (REGRESSIONS)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import Request

from services.engine.runtimes import column_to_tensor
from services.gateway import oip
from services.gateway.inference import _read_body, seed_records
from services.gateway.monitoring import _metadata, _text
from services.gateway.records_answer import check_json_answerable, seed_records_json
from services.gateway.records_parse import FAST_BODY, read_records, read_records_fast
from shared.arrow_codec import NO_ROWS, from_ipc, records_json_to_table, to_ipc_file, to_ipc_stream
from shared.errors import InvalidRequest, PayloadTooLarge
from tests.unit.test_oip_parse import _general

# bounded: the whole file runs in a few seconds; a parse slower than 3 s is a finding too. A deeper search:
# RAILYARD_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/unit/test_data_plane_fuzz.py
FUZZ = settings(max_examples=int(os.environ.get("RAILYARD_FUZZ_EXAMPLES", "150")), deadline=3000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_BODY = 1 << 20
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _outcome(read, *args):
    """("table", schema, values) or ("error", message); any other exception fails the test."""
    try:
        table = read(*args)
    except (InvalidRequest, PayloadTooLarge) as exc:
        return "error", exc.msg
    if isinstance(table, tuple):  # parse_request: (request, table)
        table = table[1]
    assert isinstance(table, pa.Table)
    return "table", table.schema, repr(table.to_pydict())  # repr: NaN is not equal to itself


# --- JSON trees close to the bodies the readers take -------------------------------------------------------------

BIG = 10**400
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**64 - 1, 2**70, BIG, -BIG, 0, -0.0, 1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=4),
                    st.sampled_from(["\ud800", "[", "null", "", "\x00"]))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                     max_leaves=12)
keys = st.one_of(st.sampled_from(["a", "b", "tensor", "\ud800", "ключ", "", "[", "true"]), st.text(max_size=3))


@st.composite
def tensors(draw):
    """A tensor as nested lists: rectangular or ragged, of one element kind or mixed, empty or deep."""
    depth = draw(st.integers(1, 3))
    leaf = draw(st.sampled_from([numbers, st.integers(-5, 5), st.floats(-1e6, 1e6), st.booleans(), scalars]))

    def build(level):
        size = draw(st.integers(0, 3))
        if level == depth:
            return draw(st.lists(leaf, min_size=size, max_size=size))
        return [build(level + 1) for _ in range(size)]

    return build(1)


values = st.one_of(numbers, tensors(), trees)


def _json(value) -> str:
    # allow_nan: NaN and Infinity tokens (json.dumps writes them; the general path reads them)
    return json.dumps(value, allow_nan=True)


@st.composite
def records_bodies(draw) -> bytes:
    """A records body written by hand so a row may repeat a key; padded past FAST_BODY now and then (by
    repeating its rows) so the simdjson reader sees it too."""
    columns = draw(st.lists(keys, min_size=0, max_size=3))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = [(c, draw(values)) for c in columns]
        if draw(st.booleans()) and pairs:  # a repeated key, or a column the others lack
            pairs.append(draw(st.sampled_from([pairs[0], (draw(keys), draw(values))])))
        rows.append("{" + ",".join(f"{_json(k)}:{_json(v)}" for k, v in pairs) + "}")
    if draw(st.booleans()):
        rows = rows * (FAST_BODY // max(1, sum(map(len, rows))) + 1)
    body = "[" + ",".join(rows) + "]"
    return draw(st.sampled_from([body, body[:-1], "{" + body[1:], body.replace("[", "[[", 1)])).encode(
        "utf-8", "surrogatepass")


@st.composite
def numeric_records_bodies(draw) -> bytes:
    """Bodies the simdjson reader takes (flat numeric tensors and scalars), with big and odd numbers, past
    FAST_BODY: its table must be the general path's."""
    width = draw(st.integers(1, 4))
    element = draw(st.sampled_from([st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False,
                                                                                allow_infinity=False), numbers]))
    rows = [{"t": draw(st.lists(element, min_size=width, max_size=width)), "s": draw(numbers)}
            for _ in range(draw(st.integers(1, 4)))]
    body = _json(rows)
    return ("[" + ",".join([body[1:-1]] * (FAST_BODY // (len(body) - 2) + 1)) + "]").encode("utf-8", "surrogatepass")


REGRESSIONS_RECORDS = [
    b'[{"a":1.0},{"a":1' + b"0" * 400 + b"}]",  # an int past a float's range among floats: OverflowError, 500
    b'[{"a":1},{"a":1.5},{"a":1' + b"0" * 400 + b"}]",  # the same, ints first: pyarrow's ArrowInvalid, 500
    b'[{"a":[1.0,1' + b"0" * 400 + b"]}]",  # the same in a tensor (numpy's OverflowError)
    b'[{"a":' + b"[" * 100 + b"1" + b"]" * 100 + b"}]",  # deeper than numpy's 64 dimensions
    b'[{"\xed\xa0\x80":1}]',  # a lone surrogate as a key (CESU bytes)
    b'[{"\\ud800":[1,2]}]',
    # an int in uint64's range in an int column: numpy read it as a float unless the body held `true`, `false` or
    # `null` (anywhere, a key too), so the same column was a table or a 400 by the rest of the body
    b'[{"t":0},{"t":9223372036854775808}]',
    b'[{"t":[0,18446744073709551615]}]',
    # the same past FAST_BODY: simdjson's float pass read the uint64 as a float (a table where the general path
    # refuses)
    b"[" + b",".join([b'{"t":[9223372036854775808,2],"s":3}'] * 200) + b"]",
    b"[" + b",".join([b'{"t":[1,2],"s":9223372036854775808}'] * 200) + b"]",
]


@FUZZ
@given(st.binary(max_size=300))
@example(b"\x00")
@example(b"[" * 100_000)
def test_records_arbitrary_bytes_are_a_table_or_invalid_request(body):
    _outcome(read_records, body)


@FUZZ
@given(records_bodies())
def test_records_json_trees_are_a_table_or_invalid_request_and_both_readers_agree(body):
    assert _outcome(read_records, body) == _outcome(records_json_to_table, body)
    if read_records_fast(body) is not None:
        assert _outcome(read_records_fast, body) == _outcome(records_json_to_table, body)


@FUZZ
@given(numeric_records_bodies())
def test_numeric_records_read_by_simdjson_match_the_general_path(body):
    assert len(body) > FAST_BODY
    assert _outcome(read_records, body) == _outcome(records_json_to_table, body)


def test_a_float_column_takes_an_int_in_uint64s_range_whichever_reader():
    """A column with a float is float64, its ints too: pyarrow read an int past int64 among floats as an error,
    numpy as a float, so the answer depended on whether the body held `true` somewhere (found by the search)."""
    for body in (b'[{"a":0.0,"true":0},{"a":9223372036854775808,"true":0}]', b'[{"a":0.0},{"a":9223372036854775808}]'):
        assert records_json_to_table(body).column("a").to_pylist() == [0.0, 2.0**63]
        assert _outcome(read_records_fast, body) == _outcome(records_json_to_table, body)


@pytest.mark.parametrize("body", REGRESSIONS_RECORDS, ids=range(len(REGRESSIONS_RECORDS)))
def test_records_found_cases_are_invalid_requests(body):
    assert _outcome(read_records, body)[0] == "error"
    assert _outcome(records_json_to_table, body)[0] == "error"


# --- OIP v2: JSON and JSON + binary tensors ----------------------------------------------------------------------

DATATYPES = [*oip.DATATYPES, "BYTES", "fp32", "", None, ["FP32"], {"a": 1}, 5]
shapes = st.one_of(st.lists(st.one_of(st.integers(-2, 6), st.sampled_from([2**32, 2**62, 2**63, 0])),
                            max_size=4),
                   st.lists(st.just(1), min_size=30, max_size=70), trees)


@st.composite
def oip_bodies(draw) -> tuple[bytes, str | None]:
    """(body, Inference-Header-Content-Length): inputs whose name, shape, datatype, data and binary sizes are
    right or nearly so; outputs and parameters of any shape; a binary tail of any length."""
    inputs = []
    for index in range(draw(st.integers(0, 3))):
        shape = draw(st.one_of(st.just([2, 3]), st.just([1]), st.just([0, 2]), shapes))
        count = math.prod(shape) if isinstance(shape, list) and all(type(d) is int and 0 <= d < 50
                                                                      for d in shape) else 3
        tensor = {"name": draw(st.one_of(st.just(f"in{index}"), st.just("in0"), trees)),
                  "shape": shape, "datatype": draw(st.sampled_from(DATATYPES))}
        data = draw(st.one_of(st.lists(st.floats(-10, 10), min_size=count, max_size=count),
                              st.lists(numbers, min_size=count, max_size=count), tensors(), trees))
        if draw(st.booleans()):
            tensor["data"] = data
        if draw(st.booleans()):
            tensor["parameters"] = draw(st.one_of(
                st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-4, 64), st.sampled_from(
                    [2**63, 1.5, True, "8", None]))}), trees))
        if draw(st.booleans()):  # an odd key
            tensor[draw(st.text(max_size=3))] = draw(trees)
        inputs.append(tensor)
    request = {"inputs": draw(st.sampled_from([inputs, inputs, {"a": inputs}, None]))}
    for key in ("outputs", "parameters", "id"):
        if draw(st.booleans()):
            request[key] = draw(st.one_of(trees, st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["y", "x", 5]), "parameters": trees}), max_size=2)))
    text = _json(request).encode("utf-8", "surrogatepass")
    binary = draw(st.binary(max_size=64))
    header = draw(st.sampled_from([None, str(len(text)), str(len(text) + 1), "-1", "x", "0", str(2**70)]))
    body = text + binary if header is not None else text
    if draw(st.booleans()):  # past FAST_BODY: the simdjson reader
        body = body.replace(b'"inputs"', b' ' * FAST_BODY + b'"inputs"', 1)
        header = str(int(header) + FAST_BODY) if header and header.isdigit() and int(header) == len(text) else header
    return body, header



def _respond(body, header):
    """parse_request, then encode_response of a model's answer for the request (outputs, parameters, id)."""
    request, table = oip.parse_request(body, header)
    outputs = pa.table({"y": pa.array([0.5] * table.num_rows, pa.float32()),
                        "x": pa.FixedSizeListArray.from_arrays(pa.array([1] * 2 * table.num_rows), 2)})
    answer, headers = oip.encode_response(request, "m", "1", outputs)
    assert isinstance(answer, bytes) and headers["Content-Type"]
    return request, table


REGRESSIONS_OIP = [
    (b'{"inputs":[{"name":["x"],"shape":[1],"datatype":"FP32","data":[1]}]}', None),  # name a list: TypeError
    (b'{"inputs":[{"name":5,"shape":[1],"datatype":"FP32","data":[1]}]}', None),
    (b'{"inputs":[{"name":"x","shape":[1],"datatype":["FP32"],"data":[1]}]}', None),  # unhashable datatype
    (b'{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}', None),  # wraps
    (b'{"inputs":[{"name":"x","shape":[1,0],"datatype":"FP32","data":[]}]}', None),  # ArrowInvalid list size 0
    (b'{"inputs":[{"name":"x","shape":[' + b"1," * 69 + b'1],"datatype":"FP32","data":[1]}]}', None),  # 70 dims
    (b'{"inputs":[{"name":"x","shape":"12","datatype":"FP32","data":[1,2]}]}', None),  # a string read as [1, 2]
    (b'{"inputs":[{"name":"x","shape":[1.5],"datatype":"FP32","data":[1]}]}', None),  # 1.5 read as 1
    (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},'
     b'{"name":"x","shape":[1],"datatype":"FP32","data":[2]}]}', None),  # one name twice: duplicate columns
    (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}1234', "-4"),  # header length < 0
    (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}', "999"),  # beyond the body
    # no rows, so no values, but rows too wide: numpy's "array is too big", Arrow's int32 list size (a deep search)
    (b'{"inputs":[{"name":"x","shape":[0,4611686018427387904],"datatype":"FP32","data":[]}]}', None),
    (b'{"inputs":[{"name":"x","shape":[0,4294967296],"datatype":"FP32","parameters":{"binary_data_size":0}}]}', None),
]


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, "0", "1", "10", "-1", "abc"]))
def test_oip_arbitrary_bytes_are_a_table_or_invalid_request(body, header):
    _outcome(_respond, body, header)


@FUZZ
@given(oip_bodies())
def test_oip_requests_are_a_table_or_invalid_request_and_both_readers_agree(case):
    body, header = case
    assert _outcome(_respond, body, header) == _outcome(_general, body, header)


@pytest.mark.parametrize("case", REGRESSIONS_OIP, ids=range(len(REGRESSIONS_OIP)))
def test_oip_found_cases_are_invalid_requests(case):
    assert _outcome(_respond, *case)[0] == "error"
    assert _outcome(_general, *case)[0] == "error"


# --- Arrow IPC ----------------------------------------------------------------------------------------------------

def _arrays(rows: int) -> dict[str, pa.Array]:
    """Columns of the types a client can put in an Arrow body, `rows` long."""
    floats = pa.array(np.linspace(-1, 1, rows))
    return {
        "float64": floats,
        "float16": pa.array(np.arange(rows, dtype=np.float16)),
        "uint64": pa.array(np.full(rows, 2**64 - 1, np.uint64)),
        "bool": pa.array([True] * rows),
        "string": pa.array(["x"] * rows),
        "large_string": pa.array(["x"] * rows, pa.large_string()),
        "binary": pa.array([b"\xff"] * rows),
        "null": pa.nulls(rows),
        "tensor": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(rows * 29, np.float32)), 29),
        "tensor with nulls": pa.array([[1.0, None]] * rows, pa.list_(pa.float64(), 2)),
        "empty tensor": pa.array([[]] * rows, pa.list_(pa.float64(), 0)),
        "ragged list": pa.array([[1.0] * (i % 3) for i in range(rows)], pa.list_(pa.float64())),
        "large list": pa.array([[1.0, 2.0]] * rows, pa.large_list(pa.float64())),
        "list view": pa.array([[1.0]] * rows, pa.list_view(pa.float64())),
        "dictionary": pa.array([1.0] * rows).dictionary_encode(),
        "tensor of dictionary": pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 2 * rows).dictionary_encode(), 2),
        "struct": pa.array([{"x": 1}] * rows),
        "empty struct": pa.array([{}] * rows, pa.struct([])),
        "map": pa.array([[("k", 1)]] * rows, pa.map_(pa.string(), pa.int64())),
        "sparse union": pa.UnionArray.from_sparse(pa.array([0, 1] * (rows // 2) + [0] * (rows % 2), pa.int8()),
                                                  [pa.array([1] * rows), pa.array([1.0] * rows)]),
        "dense union": pa.UnionArray.from_dense(pa.array([0] * rows, pa.int8()), pa.array(range(rows), pa.int32()),
                                                [pa.array([1] * rows), pa.array([1.0])]),
        "tensor of union": pa.FixedSizeListArray.from_arrays(pa.UnionArray.from_sparse(
            pa.array([0] * 2 * rows, pa.int8()), [pa.array([1.0] * 2 * rows)]), 2),
        "decimal": pa.array([1] * rows, pa.decimal128(5, 2)),
        "timestamp": pa.array([2**62] * rows, pa.timestamp("s")),
        "time64": pa.array([1] * rows, pa.time64("ns")),
        "duration": pa.array([5] * rows, pa.duration("s")),
        "run end": pa.RunEndEncodedArray.from_arrays(pa.array([rows] if rows else [], pa.int32()),
                                                     pa.array([1.0] if rows else [], pa.float64())),
    }


KINDS = list(_arrays(1))


@st.composite
def arrow_bodies(draw) -> bytes:
    """An Arrow stream or file of a few odd columns (repeated names, zero rows or columns, several batches),
    now and then cut or with bytes overwritten."""
    rows = draw(st.sampled_from([0, 1, 2, 3]))
    arrays = _arrays(rows)
    chosen = draw(st.lists(st.sampled_from(KINDS), max_size=3))
    names = [draw(st.sampled_from([kind, "tensor", "a", ""])) for kind in chosen]
    table = pa.Table.from_arrays([arrays[kind] for kind in chosen], names=names)
    if draw(st.booleans()) and rows:
        table = pa.concat_tables([table, table])  # two batches
    data = draw(st.sampled_from([to_ipc_stream, to_ipc_file]))(table)
    damage = draw(st.sampled_from(["none", "cut", "bytes"]))
    if damage == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "bytes":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            mutable[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(mutable)
    return data


def _gateway_then_engine(body):
    """The gateway's read of an Arrow body, its re-encoding for the bus, the records answer echoing it (or the
    refusal of a type without a JSON form), then each column as a model input (ccfraud's [N, 29] float tensor and
    a scalar), as the engine's ONNX runtime reads it."""
    table = _read_body(ARROW_STREAM, body, MAX_BODY)
    to_ipc_stream(table)
    try:
        check_json_answerable(table, ARROW_STREAM)
    except InvalidRequest:
        pass
    else:  # a Python step may pass any column: its answer echoes the inputs
        seed_records_json(table, pa.table({"y": pa.array([0.5] * table.num_rows)}), {}, 0, seed_records)
    for index, name in enumerate(table.column_names):
        column_to_tensor(name, table.column(index), ["N", 29], np.float32)
        column_to_tensor(name, table.column(index), ["N"], np.float32)
    return table


def _schema_alone(schema: pa.Schema) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    return sink.getvalue().to_pybytes()


def _byte_set(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes([value]) + data[at + 1:]


def _last_replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    at = data.rindex(old)
    return data[:at] + new + data[at + len(old):]


REGRESSIONS_ARROW = {
    # a column of a sparse or dense union: the engine's to_numpy raised ArrowNotImplementedError (a 500)
    "sparse union": to_ipc_stream(pa.table({"a": _arrays(2)["sparse union"]})),
    "dense union": to_ipc_stream(pa.table({"a": _arrays(2)["dense union"]})),
    "time64": to_ipc_stream(pa.table({"a": _arrays(2)["time64"]})),  # ArrowInvalid in the engine
    "one name twice": to_ipc_stream(pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["a", "a"])),
    "stream cut inside a message": to_ipc_stream(pa.table({"a": [1.0, 2.0]}))[:-9],
    # a file whose footer names a block inside another message: EOFError from the decoded-size check (a 500)
    "file footer block off by a byte": _byte_set(to_ipc_file(pa.table({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]})),
                                                 480, 92),
    # a column name that is not UTF-8: UnicodeDecodeError wherever the gateway or the engine read the names
    "name not UTF-8": to_ipc_stream(pa.table({"abcd": [1.0]})).replace(b"abcd", b"ab\x8ed"),
    # a string offset past its data: read without complaint, then ArrowIndexError (or a bad read) further on
    "offset past the data": _last_replaced(to_ipc_stream(pa.table({"s": ["x", "y"]})),
                                           b"\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00",
                                           b"\x00\x00\x00\x00\x01\x00\x00\x00\xc8\x00\x00\x00"),
}


@FUZZ
@given(st.binary(max_size=400))
@example(b"ARROW1")
@example(b"ARROW1\x00\x00" + b"\xff" * 10 + b"ARROW1")
@example(b"\xff\xff\xff\xff")
def test_arrow_arbitrary_bytes_are_a_table_or_invalid_request(body):
    _outcome(_gateway_then_engine, body)


@FUZZ
@given(arrow_bodies())
def test_arrow_bodies_with_odd_schemas_are_a_table_or_invalid_request(body):
    _outcome(_gateway_then_engine, body)


def test_a_stream_of_a_schema_alone_is_refused_as_no_rows_and_its_answer_still_builds():
    """No batches: a request of no rows, refused as in every format (tests/unit/test_inference_no_rows.py; it was
    answered `[]`). The records answer of such a table still builds: combine_chunks cannot build a dictionary of
    nulls from nothing (ArrowNotImplementedError, a 500 when the records answer echoed the inputs)."""
    body = _schema_alone(pa.schema([("a", pa.dictionary(pa.int32(), pa.null())), ("b", pa.float64())]))
    with pytest.raises(InvalidRequest, match=f"^{NO_ROWS} "):
        _read_body(ARROW_STREAM, body, MAX_BODY)
    table = from_ipc(body)
    check_json_answerable(table, ARROW_STREAM)
    assert seed_records_json(table, pa.table({"y": pa.array([], pa.float64())}), {}, 0, seed_records) == b"[]"


def test_rows_without_columns_are_answered_row_by_row():
    """Arrow carries rows without columns (found by a byte flip in a schema); the records answer zipped no input
    objects with the outputs' (ValueError from zip(strict=True), a 500 when a Python step answered)."""
    body = to_ipc_stream(pa.table({"a": [1, 2, 3]}).select([]))
    table = _read_body(ARROW_STREAM, body, MAX_BODY)
    assert (table.num_rows, table.num_columns) == (3, 0)
    answer = json.loads(seed_records_json(table, pa.table({"y": [0.5] * 3}), {}, 0, seed_records))
    assert [(row["in"], row["out"]) for row in answer] == [({}, {"y": 0.5})] * 3


@pytest.mark.parametrize("kind", ["decimal", "binary", "timestamp", "duration", "sparse union"])
def test_columns_without_a_json_form_are_refused_before_the_records_answer(kind):
    """A Python step passes any column through; the records answer echoes the inputs, and orjson cannot write
    these (TypeError, or OverflowError for a timestamp past year 9999): a 500 after the model had run."""
    table = pa.table({"c": _arrays(2)[kind]})
    with pytest.raises(InvalidRequest, match="no JSON form"):
        check_json_answerable(table, ARROW_STREAM)


@pytest.mark.parametrize("name", REGRESSIONS_ARROW)
def test_arrow_found_cases_are_invalid_requests(name):
    assert _outcome(_gateway_then_engine, REGRESSIONS_ARROW[name])[0] == "error"


def test_a_corrupted_offset_is_refused_when_the_body_is_read():
    """Arrow reads it without complaint; only the full validation at the gateway's edge sees it."""
    body = REGRESSIONS_ARROW["offset past the data"]
    assert pa.ipc.open_stream(body).read_all().num_rows == 2
    with pytest.raises(InvalidRequest, match="not a valid Arrow IPC"):
        _read_body(ARROW_STREAM, body, MAX_BODY)


def test_arrow_random_corruption_of_a_valid_body_is_never_a_server_error():
    """Seeded byte flips across the whole of a stream and a file (hypothesis shrinks toward few positions)."""
    rng = random.Random(7)
    table = pa.table({"tensor": _arrays(3)["tensor"], "s": _arrays(3)["string"]})
    for source in (to_ipc_stream(table), to_ipc_file(table)):
        for _ in range(1000):
            mutable = bytearray(source)
            for _ in range(rng.randint(1, 3)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            _outcome(_gateway_then_engine, bytes(mutable))



# --- multipart: the image routes' form (services/gateway/monitoring.py) --------------------------------------------

def _form_request(body: bytes, content_type: bytes) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "app": object(),
             "headers": [(b"content-type", content_type)]}
    return Request(scope, receive)


async def _image_form(body: bytes, content_type: bytes) -> dict:
    """The image routes' reading of a multipart body up to staging: Starlette's parser (400 HTTPException on a
    malformed body, which the gateway maps to invalid_request), then the `metadata` part as monitoring reads it."""
    form = await _form_request(body, content_type).form(max_files=2, max_fields=4, max_part_size=4096)
    try:
        return _metadata(await _text(form.get("metadata")))
    finally:
        await form.close()


@st.composite
def multipart_bodies(draw) -> tuple[bytes, bytes]:
    boundary = draw(st.sampled_from([b"x", b"----b0undary", b"\xff", b""]))
    body = b""
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from([b"image", b"metadata", b"file", b"other", b"\xff\xfe", b'a"b', b""]))
        disposition = b'form-data; name="' + name + b'"'
        if draw(st.booleans()):
            disposition += b'; filename="' + draw(st.sampled_from([b"i.png", b"\xff", b"../x", b""])) + b'"'
        headers = b"Content-Disposition: " + disposition + b"\r\n"
        if draw(st.booleans()):
            headers += b"Content-Type: " + draw(st.sampled_from([b"text/plain; charset=bogus", b"image/png",
                                                                 b"application/json; charset=utf-16"])) + b"\r\n"
        data = draw(st.one_of(st.sampled_from([b"{}", b'{"deployment_id": 1}', b"[1]", b'{"image": "x"}',
                                               b'{"a":' + b"1" * 300 + b"}", b"\x89PNG\r\n\x1a\n", b"\xff\xfe{",
                                               b"null", b" "]), st.binary(max_size=40)))
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n" + data + b"\r\n"
    if draw(st.booleans()):
        body += b"--" + boundary + b"--\r\n"
    body = draw(st.sampled_from([body, body[:len(body) // 2], body + draw(st.binary(max_size=20))]))
    content_type = draw(st.sampled_from([b"multipart/form-data; boundary=" + boundary, b"multipart/form-data",
                                         b"multipart/form-data; boundary=" + boundary + b"; charset=bogus"]))
    return body, content_type


def _form_outcome(body: bytes, content_type: bytes) -> str:
    try:
        asyncio.run(_image_form(body, content_type))
    except HTTPException as exc:
        assert exc.status_code == 400
        return "400"
    except InvalidRequest:
        return "400"
    return "read"


@FUZZ
@given(multipart_bodies())
@example((b"--x\r\n\r\n", b"multipart/form-data"))
def test_image_route_multipart_bodies_are_read_or_a_400(case):
    _form_outcome(*case)


@FUZZ
@given(st.binary(max_size=300))
def test_image_route_arbitrary_bytes_as_multipart_are_read_or_a_400(body):
    _form_outcome(body, b"multipart/form-data; boundary=x")
