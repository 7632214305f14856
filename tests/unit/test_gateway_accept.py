"""pipelines/get_logs and the records inference route answer the type their Accept header asks among those they have
(JSON, Arrow file or stream), and 406 `not_acceptable` when the header lists none of them, as datasets/get_rows does
(b3e74ab3; services/gateway/accept.py reads the header for all three). Session 39: `Accept: text/csv` was answered
JSON with a 200 by both. `*/*` or no Accept (what Wallaroo's clients, requests and curl send) stays JSON. The routes
before the bus: the log store's and the engine's answers are faked."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import services.gateway.inference as inference
import services.gateway.logs as logs
from services.gateway.accept import answer_type
from services.gateway.http import create_app
from services.gateway.inference import ARROW_FILE, ARROW_STREAM, EngineReply, Inference
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.authz import Principal
from shared.errors import NotAcceptable
from shared.messages.logs import LogPage
from shared.settings import Settings
from shared.table_transport import META_HEADER, PAGE_HEADER
from tests.unit.test_gateway_route_starting import ALICE, RUNNING, RUNTIME, deployer_says

LOGS = "/v1/api/pipelines/get_logs"
USER = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="cli", username="alice",
                 issued_at=0.0)
REFUSED = ["text/csv", "text/html", "text/csv, text/plain;q=0.5", "image/*", "application/vnd.apache.parquet"]
ANSWERED = [
    (None, "application/json"),
    ("*/*", "application/json"),
    ("application/json; format=pandas-records", "application/json"),  # the seed's
    ("text/csv, application/*;q=0.1", "application/json"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),  # a browser's
    ("text/html, application/vnd.apache.arrow.stream", ARROW_STREAM),
    (ARROW_FILE, ARROW_FILE),
    ("application/vnd.apache.arrow.file, */*", ARROW_FILE),  # the whole header was compared: JSON
    ("application/json, application/vnd.apache.arrow.file", "application/json"),  # the first listed
]


@pytest.fixture(scope="module")
def gateway_app():
    """The gateway app and its client, built once for the module: a build (~150 routes) took ~0.3 s of CPU, for
    each test. Nothing of a request stays in the app (no cookie is set, the token buckets are the token routes');
    each test gets the log store's requests list emptied (`gateway`)."""
    asked: list[bytes] = []

    class Verifier:
        async def verify(self, token):
            return USER

    async def raw_request(nc, subject, body, *, token, timeout):
        asked.append(body)
        page = LogPage(status="All", rows=1)
        return SimpleNamespace(headers={PAGE_HEADER: page.model_dump_json()},
                               data=to_ipc_stream(pa.table({"time": pa.array([1], pa.int64())})))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logs, "raw_request", raw_request)
        broker = SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(connection=None)))
        app = create_app(SimpleNamespace(settings=Settings(), extras={"verifier": Verifier()}, broker=broker,
                                         objects=None))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, asked


@pytest.fixture
def gateway(gateway_app):
    client, asked = gateway_app
    asked.clear()
    client.cookies.clear()
    return client, asked


@pytest.mark.parametrize("accept", REFUSED)
def test_get_logs_answers_406_before_the_log_store_is_asked(gateway, accept):
    client, asked = gateway
    answer = client.post(LOGS, json={"pipeline_id": "p", "workspace_id": 1},
                         headers={"Accept": accept, "Authorization": "Bearer t"})
    assert answer.status_code == 406, answer.text
    assert answer.json()["code"] == "not_acceptable"
    assert answer.json()["msg"].startswith("pipelines/get_logs answers application/json, " + ARROW_FILE)
    assert asked == []


@pytest.mark.parametrize(("accept", "answered"), ANSWERED)
def test_get_logs_answers_a_type_it_has(gateway, accept, answered):
    client, asked = gateway
    headers = {"Authorization": "Bearer t"} | ({"Accept": accept} if accept else {})
    answer = client.post(LOGS, json={"pipeline_id": "p", "workspace_id": 1}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].split(";")[0] == answered and len(asked) == 1
    rows = orjson.loads(answer.content) if answered == "application/json" else from_ipc(answer.content).to_pylist()
    assert rows == [{"time": 1}] and answer.headers["x-iteration-status"] == "All"


@pytest.fixture
def engine(monkeypatch) -> list[bytes]:
    sent: list[bytes] = []

    async def ask_engine(runtime, deployment: str, payload: bytes) -> EngineReply:
        sent.append(payload)
        return EngineReply({META_HEADER: "{}"}, to_ipc_stream(pa.table({"y": pa.array([2.0])})))

    deployer_says(monkeypatch, RUNNING)
    monkeypatch.setattr(inference, "_ask_engine", ask_engine)
    return sent


@pytest.mark.parametrize("accept", REFUSED)
async def test_inference_answers_406_before_the_body_is_read(engine, accept):
    with pytest.raises(NotAcceptable) as refused:
        await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", accept, b"not even JSON")
    assert refused.value.status == 406 and refused.value.code == "not_acceptable"
    assert refused.value.msg.startswith(f"pipelines/infer answers application/json, {ARROW_FILE}, {ARROW_STREAM};")
    assert engine == []


@pytest.mark.parametrize(("accept", "answered"), ANSWERED)
async def test_inference_answers_a_type_it_has(engine, accept, answered):
    body, media, _ = await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", accept or "",
                                                  orjson.dumps([{"x": 1.0}]))
    assert media == answered and len(engine) == 1
    if media == "application/json":
        assert [row["out"] for row in orjson.loads(body)] == [{"y": 2.0}]
    else:
        assert from_ipc(body).column("out.y").to_pylist() == [2.0]


def test_the_first_type_listed_that_a_route_has_decides():
    served = ("application/json", ARROW_FILE)
    assert answer_type("", served, "r") == answer_type(" , ", served, "r") == "application/json"
    assert answer_type(f"text/csv, {ARROW_FILE.upper()};q=0.2, application/json", served, "r") == ARROW_FILE
    with pytest.raises(NotAcceptable, match=r"^r answers application/json, application/vnd\.apache\.arrow\.file; "):
        answer_type("text/*", served, "r")


def test_the_sdk_raises_a_typed_406():
    """A 406 was the generic APIError, where every other status the API answers a client's mistake with has its
    class (railyard_client/errors.py)."""
    from railyard_client import APIError
    from railyard_client import NotAcceptable as ClientNotAcceptable
    from railyard_client.errors import error_from_answer

    raised = error_from_answer(406, {"code": "not_acceptable", "msg": "pipelines/get_logs answers ..."})
    assert type(raised) is ClientNotAcceptable and isinstance(raised, APIError)
    assert (raised.status, raised.code, raised.message) == (406, "not_acceptable", "pipelines/get_logs answers ...")


@pytest.mark.parametrize("accept", REFUSED[:2])
async def test_the_fast_path_answers_406_before_reading_the_body(engine, accept):
    """The route is served by InferenceFastPath, which read the whole body before Inference.run looked at Accept:
    a client asking for CSV uploaded its rows (up to the body limit) to be told 406. Now the 406 comes before the
    first body message is received (the connection closed: the body is never read)."""
    from fastapi import FastAPI

    from services.gateway.inference import InferenceFastPath

    class Verifier:
        async def verify(self, token):
            return ALICE

    received, sent = [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": orjson.dumps([{"x": 1.0}]), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/api/pipelines/infer/d/p", "headers": [
        (b"authorization", b"Bearer t"), (b"content-type", b"application/json"), (b"accept", accept.encode())]}
    await InferenceFastPath(FastAPI(), Inference(RUNTIME), Verifier, 1 << 20, 5.0)(scope, receive, send)
    assert sent[0]["status"] == 406 and received == [] and engine == []
    assert orjson.loads(sent[1]["body"])["code"] == "not_acceptable"
    scope["headers"][2] = (b"accept", b"*/*")
    sent.clear()
    await InferenceFastPath(FastAPI(), Inference(RUNTIME), Verifier, 1 << 20, 5.0)(scope, receive, send)
    assert sent[0]["status"] == 200 and received == [1] and len(engine) == 1
