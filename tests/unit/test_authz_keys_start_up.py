"""The feed's poll of the signing keys while the stack starts (shared/authz.py VerifierFeed._poll_forever): auth may
answer its revocation list before its keys subject (FastStream starts a router's subscribers in the order of a
WeakSet, not the order services/auth/app.py registers them), so a poll's first good list read may meet no responder
on the keys. Such a failure within STARTUP_GRACE does not refuse the tokens met in the next KEY_REFETCH_INTERVAL
(503 with no read of their own, as the list's start-up polls did before f4432a0a): a token reads the keys itself.
Past the grace a failed poll still spaces them (session 34: no back-to-back reads while auth fails fast)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from shared import authz
from shared.authz import KEY_REFETCH_INTERVAL, TokenVerifier, VerifierFeed
from shared.errors import Unavailable
from shared.messages.auth import Revocations
from tests.unit.test_authz import KEY, SETTINGS, jwks, make_token
from tests.unit.test_authz_key_reads import Bus, _until


async def _poll_whose_key_read_failed(monkeypatch, grace: float):
    """A feed whose start-up list read failed (auth not up), whose retry read the list and then failed to read the
    keys (auth's keys subject not subscribed yet); the clock then half a KEY_REFETCH_INTERVAL on, auth all up.
    Returns the verifier, the feed (to stop) and the key reads' times."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    monkeypatch.setattr(authz, "STARTUP_RETRY", 0.01)  # the poll's retry at once (loop time, not the clock's)
    monkeypatch.setattr(authz, "STARTUP_GRACE", grace)
    list_up, keys_up, key_reads, list_reads = [False], [False], [], []

    async def keys():
        key_reads.append(clock.now)
        if not keys_up[0]:
            raise Unavailable("auth is not running")
        return jwks(KEY, "k1")

    async def fetch():
        list_reads.append(clock.now)
        if not list_up[0]:
            raise Unavailable("auth is not running")
        return Revocations(users={})

    verifier = TokenVerifier(SETTINGS, keys)
    feed = VerifierFeed(verifier, fetch, 3600.0)  # after the retry that reads the list, no poll within the test
    await feed.start(Bus())
    assert list_reads == [1000.0] and not verifier.revocations_read
    list_up[0] = True  # auth answers its list, not its keys yet
    await _until(lambda: key_reads, "the poll's key read")
    assert verifier.revocations_read and key_reads == [1000.0] and verifier.keys_stale
    clock.now += KEY_REFETCH_INTERVAL / 2
    keys_up[0] = True
    return verifier, feed, key_reads


async def test_a_failed_start_up_poll_of_the_keys_does_not_refuse_the_tokens_after_it(monkeypatch):
    verifier, feed, key_reads = await _poll_whose_key_read_failed(monkeypatch, authz.STARTUP_GRACE)
    try:
        # was: 503 "the signing keys could not be read from the auth service (auth is not running)", no read
        assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
        assert key_reads == [1000.0, 1000.0 + KEY_REFETCH_INTERVAL / 2] and not verifier.keys_stale
    finally:
        await feed.stop()


async def test_past_the_grace_a_failed_poll_of_the_keys_still_spaces_the_tokens_reads(monkeypatch):
    verifier, feed, key_reads = await _poll_whose_key_read_failed(monkeypatch, 0.0)
    try:
        with pytest.raises(Unavailable, match=r"signing keys could not be read.*auth is not running"):
            await verifier.verify(make_token(KEY, "k1"))
        assert key_reads == [1000.0]  # no read of its own
    finally:
        await feed.stop()
