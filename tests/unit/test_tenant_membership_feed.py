"""VerifierFeed's membership hook (the gateway drops its cached inference membership on a membership change):
called with the event's user and workspace, a malformed event ignored, a dead letter's replay skipped, and not
subscribed at all for a verifier that caches no membership."""

from __future__ import annotations

import json

from shared import subjects
from shared.authz import TokenVerifier, VerifierFeed
from shared.dead_letters import REPLAY_FOR_HEADER
from shared.messages.auth import Revocations
from shared.settings import AuthSettings


class _Message:
    def __init__(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.data, self.headers = data, headers


class _Bus:
    """Enough of a nats client for VerifierFeed.start: the callbacks it subscribed, by subject."""

    def __init__(self) -> None:
        self.callbacks: dict[str, object] = {}

    async def subscribe(self, subject, cb):
        self.callbacks[subject] = cb

        class _Subscription:
            async def unsubscribe(self):
                pass

        return _Subscription()


async def _started(on_membership_changed=None) -> tuple[VerifierFeed, _Bus]:
    async def keys():
        return []

    async def fetch():
        return Revocations(users={})

    feed, bus = VerifierFeed(TokenVerifier(AuthSettings(), keys), fetch, 20.0), _Bus()
    await feed.start(bus, on_membership_changed=on_membership_changed)
    return feed, bus


async def test_a_membership_change_reaches_the_hook_and_a_bad_or_replayed_event_does_not():
    heard: list[tuple[str, int]] = []
    feed, bus = await _started(lambda user_id, workspace_id: heard.append((user_id, workspace_id)))
    try:
        deliver = bus.callbacks[subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED]
        user = "3f2a9c1e-0000-4000-8000-000000000001"
        await deliver(_Message(json.dumps({"workspace_id": 7, "user_id": user, "user_type": None}).encode()))
        await deliver(_Message(b"not json"))
        await deliver(_Message(b'{"user_id": "x"}'))  # no workspace
        await deliver(_Message(json.dumps({"workspace_id": 8, "user_id": user}).encode(), {REPLAY_FOR_HEADER: "1"}))
        assert heard == [(user, 7)]
    finally:
        await feed.stop()


async def test_without_a_hook_nothing_subscribes_to_membership_changes():
    feed, bus = await _started()
    try:
        assert subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED not in bus.callbacks
        assert subjects.EVENT_USER_DEACTIVATED in bus.callbacks
    finally:
        await feed.stop()
