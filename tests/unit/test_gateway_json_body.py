"""services/gateway/json_body.py: an integer in a JSON body is kept exactly or refused naming its place, never
turned into a float (orjson reads an integer literal beyond 64 bits as the nearest float)."""

from __future__ import annotations

import json

import orjson
import pytest

from services.gateway import json_body
from shared.errors import InvalidRequest


@pytest.mark.parametrize("number", [2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**53) - 1, 0])
def test_an_integer_within_64_bits_is_kept_exactly(number):
    body = json.dumps({"definition": {"steps": [{"seed": number}]}, "n": number}).encode()
    parsed = json_body.loads(body)
    assert parsed == {"definition": {"steps": [{"seed": number}]}, "n": number}
    assert type(parsed["definition"]["steps"][0]["seed"]) is int


@pytest.mark.parametrize(("body", "place", "shown"), [
    (b'{"workspace_id": 1, "definition": {"x": 18446744073709551616}}', "definition.x", "18446744073709551616"),
    (b'{"json": {"args": [1, -9223372036854775809]}}', "json.args.1", "-9223372036854775809"),
    (b'{"tags": {"big": ' + b"9" * 50 + b"}}", "tags.big", "99999999999999999999...(50 digits)"),
    (b"[123456789012345678901234567890]", "0", "123456789012345678901234567890"),
    (b"123456789012345678901234567890", "body", "123456789012345678901234567890"),
])
def test_an_integer_beyond_64_bits_is_refused_naming_its_place(body, place, shown):
    assert isinstance(orjson.loads(body), dict | list | float)  # what orjson alone does: no error, a float inside
    with pytest.raises(InvalidRequest) as caught:
        json_body.loads(body)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"
    assert caught.value.msg.startswith(f"{place}: the integer {shown} is beyond 64 bits")
    assert "as a string" in caught.value.msg


def test_the_place_is_prefixed_for_a_multipart_part():
    with pytest.raises(InvalidRequest, match=r"^metadata\.conversion\.opset: the integer 1" ):
        json_body.loads('{"conversion": {"opset": 100000000000000000000000}}', "metadata")


@pytest.mark.parametrize("body", [
    b'{"x": 1e20, "y": 18446744073709551616.0, "z": -1.5e300}',  # floats as the client wrote them stay floats
    b'{"id": "123456789012345678901234567890"}',  # a big number sent as a string, as the message says to
    b'{"pi": 3.14159265358979323846264338327950288}',  # many digits after the point
])
def test_floats_and_digits_in_strings_are_not_integers(body):
    assert json_body.loads(body) == orjson.loads(body)


def test_invalid_json_is_orjsons_error():
    # an integer beyond a double's range (309 digits and more) is orjson's own refusal: "number is infinity"
    for body in (b"{", b'{"x": NaN}', b'{"x": "\\ud800"}', b"[" * 5000, b'{"x": ' + b"9" * 400 + b"}"):
        with pytest.raises(ValueError):
            json_body.loads(body)


def test_only_a_body_with_a_lost_integer_is_read_twice(monkeypatch):
    reads = []
    monkeypatch.setattr(json_body.json, "loads", lambda data: reads.append(data) or json.JSONDecoder().decode(
        data.decode()))
    image = b'{"image": "' + b"1234567890" * 10_000 + b'", "n": 12345678901234567890, "x": 1e19}'  # all within
    assert json_body.loads(image)["n"] == 12345678901234567890 and reads == []
    with pytest.raises(InvalidRequest):
        json_body.loads(b'{"n": 123456789012345678901234567890}')
    assert len(reads) == 1
