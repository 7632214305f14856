"""OIP JSON: nested `data` lists ([[...], [...]], a row a list) are flattened a level at a time and cast by array()
as a flat list is (services/gateway/oip.py `_flattened`, `_plain_numbers`), not read by numpy into float64 or int64
and cast again; as strict as before: a string, a boolean, a null, a ragged or mixed nesting, a value outside an
integer type's range are refused in the same words, with the row named."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from services.gateway import oip
from services.gateway.oip import parse_request
from shared.errors import InvalidRequest

PAD = "p" * 5000  # a body past oip.FAST_BODY: the simdjson reader tries it first


def body(data, datatype: str, shape: list[int], *, large: bool = False) -> bytes:
    request = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    if large:
        request["id"] = PAD
    return orjson.dumps(request)


def refusal(request: bytes) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(request, None)
    return caught.value.msg


def test_a_nested_list_is_read_as_its_flat_values():
    """The values come back flat (the caller's bool check reads them, not the nesting again), of the type at once."""
    data = [[[1.5, 2], [3, 4]], [[5, 6], [7, 8.25]]]
    flat, array = oip._plain_numbers(data, np.dtype("<f4"), "FP32")
    assert flat == [1.5, 2, 3, 4, 5, 6, 7, 8.25]
    assert array.dtype == np.float32 and array.tolist() == flat


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "UINT8", "UINT64"])
def test_nested_rows_are_the_values_numpy_s_cast_made(datatype, large):
    rng = np.random.default_rng(7)
    for shape in ([1000, 3], [7, 2, 3], [2, 1, 1, 4]):
        values = rng.integers(0, 100, shape) if datatype[0] in "IU" else rng.normal(0, 50, shape)
        data = values.tolist()
        _, table = parse_request(body(data, datatype, shape, large=large), None)
        column = table.column("x")
        expected = np.asarray(data, dtype=oip.DATATYPES[datatype])
        got = np.asarray(column.to_pylist(), dtype=oip.DATATYPES[datatype])
        assert got.shape == tuple(shape) and np.array_equal(got, expected), (datatype, shape)
        kind = column.type
        while hasattr(kind, "value_type"):
            kind = kind.value_type
        assert kind.to_pandas_dtype() == oip.DATATYPES[datatype]


@pytest.mark.parametrize("large", [False, True])
def test_a_nesting_that_is_no_tensor_is_refused_as_before(large):
    ragged = "input 'x': data is not FP32 (nested lists of different lengths)"
    for data, shape in (([[1, 2, 3], [4]], [2, 2]),  # as many values as the shape, rows of different lengths
                        ([[1, [2]], [3, 4]], [2, 2]),  # a list deeper in one place
                        ([[1, 2], 3], [2, 2]),  # a number beside the rows
                        ([[[1, 2]], [[3], [4]]], [2, 1, 2])):
        assert refusal(body(data, "FP32", shape, large=large)) == ragged, data
    assert refusal(body([[1, 2], {"a": 1}], "FP32", [3, 1], large=large)) == \
        "input 'x': data is not FP32: {\"a\":1} in row 2 (counted from 0)"  # an object: the values it stands among
    assert refusal(body([[1, 2], [3, None]], "FP64", [2, 2], large=large)) == \
        "input 'x': FP64 data holds null in row 1 (counted from 0); every value must be a number"
    assert refusal(body([[], []], "FP32", [2, 1], large=large)) == "input 'x': 0 values do not fill shape [2, 1]"


@pytest.mark.parametrize("large", [False, True])
def test_strings_booleans_and_ranges_in_deep_rows_are_named(large):
    rows = [[[float(r), 1.0], [2.0, 3.0]] for r in range(300)]  # 1,200 values: past the ones looked at one by one
    rows[211][1][0] = True
    assert refusal(body(rows, "FP32", [300, 2, 2], large=large)) == \
        "input 'x': data is not FP32: true in row 211 (counted from 0)"
    rows[211][1][0] = "2.0"
    assert refusal(body(rows, "FP32", [300, 2, 2], large=large)) == \
        "input 'x': data is not FP32: \"2.0\" in row 211 (counted from 0)"
    ints = [[[r, 1], [2, 3]] for r in range(300)]
    ints[299][0][1] = 40000
    assert refusal(body(ints, "INT16", [300, 2, 2], large=large)) == \
        "input 'x': a value (40000) outside the range of INT16 in row 299 (counted from 0)"
    ints[299][0][1] = 2.5
    assert refusal(body(ints, "INT16", [300, 2, 2], large=large)) == \
        "input 'x': INT16 data holds a number with a fraction (2.5) in row 299 (counted from 0); send whole numbers"
    ints[299][0][1] = 2.0  # a whole float: taken for an integer type, as numpy's cast took it
    _, table = parse_request(body(ints, "INT16", [300, 2, 2], large=large), None)
    assert table.column("x").to_pylist()[299] == [[299, 2], [2, 3]]
    assert refusal(body([[1.0, 2.0], [1e39, 0.0]], "FP32", [2, 2], large=large)) == \
        "input 'x': a value (1e+39) outside the range of FP32 in row 1 (counted from 0)"


@pytest.mark.parametrize("nested", [False, True])
def test_a_large_body_s_refusal_names_the_value_as_the_body_wrote_it(nested):
    """The fast reader (bodies past FAST_BODY) holds float data as float64: a refused value was named as that
    float (9007199254740992.0 for 2^53 + 1), where a small body's refusal names it as written."""
    data = [[1.5, 2.5] for _ in range(1000)]
    data[3][1] = 2**53 + 1
    msg = refusal(body(data if nested else sum(data, []), "FP16", [1000, 2]))
    assert msg == "input 'x': a value (9007199254740993) outside the range of FP16 in row 3 (counted from 0)"


def test_a_large_body_the_fast_reader_declined_is_read_once_when_refused(monkeypatch):
    """A refusal is said again from the general reading only for a body the fast reader read: one it declined (a
    string among float data here), a binary one or a small one was read by the general path already, and reading a
    refused body of up to the gateway's 64 MiB twice doubled its cost for nothing."""
    reads, read = [], orjson.loads

    def loads(data):
        reads.append(len(data))
        return read(data)

    monkeypatch.setattr(oip.orjson, "loads", loads)
    data = [[1.5, 2.5] for _ in range(1000)]
    data[7][0] = "1.5"
    assert refusal(body(data, "FP32", [1000, 2])) == 'input \'x\': data is not FP32: "1.5" in row 7 (counted from 0)'
    assert len(reads) == 1
    reads.clear()
    data[7][0] = 2**53 + 1  # read by the fast reader, refused, said from the general reading: read once more
    assert refusal(body(data, "FP16", [1000, 2])).startswith("input 'x': a value (9007199254740993) outside")
    assert len(reads) == 1
