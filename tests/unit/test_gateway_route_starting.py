"""A route the deployer calls starting does not refuse a request the engine can answer (services/gateway/inference.py,
Inference.run). The deployer's resolve says "Starting" when no replica answers its status probe within 0.5 s
(services/deployer/backend.py, replica_state), which a busy replica right after a model swap does under load: the
records and Arrow route then answered 503 "deployment ... is starting; retry shortly" while the replica served
(tests/integration/test_infer_coalesced_versions.py, once in 14 runs at load ~19). The request is sent as the Open
Inference Protocol's already was; a deployment with no replica serving still gets its 503 from the deployer's word,
once the engine's queue has no responder: the word of the request's own resolve, not a second one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import orjson
import pytest

import services.gateway.inference as inference
from services.gateway.inference import EngineReply, Inference, NoEngine
from shared.arrow_codec import to_ipc_stream
from shared.authz import Principal
from shared.errors import Unavailable
from shared.messages.deployer import DeploymentRoute
from shared.table_transport import META_HEADER

STARTING = DeploymentRoute(deployment_id=1, name="d", pipeline_name="p", workspace_id=1, status="Starting",
                           pipeline_version="v2", input_schema=None, batchable=False)
RUNTIME = SimpleNamespace(broker=None, settings=SimpleNamespace(nats=SimpleNamespace(request_timeout=1.0),
                                                                gateway=SimpleNamespace(max_body_bytes=1 << 20)))
RUNNING = STARTING.model_copy(update={"status": "Running"})
ALICE = Principal(subject="alice", kind="user", admin=False, client_id="c", username="alice", issued_at=0.0)


def deployer_says(monkeypatch, route: DeploymentRoute | Callable[[], DeploymentRoute]) -> list[str]:
    """The gateway's deployer answers every resolve with `route` (or what it returns then, a callable); every caller
    is a member of every workspace (the bus's answers in services/gateway/inference.py replaced). Returns the names
    resolved."""
    resolved: list[str] = []

    async def request(broker, subject, message, *, token, timeout, reply_model):
        resolved.append(message.name)
        await asyncio.sleep(0)
        return route() if callable(route) else route

    monkeypatch.setattr(inference, "request", request)
    members(monkeypatch)
    return resolved


def members(monkeypatch, by_token: dict[str, str] | None = None) -> None:
    """Auth's answers to the gateway's membership checks (services/gateway/inference.py's bus_membership replaced):
    with `by_token`, the caller is a member of workspace 1 when the token is one of the user's (token: user), and of
    no other; without, every caller is a member of every workspace."""
    def bus_membership(broker, token, timeout):
        async def lookup(user_id: str, workspace_id: int):
            if by_token is None or by_token.get(token) == user_id and workspace_id == 1:
                return {"role": "member"}
            return None
        return lookup

    monkeypatch.setattr(inference, "bus_membership", bus_membership)


@pytest.fixture
def deployer(monkeypatch) -> list[str]:
    """The deployer answers every resolve "Starting"; alice is a member of workspace 1. Returns the names resolved."""
    return deployer_says(monkeypatch, STARTING)


def _engine(monkeypatch, answer) -> list[bytes]:
    sent: list[bytes] = []

    async def ask_engine(runtime, deployment: str, payload: bytes) -> EngineReply:
        sent.append(payload)
        return await answer(payload)

    monkeypatch.setattr(inference, "_ask_engine", ask_engine)
    return sent


async def test_a_route_said_starting_is_sent_and_answered_by_a_serving_replica(deployer, monkeypatch):
    import pyarrow as pa

    async def serving(payload: bytes) -> EngineReply:
        return EngineReply({META_HEADER: "{}"}, to_ipc_stream(pa.table({"y": pa.array([2.0])})))

    sent = _engine(monkeypatch, serving)
    body, media, _ = await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", "",
                                                  orjson.dumps([{"x": 1.0}]))
    assert sent and media == "application/json"
    assert [row["out"] for row in orjson.loads(body)] == [{"y": 2.0}]


async def test_with_no_replica_serving_the_deployers_word_is_the_503(deployer, monkeypatch):
    async def no_responders(payload: bytes) -> EngineReply:
        raise NoEngine("deployment 'd' has no running engine; retry shortly")  # as _ask_engine

    sent = _engine(monkeypatch, no_responders)
    with pytest.raises(Unavailable, match="^deployment 'd' is starting; retry shortly$"):
        await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", "", orjson.dumps([{"x": 1.0}]))
    # one resolve: the route not Running was asked for this request, so it is the deployer's word already (before
    # 2026-12-05 the deployer was asked again once the engine had no responder: two resolves a request)
    assert len(sent) == 1 and deployer == ["d"]


async def test_a_cached_running_route_with_no_replica_asks_the_deployer_once(deployer, monkeypatch):
    """A Running route may be the cache's, from before the replicas went: the deployer's word now is the answer."""
    import time

    async def no_responders(payload: bytes) -> EngineReply:
        raise NoEngine("deployment 'd' has no running engine; retry shortly")  # as _ask_engine

    sent = _engine(monkeypatch, no_responders)
    served = Inference(RUNTIME)
    served.cache.routes["d"] = (time.monotonic(), STARTING.model_copy(update={"status": "Running"}))
    with pytest.raises(Unavailable, match="^deployment 'd' is starting; retry shortly$"):
        await served.run(ALICE, "t", "d", "p", "application/json", "", orjson.dumps([{"x": 1.0}]))
    assert len(sent) == 1 and deployer == ["d"]  # the cached route, then the deployer asked after the engine


async def test_a_replicas_own_503_on_a_starting_route_keeps_its_words(deployer, monkeypatch):
    """A replica took the request and answered 503 itself: its words, not the deployer's "starting"."""
    async def replica_unavailable(payload: bytes) -> EngineReply:
        raise Unavailable("the sandbox cannot start a worker now")

    _engine(monkeypatch, replica_unavailable)
    with pytest.raises(Unavailable, match="^the sandbox cannot start a worker now$"):
        await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", "", orjson.dumps([{"x": 1.0}]))
    assert deployer == ["d"]


async def test_the_documented_oip_route_answers_as_the_fast_path(deployer, monkeypatch):
    """`POST /v2/models/{model}/infer` of the application itself (the fast path in front serves it in the gateway;
    this route documents it) is Inference.run_oip: no replica serving is the deployer's 'starting' in OIP's shape.
    Its own copy said 'has no running engine' without asking the deployer (before 2026-12-05)."""
    import httpx
    from fastapi import FastAPI

    async def no_responders(payload: bytes) -> EngineReply:
        raise NoEngine("deployment 'd' has no running engine; retry shortly")  # as _ask_engine

    sent = _engine(monkeypatch, no_responders)
    app = FastAPI()
    inference.add_inference_routes(app, RUNTIME, lambda: ALICE, Inference(RUNTIME))
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        answer = await client.post("/v2/models/d/infer", json=body, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "deployment 'd' is starting; retry shortly", answer.text  # OIP's shape
    assert answer.headers.get("Retry-After") == "1", answer.headers
    assert len(sent) == 1 and deployer == ["d"]
