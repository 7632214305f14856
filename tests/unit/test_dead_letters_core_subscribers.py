"""`railyard dead-letters replay` publishes a dead letter on its original subject with `Railyard-Replay-For` naming the
durable that gave up on it: the subject's other durables acknowledge it unread (shared/consumers.py), and its core
NATS subscribers (VerifierFeed's caches of `events.user.deactivated`, `events.auth.tokens_revoked` and
`events.auth.signing_key_rotated`, in every service and the gateway) ignore it (shared.dead_letters.ignoring_replays):
they applied the original when it was published. Before, every service's cache applied a lineage dead letter of one
a second time."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from shared import subjects
from shared.authz import VerifierFeed
from shared.dead_letters import REPLAY_FOR_HEADER, REPLAY_HEADER, ignoring_replays, is_replay
from shared.messages.auth import Revocations

EVENTS = {subjects.EVENT_USER_DEACTIVATED: {"user_id": "u1", "revoked_before": time.time()},
          subjects.EVENT_TOKENS_REVOKED: {"subject": "u2", "revoked_before": time.time()},
          subjects.EVENT_SIGNING_KEY_ROTATED: {"kid": "k2"}}
REPLAY = {REPLAY_HEADER: "workflow_lineage/3", REPLAY_FOR_HEADER: "lineage-events", "Railyard-Trace": "t"}


class Verifier:
    """What the feed calls on its verifier, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def read_revocations_from(self, fetch) -> None:
        pass

    position = None  # (no read of changes: the feed reads the whole list)

    def set_revocations(self, users, sessions=None, session_expiry=None, position=None) -> None:
        pass

    def keys_told(self, fingerprint) -> None:
        pass

    @property
    def revocations_read(self) -> bool:
        return True

    def revoke(self, user_id: str, before: float) -> None:
        self.calls.append(("revoke", user_id))

    def revoke_session(self, session: str, before: float, expires: float | None = None) -> None:
        self.calls.append(("revoke_session", session))

    async def refresh_keys(self) -> None:
        self.calls.append(("refresh_keys",))


class Bus:
    """A nats client whose core subscriptions are kept, for the test to deliver to."""

    def __init__(self) -> None:
        self.callbacks: dict[str, object] = {}

    async def subscribe(self, subject, cb):
        self.callbacks[subject] = cb

        class _Subscription:
            async def unsubscribe(self):
                pass

        return _Subscription()


def message(subject: str, headers: dict | None) -> SimpleNamespace:
    return SimpleNamespace(subject=subject, data=json.dumps(EVENTS[subject]).encode(), headers=headers, reply="")


async def started() -> tuple[VerifierFeed, Verifier, Bus]:
    async def fetch():
        return Revocations(users={})

    verifier, bus = Verifier(), Bus()
    feed = VerifierFeed(verifier, fetch, 3600.0)
    await feed.start(bus)
    return feed, verifier, bus


async def test_the_caches_ignore_a_dead_letters_replay():
    """Every core subscription the feed makes (the three event subjects) ignores a replay; the same event published
    as it first is (no replay header, or other headers only) is applied."""
    feed, verifier, bus = await started()
    try:
        assert set(bus.callbacks) == set(EVENTS)
        for subject, callback in bus.callbacks.items():
            await callback(message(subject, REPLAY))
        assert verifier.calls == []  # on the old code: revoke u1, revoke u2, refresh_keys
        for subject, callback in bus.callbacks.items():
            await callback(message(subject, {"Nats-Msg-Id": "x", "Railyard-Trace": "t"}))
            await callback(message(subject, None))
        assert sorted(verifier.calls) == sorted([("revoke", "u1"), ("revoke", "u2"), ("refresh_keys",)] * 2)
    finally:
        await feed.stop()


async def test_ignoring_replays_passes_everything_else_on():
    seen = []

    async def on_event(msg):
        """An event's handler."""
        seen.append(msg.headers)

    wrapped = ignoring_replays(on_event)
    assert wrapped.__name__ == "on_event" and wrapped.__doc__ == "An event's handler."
    for headers in (None, {}, {REPLAY_HEADER: "auth/1"}, {"Railyard-Replay-Forward": "x"}):
        await wrapped(SimpleNamespace(headers=headers))
    await wrapped(SimpleNamespace(headers={REPLAY_FOR_HEADER: "auth-model-uploaded"}))
    assert seen == [None, {}, {REPLAY_HEADER: "auth/1"}, {"Railyard-Replay-Forward": "x"}]
    assert is_replay({REPLAY_FOR_HEADER: ""}) and not is_replay(None) and not is_replay({})
