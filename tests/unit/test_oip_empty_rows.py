"""OIP v2 JSON: a body of rows of nothing (`"data": [[], [], ...]`, 1M of them in 3 MB) is refused in the words it
always had, without a Python object per row (services/gateway/oip.py: `_empty_rows`, and parse_request's second
reading only for a refusal naming a value the fast reader read). Before session 32 the fast reader walked every row
(~1 s for 1M), then the refusal read the whole body again with orjson (1M lists) to say "0 values do not fill shape":
9-11 s at the gateway under load. Work is counted here (memory the reading takes, orjson readings), not timed."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from services.gateway import oip
from shared.arrow_codec import NO_ROWS
from shared.errors import InvalidRequest

ROWS = 1_000_000
# bytes a row the reading may take: pysimdjson's as_buffer reserves 8 a top-level item before it flattens (the C
# buffer, freed at once); a Python list a row is 56 bytes and a pointer to it 8 more
PER_ROW = 16


def _body(shape: list[int], datatype: str, rows: int = ROWS, row: bytes = b"[]") -> bytes:
    head = orjson.dumps({"name": "x", "shape": shape, "datatype": datatype})[:-1]
    return b'{"inputs":[' + head + b',"data":[' + b",".join([row] * rows) + b"]}]}"


def _refusal(read, body: bytes) -> str:
    with pytest.raises(InvalidRequest) as refused:
        read(body, None)
    return refused.value.msg


def _general(body: bytes, header: str | None):
    return oip._parse_request(body, header, fast=False)


@pytest.fixture
def orjson_readings(monkeypatch) -> list[int]:
    """The sizes of the bodies orjson reads (oip's module reads through orjson.loads)."""
    sizes: list[int] = []
    loads = orjson.loads

    def counted(data, *args, **kwargs):
        sizes.append(len(data))
        return loads(data, *args, **kwargs)

    monkeypatch.setattr(oip.orjson, "loads", counted)
    return sizes


def _warm() -> None:
    """simdjson imported and its kept parser made outside the measured reading."""
    oip.parse_request(orjson.dumps({"inputs": [{"name": "x", "shape": [2000], "datatype": "FP32",
                                                "data": [1.5] * 2000}]}), None)


WORDS = [
    ([ROWS, 1], "FP32", f"input 'x': 0 values do not fill shape [{ROWS}, 1]"),
    ([ROWS, 29], "FP64", f"input 'x': 0 values do not fill shape [{ROWS}, 29]"),
    ([ROWS], "INT64", f"input 'x': 0 values do not fill shape [{ROWS}]"),
    ([ROWS, 1], "BOOL", f"input 'x': 0 values do not fill shape [{ROWS}, 1]"),
    ([0], "FP32", f"{NO_ROWS} (the inputs' batch dimension is 0)"),
    ([0, 3], "UINT8", f"{NO_ROWS} (the inputs' batch dimension is 0)"),
    ([ROWS, 0], "FP32", "input 'x': shape must be a list of at most 32 positive integers, the batch dimension first"),
]


@pytest.mark.parametrize(("shape", "datatype", "words"), WORDS)
def test_a_million_empty_rows_are_refused_without_an_object_a_row(shape, datatype, words, orjson_readings):
    body = _body(shape, datatype)
    assert len(body) > 3 * ROWS
    _warm()
    orjson_readings.clear()
    tracemalloc.start()
    try:
        said = _refusal(oip.parse_request, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert said == words
    assert orjson_readings == []  # not read again (before: once more, the whole 3 MB)
    assert peak < PER_ROW * ROWS, f"{peak} bytes for {ROWS} rows"  # before: ~110 bytes a row


@pytest.mark.parametrize(("shape", "datatype", "words"), WORDS)
def test_the_words_are_the_general_readings(shape, datatype, words):
    shape = [3000 if dim == ROWS else dim for dim in shape]
    body = _body(shape, datatype, rows=3000)
    shown = words.replace(str(ROWS), "3000")
    assert _refusal(oip.parse_request, body) == _refusal(_general, body) == shown


@pytest.mark.parametrize("odd", [b"[[]]", b"[1]", b'"x"', b"null", b"true", b"{}", b"1"])
@pytest.mark.parametrize("where", [0, 1, 2999])
def test_one_row_not_empty_is_read_as_before(odd, where):
    """A row holding a list, a value or no list among empty ones: the general path's words (ragged lists, the value
    named, the count of the values), whichever reader read it."""
    rows = [b"[]"] * 3000
    rows[where] = odd
    head = orjson.dumps({"name": "x", "shape": [3000, 1], "datatype": "FP32"})[:-1]
    body = b'{"inputs":[' + head + b',"data":[' + b",".join(rows) + b"]}]}"
    assert len(body) > oip.FAST_BODY
    assert _refusal(oip.parse_request, body) == _refusal(_general, body)


def test_empty_rows_beside_another_input_keep_its_refusal_first():
    """Inputs are judged in order: an earlier input's refusal (a value named) is said before the empty rows'."""
    empty = [[] for _ in range(3000)]
    body = orjson.dumps({"inputs": [
        {"name": "a", "shape": [3000], "datatype": "FP16", "data": [1.0] * 2999 + [2**53 + 1]},
        {"name": "b", "shape": [3000, 1], "datatype": "FP32", "data": empty}]})
    said = _refusal(oip.parse_request, body)
    assert said == _refusal(_general, body)
    assert "9007199254740993" in said and "row 2999" in said  # as written, not float64's 9007199254740992.0


def test_a_fast_read_value_refused_is_still_read_again(orjson_readings):
    """The one refusal whose words differ between the readers (a float value the fast reader holds as float64)
    reads the body again, as before."""
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2000], "datatype": "FP16",
                                     "data": [1.0] * 1999 + [2**53 + 1]}]})
    assert len(body) > oip.FAST_BODY and oip._read_json_fast(body) is not None
    orjson_readings.clear()
    said = _refusal(oip.parse_request, body)
    assert "(9007199254740993)" in said
    assert orjson_readings == [len(body)]
