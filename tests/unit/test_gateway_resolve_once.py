"""Concurrent requests to a deployment that is not Running share one resolve (services/gateway/inference.py,
RouteCache._resolve_shared; docs/inference.md, "Deployments"). A route not Running is resolved for every request, and
the deployer asks every replica for each resolve: before 2026-12-05, N requests at once to a starting deployment were
N resolves. The later requests now wait for the first's; its error is shared by the requests with its token only
(a resolve answers by its token: an outsider's is NotFound), and kept for nobody after."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import services.gateway.inference as inference
from services.gateway.inference import EngineReply, Inference, NoEngine, RouteCache
from shared.authz import Principal, deployment_not_found
from shared.errors import NotFound, Unavailable
from tests.unit.test_gateway_route_starting import ALICE, RUNTIME, STARTING, members

N = 20
MEMBERS = {"t": "alice", "t2": "alice"}  # alice calls with either token; anything else is an outsider's


@pytest.fixture
def deployer(monkeypatch) -> dict:
    """The deployer: each resolve takes a moment (the replicas' probes) and answers as `answers` says: a route, or an
    error to raise; a non-member's token is NotFound. Returns the state: `tokens` of the resolves asked."""
    state = {"tokens": [], "answer": STARTING, "gate": None}

    async def request(broker, subject, message, *, token, timeout, reply_model):
        state["tokens"].append(token)
        if state["gate"] is not None:
            await state["gate"].wait()
        await asyncio.sleep(0.01)
        if token not in MEMBERS:
            raise deployment_not_found(message.name)
        if isinstance(state["answer"], Exception):
            raise state["answer"]
        return state["answer"]

    async def no_responders(runtime, deployment: str, payload: bytes) -> EngineReply:
        raise NoEngine(f"deployment {deployment!r} has no running engine; retry shortly")  # as _ask_engine

    monkeypatch.setattr(inference, "request", request)
    members(monkeypatch, MEMBERS)
    monkeypatch.setattr(inference, "_ask_engine", no_responders)
    return state


async def _turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _infer(served: Inference, token: str = "t") -> BaseException | tuple:
    try:
        return await served.run(ALICE, token, "d", "p", "application/json", "", orjson.dumps([{"x": 1.0}]))
    except Exception as exc:  # noqa: BLE001 - the answer
        return exc


async def test_concurrent_requests_to_a_starting_deployment_share_one_resolve(deployer):
    served = Inference(RUNTIME)
    answers = await asyncio.gather(*(_infer(served) for _ in range(N)))
    assert deployer["tokens"] == ["t"], deployer["tokens"]  # N before 2026-12-05
    assert all(isinstance(a, Unavailable) and str(a) == "deployment 'd' is starting; retry shortly"
               for a in answers), answers  # each one's answer as when it resolved alone
    assert not served.cache.resolving
    await _infer(served)  # done: the next request resolves afresh (a route not Running is not cached for it)
    assert deployer["tokens"] == ["t", "t"]


async def test_an_error_is_shared_by_those_waiting_and_not_kept(deployer):
    served = Inference(RUNTIME)
    deployer["answer"] = Unavailable("the deployer's read timed out")
    answers = await asyncio.gather(*(_infer(served) for _ in range(N)))
    assert deployer["tokens"] == ["t"]
    assert all(isinstance(a, Unavailable) and str(a) == "the deployer's read timed out" for a in answers), answers
    deployer["answer"] = STARTING  # not cached: the next request asks again, and gets the deployer's word now
    answer = await _infer(served)
    assert str(answer) == "deployment 'd' is starting; retry shortly" and deployer["tokens"] == ["t", "t"]


async def test_another_tokens_failure_is_not_shared(deployer):
    """An outsider's resolve (NotFound) under way when a member's requests come: the members are not told 404, they
    resolve with their own token (one for all of them: they join each other's); the outsider's 404 is its own."""
    cache = RouteCache()
    deployer["gate"] = asyncio.Event()
    outsider = asyncio.create_task(cache.route(RUNTIME, "d", "outsider"))
    await _turns()
    assert deployer["tokens"] == ["outsider"]
    members = [asyncio.create_task(cache.route(RUNTIME, "d", "t")) for _ in range(N)]
    await _turns()
    deployer["gate"].set()
    with pytest.raises(NotFound):
        await outsider
    routes = await asyncio.gather(*members)
    assert all(route == STARTING for route in routes)
    assert deployer["tokens"] == ["outsider", "t"]  # the members' requests: one of their own
    # a member's failure is shared with the requests of its token only
    deployer["gate"], deployer["answer"] = asyncio.Event(), Unavailable("restore failed")
    deployer["tokens"].clear()
    first = [asyncio.create_task(cache.route(RUNTIME, "d", "t")) for _ in range(3)]
    await _turns()
    other = asyncio.create_task(cache.route(RUNTIME, "d", "outsider"))
    await _turns()
    deployer["gate"].set()
    assert all(isinstance(a, Unavailable) for a in await asyncio.gather(*first, return_exceptions=True))
    with pytest.raises(NotFound):  # not the member's words: its own resolve's
        await other
    assert deployer["tokens"] == ["t", "outsider"]


async def test_a_waiters_cancel_does_not_end_the_resolve_for_the_others(deployer):
    cache = RouteCache()
    deployer["gate"] = asyncio.Event()
    first = asyncio.create_task(cache.route(RUNTIME, "d", "t"))
    await _turns()
    rest = [asyncio.create_task(cache.route(RUNTIME, "d", "t")) for _ in range(3)]
    await _turns()
    first.cancel()  # the first caller went (its client disconnected)
    deployer["gate"].set()
    assert await asyncio.gather(*rest) == [STARTING] * 3 and deployer["tokens"] == ["t"]


async def test_a_failure_on_a_cached_running_route_joins_no_resolve_started_before_it(deployer, monkeypatch):
    """A Running route from the cache whose engine had no responder asks what the deployer says from then on: a
    resolve started before the request does not answer it."""
    import time

    cache = RouteCache()
    deployer["gate"], engine = asyncio.Event(), asyncio.Event()
    earlier = asyncio.create_task(cache.route(RUNTIME, "d", "t"))  # a request for a route not cached, under way
    await _turns()

    async def no_responders(runtime, deployment: str, payload: bytes) -> EngineReply:
        await engine.wait()  # the three are sent, then the queue has no responder for any (coalesced, say)
        raise NoEngine(f"deployment {deployment!r} has no running engine; retry shortly")

    monkeypatch.setattr(inference, "_ask_engine", no_responders)
    served = Inference(RUNTIME)
    served.cache = cache
    cache.routes["d"] = (time.monotonic(), STARTING.model_copy(update={"status": "Running"}))
    later = [asyncio.create_task(_infer(served)) for _ in range(3)]
    await _turns()
    engine.set()
    await _turns()
    deployer["gate"].set()
    await earlier
    answers = await asyncio.gather(*later)
    assert all(str(a) == "deployment 'd' is starting; retry shortly" for a in answers), answers
    assert deployer["tokens"] == ["t", "t"]  # the earlier request's, then one for the three sent after it


async def test_two_tokens_of_one_member_each_resolve_when_they_fail(deployer):
    """Principal differs from token: the rule is the token's (what the deployer answers by)."""
    cache = RouteCache()
    assert isinstance(ALICE, Principal)
    deployer["gate"], deployer["answer"] = asyncio.Event(), Unavailable("x")
    a = asyncio.create_task(cache.route(RUNTIME, "d", "t"))
    await _turns()
    b = asyncio.create_task(cache.route(RUNTIME, "d", "t2"))
    await _turns()
    deployer["gate"].set()
    for task in (a, b):
        with pytest.raises(Unavailable):
            await task
    assert deployer["tokens"] == ["t", "t2"]
