"""An OIP request's refused values are named by row (and the value, where one value is refused), as the engine names
a records or Arrow request's ("column 'tensor': NaN or infinite values in rows 1 and 3 (counted from 0)", "a number
with a fraction (1.5)", "a value (1e+300) outside the range of int64"): OIP's `data` is flat (row-major), so the
input alone ("input 'x': FP32 data holds null", "a value is outside the range of FP32") left the caller to search
the whole tensor. Same typed code (invalid_request); both readers (simdjson's for large float bodies, orjson's)
refuse alike (services/gateway/oip.py: parse_request)."""

from __future__ import annotations

import orjson
import pytest

from services.gateway import oip
from shared.errors import InvalidRequest
from tests.unit.test_oip_parse import _general

CASES = {
    "null in FP32": ([3, 2], "FP32", [1.0, 2.0, 3.0, None, 5.0, None],
                     "input 'x': FP32 data holds null in rows 1 and 2 (counted from 0); every value must be a number"),
    "null in nested FP64": ([2, 2], "FP64", [[1.0, 2.0], [None, 4.0]],
                            "input 'x': FP64 data holds null in row 1 (counted from 0); every value must be a number"),
    "FP32 out of range": ([2, 2], "FP32", [1.0, 2.0, 3.0, 1e39],
                          "input 'x': a value (1e+39) outside the range of FP32 in row 1 (counted from 0)"),
    "FP16 out of range": ([2], "FP16", [1.0, 70000.0],
                          "input 'x': a value (70000.0) outside the range of FP16 in row 1 (counted from 0)"),
    "INT8 out of range": ([2, 2], "INT8", [1, 2, 300, 4],
                          "input 'x': a value (300) outside the range of INT8 in row 1 (counted from 0)"),
    "UINT8 negative": ([1, 2], "UINT8", [-1, 2],
                       "input 'x': a value (-1) outside the range of UINT8 in row 0 (counted from 0)"),
    "INT64 float out of range": ([3], "INT64", [1, 2, 1e20],
                                 "input 'x': a value (1e+20) outside the range of INT64 in row 2 (counted from 0)"),
    "INT32 fraction": ([2, 2], "INT32", [1.0, 2.0, 3.0, 1.5],
                       "input 'x': INT32 data holds a number with a fraction (1.5) in row 1 (counted from 0); send "
                       "whole numbers"),
    "INT64 null": ([2, 2], "INT64", [1, 2, None, 4],
                   "input 'x': INT64 data holds null in row 1 (counted from 0); every value must be a number"),
    "FP32 string": ([2, 2], "FP32", [1.0, 2.0, 3.0, "abc"],
                    "input 'x': data is not FP32: \"abc\" in row 1 (counted from 0)"),
    "BOOL null": ([2, 1], "BOOL", [[True], [None]],
                  "input 'x': BOOL data holds null in row 1 (counted from 0); every value must be true or false"),
    "BOOL string": ([3], "BOOL", [True, False, "false"],
                    "input 'x': BOOL data must be true or false (or 0 and 1), not strings or other numbers: \"false\" "
                    "in row 2 (counted from 0)"),
    "BOOL number": ([2, 2], "BOOL", [1, 0, 0, 2],
                    "input 'x': BOOL data must be true or false (or 0 and 1), not strings or other numbers: 2 in row 1 "
                    "(counted from 0)"),
    # values that do not fill the shape have no rows: that refusal comes first
    "null, short of the shape": ([2, 2], "FP32", [1.0, None, 3.0], "input 'x': 3 values do not fill shape [2, 2]"),
    "ragged": ([2, 2], "FP32", [[1.0, 2.0], [3.0]], "input 'x': data is not FP32 (nested lists of different lengths)"),
}


def _body(shape: list[int], datatype: str, data: list) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_refused_value_is_named_by_its_row(case):
    shape, datatype, data, message = case
    body = _body(shape, datatype, data)
    for read in (oip.parse_request, _general):
        with pytest.raises(InvalidRequest) as refused:
            read(body, None)
        assert refused.value.msg == message and refused.value.code == "invalid_request"


def test_the_fast_readers_values_are_named_alike():
    """A float body above FAST_BODY: simdjson reads `data` into numpy (no Python values) and finds the same row."""
    rows = 400
    data = [0.125] * (rows * 2)
    data[2 * 317 + 1] = 1e39
    body = _body([rows, 2], "FP32", data)
    assert len(body) > oip.FAST_BODY and oip._read_json_fast(body) is not None
    for read in (oip.parse_request, _general):
        with pytest.raises(InvalidRequest, match=r"^input 'x': a value \(1e\+39\) outside the range of FP32 in row 317 "
                                                 r"\(counted from 0\)$"):
            read(body, None)


def test_many_rows_are_counted_as_the_engine_counts_them():
    data = [None if row % 2 else 1.0 for row in range(16)]
    with pytest.raises(InvalidRequest) as refused:
        oip.parse_request(_body([16], "FP32", data), None)
    assert refused.value.msg == ("input 'x': FP32 data holds null in rows 1, 3, 5, 7 and 9 (and 3 more) (counted from "
                                 "0); every value must be a number")
