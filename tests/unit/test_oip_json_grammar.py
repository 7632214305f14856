"""OIP v2's fast JSON reader (simdjson, services/gateway/oip.py `_read_json_fast`) against the general path
(orjson): every body reads alike, JSON's number grammar (RFC 8259) is JSON's whichever reader, and a bad body gets
the same typed error. Written for a compiled reader that was measured and not kept (docs/performance.md item 41);
it found two bodies simdjson read where orjson refuses or reads otherwise (a repeated key, a byte order mark)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from services.gateway import oip
from shared.errors import InvalidRequest
from tests.unit.test_oip_parse import _general


@pytest.fixture(autouse=True)
def _every_body_through_the_fast_reader(monkeypatch):
    monkeypatch.setattr(oip, "FAST_BODY", 0)


def _body(data: str, datatype: str = "FP64", shape: list[int] | None = None, before: bool = True) -> bytes:
    count = len(json.loads(f"[{data}]")) if data.strip() else 0
    shape_text = json.dumps(shape if shape is not None else [count])
    head = f'"name": "t", "shape": {shape_text}, "datatype": "{datatype}"'
    tensor = f'{head}, "data": [{data}]' if before else f'"data": [{data}], {head}'
    return ('{"inputs": [{' + tensor + "}]}").encode()


def _same_everywhere(body: bytes) -> tuple[dict, object]:
    """Both readers give the same table (or the same typed error)."""
    results = []
    for read in (oip.parse_request, _general):
        try:
            request, table = read(body, None)
            results.append(("ok", table))
        except InvalidRequest as exc:
            results.append(("error", str(exc)))
    kinds = {kind for kind, _ in results}
    assert len(kinds) == 1, results
    if kinds == {"ok"}:
        first = results[0][1]
        for _, table in results[1:]:
            assert first.equals(table), (first, table)
    else:
        assert len({message for _, message in results}) == 1, results
    return results[0]


def _texts(rng: np.random.Generator) -> list[str]:
    values = np.concatenate([rng.standard_normal(3000), rng.standard_normal(1000) * 1e-5,
                             rng.standard_normal(1000) * 1e8,
                             rng.standard_normal(2000).astype(np.float32).astype(np.float64),
                             10.0 ** rng.uniform(-300, 300, 1000),
                             np.frombuffer(rng.bytes(8 * 3000), np.float64)])
    values = values[np.isfinite(values)]
    texts = [repr(float(v)) for v in values]
    texts += [f"{v:.25g}" for v in values[:800]] + [f"{v:.3e}" for v in values[:800]]
    texts += [f"{v:.0f}" for v in values[:800] if abs(v) < 1e30]  # integers, some beyond 19 digits
    texts += [f"{v:.17E}" for v in values[:300]] + [f"{v:.20f}" for v in values[:300] if abs(v) < 1e3]
    texts += ["0", "-0", "0.0", "-0.0", "0e5", "1E+2", "1e-2", "123456789012345678901234567890",
              "0.000000000000000000000000000001", "9007199254740993", "18446744073709551615",
              "18446744073709551616", "1.7976931348623157e308", "4.9e-324", "2.2250738585072014e-308",
              "0.1000000000000000055511151231257827", "1e-400"]
    return texts


def _fast(body: bytes):
    return oip._read_json_fast(body)


def test_numbers_read_as_orjson_reads_them():
    texts = _texts(np.random.default_rng(20))
    for chunk in range(0, len(texts), 997):  # a big integer sends its body to the general path: many bodies
        body = _body(", ".join(texts[chunk:chunk + 997]))
        table = _same_everywhere(body)[1]
        expected = np.asarray(orjson.loads(body)["inputs"][0]["data"], np.float64)
        got = table.column("t").to_numpy()
        assert got.view(np.uint64).tolist() == expected.view(np.uint64).tolist()  # bit for bit, -0.0 included


def test_fp32_is_cast_from_the_float64_as_before():
    texts = [t for t in _texts(np.random.default_rng(21)) if abs(float(t)) < 3e38]
    for chunk in range(0, len(texts), 997):
        for before in (True, False):  # the datatype named before or after the data
            body = _body(",".join(texts[chunk:chunk + 997]), "FP32", before=before)
            table = _same_everywhere(body)[1]
            expected = np.asarray(orjson.loads(body)["inputs"][0]["data"], np.float32)
            assert table.column("t").to_numpy().view(np.uint32).tolist() == expected.view(np.uint32).tolist()


@pytest.mark.parametrize("datatype", ["FP16", "FP64", "FP32"])
@pytest.mark.parametrize("shape", [[6], [2, 3], [3, 1, 2], [1, 6]])
def test_shapes_and_float_types(datatype, shape):
    body = _body("0.5, -1.25e2, 3, 0, 7.75, 1e-3", datatype, shape)
    assert isinstance(_fast(body)["inputs"][0]["data"], np.ndarray)  # simdjson's path
    kind, table = _same_everywhere(body)
    assert kind == "ok" and table.num_rows == shape[0]


@pytest.mark.parametrize("datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT64", "BOOL"])
def test_integer_and_bool_inputs(datatype):
    data = "1, 0, 1" if datatype == "BOOL" else "1, 2, 3"
    for before in (True, False):
        assert _same_everywhere(_body(data, datatype, before=before))[0] == "ok"
    big = _body("9223372036854775807, 1", "INT64", [2], before=False)  # beyond float64's exact integers
    assert _same_everywhere(big)[1].column("t").to_pylist() == [9223372036854775807, 1]
    mixed = (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2]}, '
             b'{"name": "b", "shape": [2], "datatype": "' + datatype.encode() + b'", "data": [1, 0]}]}')
    _same_everywhere(mixed)


@pytest.mark.parametrize("data", ["1, 2", "1,2", "  1 ,\n2\t,\r3  ", "", " ", "-0.0, 0, 1e0, 1E-0, 1e+0",
                                  "0.5" + ", 0.25" * 300])
def test_whitespace_and_empty_lists_as_json_allows(data):
    count = len(json.loads(f"[{data}]"))
    kind, said = _same_everywhere(_body(data, "FP32", [count]))
    if count:
        assert kind == "ok"
    else:  # read alike, then refused: a batch of 0 is a request of no rows (tests/unit/test_inference_no_rows.py)
        assert kind == "error" and said.startswith("the request holds no rows"), said


# every form RFC 8259 refuses (numpy's and pyarrow's readers took most of them, docs/performance.md item 35)
INVALID = ["NaN", "-NaN", "Infinity", "-Infinity", "inf", "+1", ".5", "-.5", "1.", "-1.", "01", "-01", "00",
           "1e", "1e+", "1E-", "0x10", "1_000", "--1", "-", "1.5.5", "1e5.5", "1e5e5", "1,,2", "1, 2,", ",1",
           "1 2", "tru", "1]", "1e400", "-1e400", "0.0.", "1,]", "١", "1e5 .5"]
# valid JSON but not numbers: both readers take `true` and numeric strings as numbers in a
# float input as before (item 35) and refuse null and nested lists
NOT_NUMBERS = ["true", "false", "null", '"1"', '"a"', "[1]", "{}"]


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("form", INVALID)
def test_what_json_refuses_gets_the_general_paths_error(form, datatype):
    for data in (form, f"1.5, {form}", f"{form}, 2.5", "0.125, " * 40 + form + ", 3" * 40):
        body = _body("0", datatype).replace(b"[0]", f"[{data}]".encode())
        assert _fast(body) is None, data
        kind, message = _same_everywhere(body)
        assert kind == "error"
        assert message == str(pytest.raises(InvalidRequest, _general, body, None).value)


@pytest.mark.parametrize("form", NOT_NUMBERS)
def test_json_values_other_than_numbers_are_read_as_the_general_path_reads_them(form):
    for data in (form, f"1.5, {form}", "0.125, " * 40 + form + ", 3" * 40):
        _same_everywhere(_body("0", "FP32").replace(b"[0]", f"[{data}]".encode()))


def test_fp32_beyond_its_range_gets_the_typed_error():
    body = _body("1.0, 3.5e38", "FP32", [2])
    assert _same_everywhere(body) == ("error", "input 't': a value (3.5e+38) outside the range of FP32 in row 1 "
                                               "(counted from 0)")
    assert _same_everywhere(_body("1.0, 3.4e38", "FP32", [2]))[0] == "ok"


@pytest.mark.parametrize("body", [
    # a key twice: orjson keeps the last one, simdjson's [key] the first (its reader took the first datatype)
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5], "data": [2.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "data": [1.5], "datatype": "INT32", "data": [2]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "datatype": "INT8", "data": [1]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "INT8", "datatype": "FP32", "data": [1.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}], "inputs": []}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}, {"name": "t", "shape": [1], '
    b'"datatype": "FP32", "data": [1]}]}',
    # escaped keys and values: read the way orjson reads them
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "d\\u0061ta": [1.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP\\u003332", "data": [1.5]}]}',
    b'{"\\u0069nputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]}',
    # brackets, quotes and backslashes in strings
    b'{"id": "a\\"[b\\\\", "inputs": [{"name": "[\\"data\\": [1]", "shape": [1], "datatype": "FP32", '
    b'"data": [1.5], "parameters": {"x": ["]", "\\\\"]}}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5], "parameters": {"data": [1, 2]}}], '
    b'"parameters": {"inputs": [{"data": ["x"]}]}, "outputs": [{"name": "y"}]}',
    # nested and ragged lists, strings, null and booleans in data
    b'{"inputs": [{"name": "t", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [1, [2]]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP64", "data": [1, null]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [true, 2]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": ["1.5", 2]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": null}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32"}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": 32, "data": [1, 2]}]}',
    b'{"inputs": {"name": "t", "shape": [2], "datatype": "FP32", "data": [1, 2]}}',
    b'{"inputs": [[{"name": "t", "shape": [2], "datatype": "FP32", "data": [1, 2]}]]}',
    b'{"inputs": ["x", {"name": "t", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}',
    b'{"inputs": []}', b'[]', b'{}', b'"inputs"', b'',
    # not JSON around a good list
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]}}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]} x',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5],}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32" "data": [1.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data" [1.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [01], "datatype": "FP32", "data": [1.5]}]}',
    b'{"inputs": [{"name": "t\xff", "shape": [1], "datatype": "FP32", "data": [1.5]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}], "x": NaN}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}], "x": "unterminated}',
    b'\xef\xbb\xbf{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]}',
    b' \n{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}]}\n ',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.5]}], "deep": ' + b"[" * 200
    + b"]" * 200 + b"}",
])
def test_odd_bodies_read_as_the_general_path_reads_them(body):
    _same_everywhere(body)


def test_truncated_bodies_are_refused_alike():
    body = _body(", ".join(["0.3455841839313507", "-1.3031572103500366", "2e-5"] * 30), "FP32")
    for end in range(len(body)):
        _same_everywhere(body[:end])
