"""The gateway's cached inference membership and `events.workspace.membership_changed` (services/gateway/app.py's
forget_membership, services/gateway/inference.py's RouteCache.authorize).

Auth publishes the event from its outbox after the removal's commit, so a membership check sent after the gateway
heard the event reads the removal. A check already under way may have been read before the commit and be answered
after the event was heard (the answer and the event come from different publishers, and the gateway's event loop
may run the event's callback before the request's continuation): caching that answer kept a removed member
inferring for MEMBER_TTL (30 s) again, the very window the event closes. A check during which a membership changed
still answers its own request, but is not cached."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.gateway import inference as inference_module
from services.gateway.app import forget_membership
from services.gateway.inference import RouteCache
from shared.authz import KIND_USER, Principal
from shared.errors import NotFound

USER = "3f2a9c1e-0000-4000-8000-000000000002"
WORKSPACE = 7


def _runtime(cache: RouteCache) -> SimpleNamespace:
    return SimpleNamespace(extras={"inference": SimpleNamespace(cache=cache)}, broker=None,
                           settings=SimpleNamespace(nats=SimpleNamespace(request_timeout=1.0)))


PRINCIPAL = Principal(subject=USER, kind=KIND_USER, admin=False, client_id="sdk", username="bob", issued_at=0.0)
ROUTE = SimpleNamespace(name="shared-1", workspace_id=WORKSPACE)


@pytest.fixture
def auth(monkeypatch):
    """Auth's answers to auth.workspaces.check_member, one per check (None: not a member); `during` runs while a
    check is under way (after auth read the membership, before the gateway uses the answer)."""
    state = SimpleNamespace(answers=[], asked=0, during=None)

    def bus_membership(broker, token, timeout):
        async def lookup(user_id: str, workspace_id: int) -> str | None:
            state.asked += 1
            answer = state.answers.pop(0)
            if state.during is not None:
                during, state.during = state.during, None
                during()
            return answer

        return lookup

    monkeypatch.setattr(inference_module, "bus_membership", bus_membership)
    return state


async def test_a_membership_change_heard_while_a_check_is_under_way_is_not_cached_over(auth):
    cache = RouteCache()
    runtime = _runtime(cache)
    # read before the removal's commit, answered after the gateway heard the removal's event
    auth.answers = ["COLLABORATOR", None]
    auth.during = lambda: forget_membership(runtime, USER, WORKSPACE)
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)  # its own request is answered as read
    with pytest.raises(NotFound):  # the next one asks auth again: removed
        await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    assert auth.asked == 2


async def test_a_change_of_another_membership_meanwhile_only_costs_one_more_check(auth):
    cache = RouteCache()
    runtime = _runtime(cache)
    auth.answers = ["COLLABORATOR", "COLLABORATOR"]
    auth.during = lambda: forget_membership(runtime, "someone-else", WORKSPACE)
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)  # asked again, then cached
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    assert auth.asked == 2


async def test_a_cached_membership_is_dropped_by_the_event_and_kept_without_it(auth):
    cache = RouteCache()
    runtime = _runtime(cache)
    auth.answers = ["COLLABORATOR", None]
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)  # cached: auth not asked
    assert auth.asked == 1
    forget_membership(runtime, USER, WORKSPACE + 1)  # another workspace's change leaves this one cached
    await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    assert auth.asked == 1
    forget_membership(runtime, USER, WORKSPACE)
    with pytest.raises(NotFound):
        await cache.authorize(runtime, PRINCIPAL, "token", ROUTE)
    assert auth.asked == 2


def test_an_event_before_the_inference_path_exists_is_ignored():
    forget_membership(SimpleNamespace(extras={}), USER, WORKSPACE)  # the feed starts before create_app
