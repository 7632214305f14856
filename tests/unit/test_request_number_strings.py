"""A request's numbers are JSON numbers (shared/request_values.py refuse_lax_scalars): pydantic's lax mode read a
string holding a number as the number where a command has one (`{"workspace_id": "5"}` listed workspace 5's models,
`" 5 "`, `"1_000"`, `"5.0"` too, and `"nan"` or `"inf"` into a float, values no JSON number can be), where session 39
had made booleans strict only. A 400 naming the field, at the gateway and on the bus. Seed 001 sends none of its JSON
numbers as strings (its quoted `"version": "2"` and `"python_version": "3.8"` are string fields); its
`models/upload_stream` example posts `workspace_id` as a multipart form field, text by nature, so form fields keep
reading numbers from their text."""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from services.gateway import handlers
from services.gateway.http import create_app
from shared.authz import Principal
from shared.bus import CallContext, run_command
from shared.errors import InvalidRequest
from shared.messages.lineage import DatasetFileQuery, EvaluateDetections
from shared.messages.logs import GetLogs, ReadLogField
from shared.request_values import NUMBER_TEXT, refuse_lax_scalars
from shared.settings import Settings


class Inner(BaseModel):
    bins: int = 5
    weight: float | None = None
    free: Any = None


class Outer(BaseModel):
    workspace_id: int = 0
    name: str = ""
    version: str | None = None
    inner: Inner = Inner()
    items: list[Inner] = []
    ids: list[int] = []
    settings: dict[str, Any] = {}
    scores: dict[str, float] = {}


def refused(body: dict, model: type[BaseModel] = Outer, **kwargs: Any) -> str:
    command = model.model_validate(body)  # what pydantic alone makes of it: a number
    with pytest.raises(InvalidRequest) as caught:
        refuse_lax_scalars(body, command, **kwargs)
    return caught.value.msg


@pytest.mark.parametrize(("body", "said"), [
    ({"workspace_id": "5"}, "workspace_id: Input should be a valid number, not a string: send 5 without quotes"),
    ({"workspace_id": " 5 "}, "workspace_id: Input should be a valid number, not a string: send 5 without quotes"),
    ({"workspace_id": "1_000"}, "workspace_id: Input should be a valid number, not a string"),
    ({"workspace_id": "+5"}, "workspace_id: Input should be a valid number, not a string"),
    ({"inner": {"bins": "3"}}, "inner.bins: Input should be a valid number, not a string: send 3 without quotes"),
    ({"inner": {"weight": "0.5"}}, "inner.weight: Input should be a valid number, not a string: send 0.5 without"),
    ({"inner": {"weight": "nan"}}, "inner.weight: Input should be a valid number, not a string"),
    ({"inner": {"weight": "-Infinity"}}, "inner.weight: Input should be a valid number, not a string"),
    ({"inner": {"weight": "\u00a01e3\t"}}, "inner.weight: Input should be a valid number, not a string: send 1e3"),
    ({"items": [{"bins": 3}, {"bins": "4"}]}, "items.1.bins: "),
    ({"ids": [1, "2"]}, "ids.1: "),
    ({"scores": {"a": 0.5, "b": ".5"}}, "scores.b: "),
])
def test_a_string_where_a_number_is_is_refused_naming_the_field(body, said):
    assert refused(body).startswith(said)


def test_strings_elsewhere_and_numbers_as_numbers_pass():
    """A string field holding digits (seed 001's `"version": "2"`), a free-form object's strings, and numbers sent
    as numbers are what they were."""
    for body in ({"version": "2", "name": "5"}, {"settings": {"n": "5", "deep": [{"x": "1.5"}]}},
                 {"inner": {"free": {"a": "5"}}}, {"workspace_id": 5, "inner": {"weight": 5}, "ids": [1, 2]},
                 {"scores": {"7": 0.5}}):  # a key reading as a number is no value
        refuse_lax_scalars(body, Outer.model_validate(body))


def test_form_fields_read_their_numbers_from_the_text():
    """`numbers=False` (the gateway's upload_stream form fields): seed 001 posts `workspace_id` as text; a boolean's
    rule still holds."""
    body = {"workspace_id": "5", "inner": {"weight": "0.5"}}
    refuse_lax_scalars(body, Outer.model_validate(body), "metadata", numbers=False)
    assert refused({"workspace_id": True}, numbers=False).startswith("workspace_id: Input should be a valid number")


def test_real_commands_at_the_gateway_and_on_the_bus():
    detections = {"workspace_id": 1, "name": "r", "dataset_id": 2, "candidates": [{"name": "m", "detections": {
        "a.png": [{"bbox": [0, 0, 4, 4], "category": "7", "score": 0.5}],
        "b.png": [{"bbox": [0, 0, 4, "4"], "category": "cat", "score": 0.5}]}}]}
    assert refused(detections, EvaluateDetections).startswith("candidates.0.detections.b.png.0.bbox.3: ")
    detections["candidates"][0]["detections"]["b.png"][0]["bbox"][3] = 4
    refuse_lax_scalars(detections, EvaluateDetections.model_validate(detections))  # category "7" is a string field

    async def handler(cmd, ctx):
        return {"ran": cmd.dataset_id}

    reply = asyncio.run(run_command(handler, DatasetFileQuery, {"dataset_id": "3", "name": "a.png"},
                                    CallContext(subject="s")))
    assert (reply.status, reply.error.code) == (400, "invalid_request")
    assert reply.error.msg == "dataset_id: Input should be a valid number, not a string: send 3 without quotes"
    reply = asyncio.run(run_command(handler, DatasetFileQuery, {"dataset_id": 3, "name": "a.png"},
                                    CallContext(subject="s")))
    assert reply.data == {"ran": 3}


LOGS = {"pipeline_id": "p", "workspace_id": 5}
FIELD = {"workspace_id": 5, "pipeline": "p", "column": "out.y", "start_ms": 0, "end_ms": 1}


@pytest.mark.parametrize(("model", "body", "key", "value", "said"), [
    (GetLogs, LOGS, "workspace_id", "5", "workspace_id: Input should be a valid number, not a string: send 5 without"),
    (GetLogs, LOGS, "workspace_id", True, "workspace_id: Input should be a valid number, not true"),
    (GetLogs, LOGS, "page_size", "10", "page_size: Input should be a valid number, not a string"),
    (ReadLogField, FIELD, "start_ms", "0", "start_ms: Input should be a valid number, not a string"),
])
def test_the_log_stores_raw_commands_take_only_json_numbers(model, body, key, value, said):
    """The log store's raw subjects (get_logs, read_field) are parsed by its own `_parse`, not run_command: before
    session 41 they took pydantic's lax reads on the bus ("5" and true as workspace 5 and 1), the gateway alone
    refusing them."""
    from services.log_store.app import _parse

    with pytest.raises(InvalidRequest) as caught:
        _parse(model, orjson.dumps({**body, key: value}))
    assert caught.value.msg.startswith(said)
    assert _parse(model, orjson.dumps(body)).workspace_id == 5  # numbers as numbers: read as before


def test_a_body_without_a_string_reading_as_a_number_is_walked_only_where_a_boolean_may_be(monkeypatch):
    """The cost stays where it was for a body with no string value that reads as a number (a key that does is no
    value: {"1": [...]}): a few steps, not one per detection. One that has some (a category "7", a string field) walks
    the fields that may hold a number, a detection at a time, its bbox compared whole in C."""
    from shared import request_values

    steps = []
    walk = request_values._refuse_at
    monkeypatch.setattr(request_values, "_refuse_at", lambda *args: (steps.append(1), walk(*args))[1])
    detections = {str(i): [{"bbox": [0, 0, 4, 4.5], "category": "cat", "score": 0.5} for _ in range(5)]
                  for i in range(200)}
    body = {"workspace_id": 1, "name": "r", "dataset_id": 2, "candidates": [{"name": "m", "detections": detections}]}
    refuse_lax_scalars(body, EvaluateDetections.model_validate(body))
    assert len(steps) < 10
    detections["7"][0]["category"] = "7"
    steps.clear()
    refuse_lax_scalars(body, EvaluateDetections.model_validate(body))
    assert 1000 < len(steps) < 1000 + 200 + 10  # a step a detection and a list, none a bbox or its numbers
    detections["7"][0]["bbox"][3] = "4.5"
    with pytest.raises(InvalidRequest, match=r"^candidates\.0\.detections\.7\.0\.bbox\.3: .* send 4\.5 without"):
        refuse_lax_scalars(body, EvaluateDetections.model_validate(body))


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 5


class Shapes(BaseModel):
    pair: tuple[int, float] | None = None
    many: tuple[int, ...] = ()
    level: Level | None = None
    inner: Inner | None = None


@pytest.mark.parametrize(("body", "said"), [
    ({"pair": ["5", 1.5]}, "pair.0: Input should be a valid number, not a string: send 5 without quotes"),
    ({"many": [1, "2"]}, "many.1: Input should be a valid number, not a string: send 2 without quotes"),
    ({"many": [1, True]}, "many.1: Input should be a valid number, not true"),
    ({"level": "5"}, "level: Input should be a valid number, not a string: send 5 without quotes"),
    ({"level": " 1 "}, "level: Input should be a valid number, not a string: send 1 without quotes"),
    ({"level": True}, "level: Input should be a valid number, not true"),
])
def test_a_tuple_and_an_intenum_take_only_json_numbers(body, said):
    """pydantic's lax mode reads "5" (and true) into a `tuple[int, ...]`'s item and into an IntEnum's member as it does
    into an int; the walk passed over both (a tuple is no list; an IntEnum's member's type is its enum's, and its
    field was taken for one that holds no number), though no command has such a field yet (session 41)."""
    assert refused(body, Shapes) == said


def test_a_tuple_and_an_intenum_sent_as_numbers_pass():
    body = {"pair": [5, 1.5], "many": [1, 2], "level": 5, "inner": {"bins": 3}}
    refuse_lax_scalars(body, Shapes.model_validate(body))
    assert Shapes.model_validate(body).level is Level.HIGH


class Numbers(BaseModel):
    i: int | None = None
    f: float | None = None


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(),
    st.builds(lambda a, n, b: a + n + b, st.text(st.characters(categories=["Zs", "Cc"]), max_size=3),
              st.one_of(st.integers().map(str), st.floats().map(str), st.sampled_from(
                  ["1_000", ".5", "5.", "+5", "1E+5", "INF", "-Infinity", "NaN", "00012", "-0"])),
              st.text(st.characters(categories=["Zs", "Cc"]), max_size=3))))
def test_every_string_pydantic_reads_as_a_number_is_found_in_the_encoding(text):
    """The cheap look before the walk (NUMBER_TEXT in orjson's encoding) misses none: a miss would leave the number
    fields unwalked and the string taken as the number."""
    for field in ("i", "f"):
        try:
            Numbers.model_validate({field: text})
        except ValidationError:
            continue
        assert NUMBER_TEXT.search(orjson.dumps({"k": text})), (field, text)
        with pytest.raises(InvalidRequest, match=f"^{field}: Input should be a valid number, not a string"):
            refuse_lax_scalars({field: text}, Numbers.model_validate({field: text}))


# --- the gateway's multipart routes -------------------------------------------------------------------------------

USER = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="cli", username="alice",
                 issued_at=0.0)


@pytest.fixture(scope="module")
def gateway_app():
    """The gateway app, the services' answers faked; `staged` lists every key put in object storage (a removed one
    too: `Objects.removed`), `asked` the commands forwarded."""
    staged: list = []
    asked: list = []

    class Verifier:
        async def verify(self, token):
            return USER

    class Objects:
        async def put_stream(self, bucket, key, data, length=-1):
            staged.append(key)

        async def delete(self, bucket, key):
            assert key in staged

    async def forward(broker, subject, cmd, token, timeout):
        asked.append(cmd)
        return {"insert_models": {"returning": [{"models": [{"id": 5}]}]}}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "forward", forward)
        app = create_app(SimpleNamespace(settings=Settings(), extras={"verifier": Verifier()}, broker=None,
                                         objects=Objects()))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, staged, asked


@pytest.fixture
def gateway(gateway_app):
    client, staged, asked = gateway_app
    staged.clear()
    asked.clear()
    return client, staged, asked


def post(client, path: str, data: dict, file_part: str = "file"):
    return client.post(f"/v1/api/{path}", data=data, files={file_part: ("m.onnx", b"abc")},
                       headers={"Authorization": "Bearer t"})


def test_upload_streams_form_fields_keep_reading_the_workspace_from_the_text(gateway):
    """Seed 001 (lines 871-888) posts `workspace_id` as a form field to models/upload_stream (and to
    upload_and_convert's URL): it is text, and stays a number read from it; a JSON metadata part's is a JSON number."""
    client, staged, asked = gateway
    for path in ("models/upload_stream", "models/upload_and_convert"):
        answer = post(client, path, {"name": "m", "filename": "m.onnx", "workspace_id": "5"})
        assert answer.status_code == 200, answer.text
        assert asked[-1].workspace_id == 5
    metadata = {"name": "m", "workspace_id": "5", "conversion": {"framework": "onnx"}}
    answer = post(client, "models/upload_and_convert", {"metadata": json.dumps(metadata)})
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
    assert answer.json()["msg"] == ("metadata.workspace_id: Input should be a valid number, not a string: send 5"
                                    " without quotes")
    assert len(staged) == 3 and len(asked) == 2  # the third staged (and removed), not forwarded
