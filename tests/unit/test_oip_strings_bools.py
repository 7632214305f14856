"""OIP JSON: a number type's data refuses strings ("1.5") and booleans, which numpy's cast took as numbers, with the
refusal's wording of services/gateway/oip.py ('data is not FP32: "abc" in row 1 (counted from 0)'), through both
readers (orjson's for a small body, simdjson's for a large one) and flat or nested; numbers are read as before."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from services.gateway.oip import parse_request
from shared.errors import InvalidRequest

PAD = "p" * 5000  # a body past oip.FAST_BODY: the simdjson reader's turn


def body(data, datatype: str, shape: list[int], *, large: bool = False, outputs: bool = False) -> bytes:
    request = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    if large:
        request["id"] = PAD
    if outputs:  # tritonclient's usual outputs: a `true` elsewhere in the body
        request["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    return orjson.dumps(request)


def refusal(request: bytes) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(request, None)
    assert caught.value.code == "invalid_request" and caught.value.status == 400
    return caught.value.msg


NUMBER_TYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "UINT64"]


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("datatype", NUMBER_TYPES)
def test_a_string_of_a_number_is_refused(datatype, large):
    assert refusal(body([1, 2, "1", 4], datatype, [2, 2], large=large)) == \
        f'input \'x\': data is not {datatype}: "1" in row 1 (counted from 0)'
    assert refusal(body([[1, 2], [3, "1.5"]], datatype, [2, 2], large=large)) == \
        f'input \'x\': data is not {datatype}: "1.5" in row 1 (counted from 0)'


@pytest.mark.parametrize("outputs", [False, True])
@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("datatype", NUMBER_TYPES)
def test_a_boolean_is_refused(datatype, large, outputs):
    for data, shape, text, at in (([1, 2, 3, True], [2, 2], "true", 1), ([False, 1], [1, 2], "false", 0),
                                  ([True, False], [2, 1], "true", 0), ([[1, 2], [True, 4]], [2, 2], "true", 1),
                                  ([[[0, 1]], [[2, False]]], [2, 1, 2], "false", 1)):
        assert refusal(body(data, datatype, shape, large=large, outputs=outputs)) == \
            f"input 'x': data is not {datatype}: {text} in row {at} (counted from 0)", (data, shape)


def test_a_boolean_among_many_values_is_found_past_the_body_s_other_r_and_l():
    """More values than are looked at one by one: the body is searched for `true` first (its `r` and `l` in names)."""
    data = [float(v) for v in range(2000)]
    data[1234] = True
    request = orjson.dumps({"inputs": [{"name": "real_label_rl" * 20, "shape": [1000, 2], "datatype": "FP32",
                                        "data": data}]})
    assert refusal(request).endswith("data is not FP32: true in row 617 (counted from 0)")


@pytest.mark.parametrize("outputs", [False, True])
@pytest.mark.parametrize("large", [False, True])
def test_numbers_are_read_as_before(large, outputs):
    """Ints in float data, whole floats in integer data, nested rows: the values numpy's cast made of them."""
    cases = [([1, 2.5, -3, 1e-45], "FP32", [2, 2], np.float32), ([[1, 2.5], [2**53 + 1, 0]], "FP64", [2, 2], None),
             ([1.0, 2, -7, 3], "INT64", [2, 2], np.int64), ([[255, 0], [1, 2]], "UINT8", [2, 2], np.uint8),
             ([65504.0, 1, 0.5, 2], "FP16", [2, 2], np.float16), ([[[1, 0]], [[1, 1]]], "INT8", [2, 1, 2], np.int8)]
    for data, datatype, shape, numpy_type in cases:
        _, table = parse_request(body(data, datatype, shape, large=large, outputs=outputs), None)
        got = np.asarray(table.column("x").to_pylist()).reshape(-1)
        expected = np.asarray(data, dtype=numpy_type or np.float64).reshape(-1)
        assert got.tolist() == expected.tolist(), (datatype, data)


def test_other_refusals_keep_their_words():
    assert refusal(body([1, 2.5], "INT32", [1, 2])) == \
        "input 'x': INT32 data holds a number with a fraction (2.5) in row 0 (counted from 0); send whole numbers"
    assert refusal(body([[1, 2], [300, 4]], "INT8", [2, 2])).startswith("input 'x': a value (300) outside the range "
                                                                        "of INT8 in row 1")
    assert refusal(body([1.0, None], "FP32", [2, 1])) == \
        "input 'x': FP32 data holds null in row 1 (counted from 0); every value must be a number"
    assert refusal(body([[1.0, 2.0], [3.0]], "FP32", [2, 2])) == \
        "input 'x': data is not FP32 (nested lists of different lengths)"
    assert refusal(body([True, "yes"], "BOOL", [2, 1])).startswith("input 'x': BOOL data must be true or false")
