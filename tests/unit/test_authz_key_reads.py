"""What a verifier reads from auth between tokens (shared/authz.py): the signing keys only when they are needed (a
token naming a key not known, `events.auth.signing_key_rotated`, or keys KEY_MAX_AGE old), not after every 20 s
revocation poll in every service; and revoked sessions forgotten from an expiry heap, not by a pass over every
session kept for each revocation event. Counted, never timed."""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from types import SimpleNamespace

import pytest

from shared import authz, subjects
from shared.authz import TokenVerifier, VerifierFeed
from shared.errors import Unauthorized
from shared.messages.auth import Revocations
from tests.unit.test_authz import KEY, OTHER_KEY, SETTINGS, jwks, make_token


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


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # noqa: ASYNC110 - counts of reads, no event to wait on
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_the_poll_reads_the_keys_when_never_read_or_old_not_at_every_poll(monkeypatch):
    """Ten services polling every 20 s each read the JWKS after each poll (a query of auth's database each), keys
    changed or not. Now: once at the start (never read), then only once they are KEY_MAX_AGE old; a key gone from
    the JWKS then is refused, also for a token verified (and cached) before."""
    monkeypatch.setattr(authz.random, "random", lambda: 0.0)
    answers = [jwks(KEY, "k1") + jwks(OTHER_KEY, "k2")]
    key_reads, polls = [], []

    async def keys():
        key_reads.append(1)
        return answers[-1]

    async def fetch():
        polls.append(1)
        return Revocations(users={})

    verifier = TokenVerifier(SETTINGS, keys)
    feed = VerifierFeed(verifier, fetch, 0.02)
    await feed.start(Bus())
    try:
        await _until(lambda: len(polls) >= 8, "8 polls")
        assert len(key_reads) == 1, f"{len(key_reads)} key reads in {len(polls)} polls"  # was: one a poll
        cut = make_token(OTHER_KEY, "k2")
        assert (await verifier.verify(cut)).subject == "u1"  # verified and cached
        answers.append(jwks(KEY, "k1"))  # k2 cut from the JWKS (no event: docs/security.md, "Task-run tokens")
        verifier._fetched_at -= authz.KEY_MAX_AGE  # the keys are KEY_MAX_AGE old
        await _until(lambda: len(key_reads) >= 2, "the old keys' read")
        seen = len(polls)
        await _until(lambda: len(polls) >= seen + 4, "4 more polls")
    finally:
        await feed.stop()
    assert len(key_reads) == 2, f"{len(key_reads)} key reads"
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
    with pytest.raises(Unauthorized, match="unknown key"):  # was: accepted from the cache until it expired
        await verifier.verify(cut)


async def test_rotation_and_an_unknown_key_still_read_the_keys_at_once(monkeypatch):
    """What keeps rotation working without the poll's reads: `events.auth.signing_key_rotated` reads the keys at once
    (a token of the new key passes with no read of its own), and a token of a key not known reads them (at most
    every KEY_REFETCH_INTERVAL), fresh keys or not."""
    answers = [jwks(KEY, "k1")]
    key_reads = []

    async def keys():
        key_reads.append(1)
        return answers[-1]

    async def fetch():
        return Revocations(users={})

    verifier, bus = TokenVerifier(SETTINGS, keys), Bus()
    feed = VerifierFeed(verifier, fetch, 3600.0)
    await feed.start(bus)
    try:
        assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
        assert len(key_reads) == 1 and not verifier.keys_stale
        answers.append(jwks(KEY, "k1") + jwks(OTHER_KEY, "k2"))
        rotated = SimpleNamespace(subject=subjects.EVENT_SIGNING_KEY_ROTATED, data=json.dumps({"kid": "k2"}).encode(),
                                  headers=None, reply="")
        await bus.callbacks[subjects.EVENT_SIGNING_KEY_ROTATED](rotated)
        assert len(key_reads) == 2
        assert (await verifier.verify(make_token(OTHER_KEY, "k2"))).subject == "u1"
        assert len(key_reads) == 2
        answers.append(jwks(KEY, "k1") + jwks(OTHER_KEY, "k2") + jwks(OTHER_KEY, "k3"))  # the event missed
        verifier._fetched_at -= authz.KEY_REFETCH_INTERVAL
        assert (await verifier.verify(make_token(OTHER_KEY, "k3"))).subject == "u1"
        assert len(key_reads) == 3
    finally:
        await feed.stop()


class Clock:
    """authz's `time` with a wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.monotonic = time.monotonic

    def time(self) -> float:
        return self.now


class CountedPasses(dict):
    """A dict that counts the passes over it."""

    passes = 0

    def _count(self):
        CountedPasses.passes += 1

    def items(self):
        self._count()
        return super().items()

    def keys(self):
        self._count()
        return super().keys()

    def values(self):
        self._count()
        return super().values()

    def __iter__(self):
        self._count()
        return super().__iter__()


def test_a_revocation_event_forgets_the_expired_sessions_without_a_pass_over_all(monkeypatch):
    """Each session revocation (an event: a reused code's, each ended task run's) was a pass over every session kept
    to forget the expired: n events on n sessions, n² steps on the event loop. Now the expired are popped from an
    expiry heap: no pass at all for 3,000 events, and still forgotten once none of their tokens can be valid, never
    before (a session kept longer since by a later revocation stays)."""
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(authz, "time", clock)
    verifier = TokenVerifier(SETTINGS, lambda: [])
    verifier._revoked_sessions = CountedPasses()
    ttl = SETTINGS.access_token_ttl
    for i in range(3000):  # kept until 1,000,000 + i
        verifier.revoke_session(f"s{i}", clock.now - ttl - 60 + i)
    assert CountedPasses.passes == 0, f"{CountedPasses.passes} passes over the kept sessions for 3,000 events"
    assert len(verifier._revoked_sessions) == 3000
    verifier.revoke_session("s2999", clock.now - ttl - 60 + 2999)  # the same revocation again: nothing added
    verifier.revoke_session("s1500", clock.now, expires=clock.now + 10_000)  # a task run's: kept longer
    assert len(verifier._session_expiry) == 3001

    clock.now += 2000.5  # s0 ... s2000 expired
    verifier.revoke_session("new", clock.now)
    assert CountedPasses.passes == 0
    kept = verifier._revoked_sessions
    assert "s0" not in kept and "s2000" not in kept and "s1499" not in kept
    assert "s2001" in kept and "s2999" in kept and "new" in kept
    assert "s1500" in kept  # its earlier entry in the heap forgot nothing
    assert len(kept) == 999 + 1 + 1
    assert len(verifier._session_expiry) == len(kept)  # the popped entries are gone from the heap too

    clock.now += 10_000  # a whole read: one pass, the heap rebuilt from what stays
    verifier.set_revocations({}, {"last": clock.now})
    assert set(verifier._revoked_sessions) == {"last"}
    assert verifier._session_expiry == [(clock.now + ttl + 60, "last")]
    heapq.heappush(verifier._session_expiry, (0.0, "not kept"))  # an entry of a session gone: skipped
    verifier.revoke_session("other", clock.now)
    assert set(verifier._revoked_sessions) == {"last", "other"}
