"""The gateway's route cache (services/gateway/inference.py, RouteCache): a running deployment's route older than
ROUTE_TTL is served while it is refreshed in the background, and only a caller who passed `authorize` starts that
refresh. An outsider's token resolves to NotFound, which would drop the route for every member (each of their next
requests paying a fresh resolve, as often as the outsider likes)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

import services.gateway.inference as inference
from services.gateway.inference import ROUTE_TTL, RouteCache
from shared.authz import Principal, deployment_not_found
from shared.errors import NotFound
from shared.messages.deployer import DeploymentRoute
from tests.unit.test_gateway_route_starting import members

ROUTE = DeploymentRoute(deployment_id=1, name="d", pipeline_name="p", workspace_id=1, status="Running",
                        pipeline_version="v1", input_schema=None)
RUNTIME = SimpleNamespace(broker=None, settings=SimpleNamespace(nats=SimpleNamespace(request_timeout=1.0)))
MEMBERS = {"member-token": "alice"}  # the token each workspace-1 member calls with; anyone else is an outsider


def _principal(user: str) -> Principal:
    return Principal(subject=user, kind="user", admin=False, client_id="c", username=user, issued_at=0.0)


@pytest.fixture
def resolved(monkeypatch) -> list[str]:
    """The deployer and auth over the bus, as they answer: a resolve with a non-member's token is NotFound.
    Returns the tokens each resolve was asked with."""
    tokens: list[str] = []

    async def request(broker, subject, message, *, token, timeout, reply_model):
        tokens.append(token)
        await asyncio.sleep(0)
        if token not in MEMBERS:
            raise deployment_not_found(message.name)
        return ROUTE

    monkeypatch.setattr(inference, "request", request)
    members(monkeypatch, MEMBERS)
    return tokens


async def _settle(cache: RouteCache) -> None:
    await asyncio.gather(*cache.refreshing.values(), return_exceptions=True)
    await asyncio.sleep(0)


async def test_an_outsider_on_a_stale_route_gets_404_and_leaves_the_route_cached(resolved):
    cache = RouteCache()
    stale = time.monotonic() - ROUTE_TTL - 1
    cache.routes["d"] = (stale, ROUTE)
    for _ in range(3):
        with pytest.raises(NotFound, match="deployment 'd' not found"):
            await cache.reach(RUNTIME, _principal("mallory"), "outsider-token", "d")
        await _settle(cache)
    assert resolved == []  # no resolve with the outsider's token at all
    assert cache.routes["d"] == (stale, ROUTE)  # still there for the members

    # a member is served the cached route at once, and their call refreshes it in the background
    assert await cache.reach(RUNTIME, _principal("alice"), "member-token", "d") == ROUTE
    assert "d" in cache.refreshing
    await _settle(cache)
    assert resolved == ["member-token"]
    assert cache.routes["d"][0] > stale and cache.routes["d"][1] == ROUTE


async def test_a_fresh_route_is_not_refreshed_and_an_uncached_one_is_resolved_inline(resolved):
    cache = RouteCache()
    assert await cache.reach(RUNTIME, _principal("alice"), "member-token", "d") == ROUTE
    assert resolved == ["member-token"] and not cache.refreshing
    with pytest.raises(NotFound):  # a fresh cached route still answers an outsider as not found
        await cache.reach(RUNTIME, _principal("mallory"), "outsider-token", "d")
    assert resolved == ["member-token"] and "d" in cache.routes


async def test_refused_requests_at_once_ask_for_the_route_again_once(resolved):
    """RouteCache.fresh (an OIP output the cached route lacks, services/gateway/oip.check_outputs): the route a
    model swap made is resolved, and requests refused at once share one resolve with the refresh under way."""
    cache = RouteCache()
    older = ROUTE.model_copy(update={"pipeline_version": "v0"})
    cache.routes["d"] = (time.monotonic() - ROUTE_TTL - 1, older)  # cached before a swap
    member = _principal("alice")
    assert await cache.reach(RUNTIME, member, "member-token", "d") == older  # served; its refresh started
    routes = await asyncio.gather(*(cache.fresh(RUNTIME, member, "member-token", "d") for _ in range(5)))
    assert routes == [ROUTE] * 5 and resolved == ["member-token"]  # the refresh under way, joined
    await _settle(cache)
    cache.routes["d"] = (time.monotonic(), older)  # a swap within ROUTE_TTL of the last resolve: asked all the same
    routes = await asyncio.gather(*(cache.fresh(RUNTIME, member, "member-token", "d") for _ in range(5)))
    assert routes == [ROUTE] * 5 and resolved == ["member-token"] * 2 and cache.routes["d"][1] == ROUTE
    await _settle(cache)
    assert not cache.refreshing
