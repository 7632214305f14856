"""An inference to a deployment whose replicas all crash-loop is answered 503 `deployment_crash_loop`, saying it is
failing to start and why (the deployer's reason), with the deployer's back-off as Retry-After, in the three formats
(records JSON, Arrow, the Open Inference Protocol), through the gateway's fast path (services/gateway/inference.py
not_serving, services/gateway/errors.py). Before 2026-12-05 it was 'deployment X is starting; retry shortly' for as
long as the loop lasted (the deployer's route said Starting: tests/unit/test_deployer_route_crash_loop.py). A
starting deployment keeps its answer (tests/unit/test_gateway_route_starting.py). Stand-in bus and deployer."""

from __future__ import annotations

import httpx
import orjson
import pyarrow as pa
import pytest
from fastapi import FastAPI

from services.gateway.inference import ARROW_FILE, CRASH_LOOP, EngineReply, Inference, InferenceFastPath, NoEngine
from shared.arrow_codec import to_ipc_file
from shared.authz import Principal
from tests.unit.test_gateway_route_starting import ALICE, RUNTIME, STARTING, _engine, deployer_says

REASON = ("CrashLoopBackOff: railyard-engine: model 'm' failed to load: out of memory (3 exits in a row soon after "
          "start); restarted in 12 s")
LOOPING = STARTING.model_copy(update={"status": "Error", "reason": REASON, "retry_after": 11.6})


APP = Principal(subject="app", kind="inference", admin=False, client_id="c", username=None, issued_at=0.0,
                workspace_id=1)  # an inference token of the deployment's workspace: handed to an external app
CALLER = [ALICE]


class Verifier:
    async def verify(self, token: str):
        return CALLER[0]


@pytest.fixture
def routes(monkeypatch) -> list[object]:
    """The deployer answers every resolve with routes[0]; every caller is a member of every workspace."""
    answer = [LOOPING]
    deployer_says(monkeypatch, lambda: answer[0])
    CALLER[0] = ALICE  # each test starts as a member

    async def no_responders(payload: bytes) -> EngineReply:
        raise NoEngine("deployment 'd' has no running engine; retry shortly")  # as _ask_engine

    _engine(monkeypatch, no_responders)
    return answer


async def _post(path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    fast = InferenceFastPath(FastAPI(), Inference(RUNTIME), Verifier, 1 << 20, 5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://gateway") as client:
        return await client.post(path, content=content, headers={"Authorization": "Bearer t", **headers})


FORMATS = {
    "records": ("/v1/api/pipelines/infer/d/p", orjson.dumps([{"x": 1.0}]), {"Content-Type": "application/json"}),
    "arrow": ("/v1/api/pipelines/infer/d/p", to_ipc_file(pa.table({"x": pa.array([1.0])})),
              {"Content-Type": ARROW_FILE, "Accept": ARROW_FILE}),
    "oip": ("/v2/models/d/infer", orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32",
                                                             "data": [1.0]}]}), {"Content-Type": "application/json"}),
}


@pytest.mark.parametrize("form", list(FORMATS))
async def test_a_crash_loop_is_a_typed_503_with_the_reason_and_the_wait(routes, form):
    answer = await _post(*FORMATS[form])
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["code"] == CRASH_LOOP == "deployment_crash_loop", body
    message = body["error"] if form == "oip" else body["msg"]  # OIP's shape: its `error`
    assert message.startswith("deployment 'd' is failing to start: its engine replicas keep exiting soon after they "
                              "start (crash loop): " + REASON), message
    assert "starts a replica again in 12 s" in message and "redeploy" in message, message
    assert answer.headers["Retry-After"] == "12", answer.headers  # the deployer's 11.6 s, rounded up


@pytest.mark.parametrize("form", list(FORMATS))
async def test_a_loop_whose_replica_is_starting_now_says_so_with_a_short_retry(routes, form):
    routes[0] = LOOPING.model_copy(update={"retry_after": None})
    answer = await _post(*FORMATS[form])
    assert answer.status_code == 503 and answer.json()["code"] == CRASH_LOOP, answer.text
    assert "a replica is starting again now" in answer.text and answer.headers["Retry-After"] == "1", answer.text


async def test_a_starting_deployment_keeps_its_answer(routes):
    routes[0] = STARTING
    answer = await _post(*FORMATS["records"])
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
    assert answer.json() == {"code": "unavailable", "msg": "deployment 'd' is starting; retry shortly"}


@pytest.mark.parametrize("form", list(FORMATS))
async def test_an_inference_token_gets_the_code_and_the_wait_not_the_reason(routes, form):
    """The reason is the last line of a replica's log (a step's exception, the platform's paths and hosts): a member
    reads it (here and in status/get_deployment); an inference token, handed to an external application, gets the
    same 503, code and Retry-After without it."""
    CALLER[0] = APP
    answer = await _post(*FORMATS[form])
    assert answer.status_code == 503 and answer.json()["code"] == CRASH_LOOP, answer.text
    message = answer.json()["error" if form == "oip" else "msg"]
    assert message.startswith("deployment 'd' is failing to start: its engine replicas keep exiting soon after they "
                              "start (crash loop). Retry later (the deployer starts a replica again in 12 s)"), message
    assert "member of its workspace" in message and answer.headers["Retry-After"] == "12", answer.text
    assert "CrashLoopBackOff" not in answer.text and "out of memory" not in answer.text, answer.text
