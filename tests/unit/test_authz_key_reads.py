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
from shared.authz import KEY_REFETCH_INTERVAL, TokenVerifier, VerifierFeed
from shared.errors import Unauthorized, Unavailable
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


def _feed_of_a_failing_list(monkeypatch, failure: str):
    """A verifier and its feed (not started) on a clock of the test's (`clock.now`, from 1000.0), whose revocation list
    reads (their times kept in `reads`) raise Unavailable(`failure`) while `down[0]`; the keys always read; the
    poll's own retry is not within the test."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    monkeypatch.setattr(authz, "STARTUP_RETRY", 3600.0)
    reads: list[float] = []
    down = [True]

    async def keys():
        return jwks(KEY, "k1")

    async def fetch():
        reads.append(clock.now)
        if down[0]:
            raise Unavailable(failure)
        return Revocations(users={})

    verifier = TokenVerifier(SETTINGS, keys)
    return clock, reads, down, verifier, VerifierFeed(verifier, fetch, 20.0)


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


async def test_an_unknown_kid_reads_the_keys_at_most_every_interval_also_while_reads_fail_fast(monkeypatch):
    """While auth fails fast (its database down: an error answer at once), a flood of tokens naming unknown kids read
    the keys back to back: one read in flight, the next as soon as it failed, since only a good read counted towards
    KEY_REFETCH_INTERVAL. Now a failed read counts too: tokens met within the interval after it get the same 503
    with no read. Tokens every 0.25 s for 5 s: 5 reads (20 before). Once auth answers, the next read (a second
    after the last failed one) gives the keys; a bogus kid then is 401 with no read until the interval has passed."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    reads, down = [], [True]

    async def keys():
        reads.append(clock.now)
        if down[0]:
            raise Unavailable("auth's database did not answer")
        return jwks(KEY, "k1")

    verifier = TokenVerifier(SETTINGS, keys)
    for step in range(20):
        with pytest.raises(Unavailable, match=r"signing keys could not be read.*database did not answer"):
            await verifier.verify(make_token(KEY, f"bogus-{step}"))
        clock.now += 0.25
    assert reads == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    down[0] = False
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"  # 1005.0: a second after the last
    assert len(reads) == 6
    for step in range(3):
        clock.now += 0.25
        with pytest.raises(Unauthorized, match="unknown key"):
            await verifier.verify(make_token(KEY, f"bogus-{step}"))
    assert len(reads) == 6
    clock.now += 0.25
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(make_token(KEY, "bogus-again"))
    assert len(reads) == 7


async def test_the_first_revocation_read_starts_at_most_every_interval_also_while_reads_fail_fast(monkeypatch):
    """Before a verifier's first good read of the revocation list, the tokens met read it themselves. While auth
    failed fast (its database down: an error answer at once), they read it back to back: one read in flight, the
    next as soon as it failed. Now a failed read counts as the keys' does (KEY_REFETCH_INTERVAL): a token met within
    the interval after it gets the same 503 with no read. Tokens every 0.25 s for 5 s: 5 reads (20 before). Once
    auth answers, the next read (a second after the last failed one) gives the list, and no token reads it again."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    reads, down = [], [True]

    async def keys():
        return jwks(KEY, "k1")

    async def fetch():
        reads.append(clock.now)
        if down[0]:
            raise Unavailable("auth's database did not answer")
        return Revocations(users={"u2": time.time() + 5})

    verifier = TokenVerifier(SETTINGS, keys)
    verifier.read_revocations_from(fetch)
    for step in range(20):
        with pytest.raises(Unavailable, match=r"revoked tokens could not be read.*database did not answer"):
            await verifier.verify(make_token(KEY, "k1", jti=f"t{step}"))
        clock.now += 0.25
    assert reads == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    down[0] = False
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"  # 1005.0: a second after the last
    assert reads == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0, 1005.0] and verifier.revocations_read
    with pytest.raises(Unauthorized, match="revoked"):  # the list read names u2
        await verifier.verify(make_token(KEY, "k1", sub="u2"))
    assert len(reads) == 6  # read once: the tokens after it read nothing


async def test_a_first_revocation_read_that_fails_unexpectedly_is_not_read_again_at_once(monkeypatch):
    """An error no read expects (the bus client's) still goes out of the token that met it, as before; a token met
    within KEY_REFETCH_INTERVAL after it gets a 503 that does not echo the error's text, with no read."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    reads = []

    async def keys():
        return jwks(KEY, "k1")

    async def fetch():
        reads.append(clock.now)
        raise RuntimeError("nats: connection closed")

    verifier = TokenVerifier(SETTINGS, keys)
    verifier.read_revocations_from(fetch)
    with pytest.raises(RuntimeError, match="connection closed"):
        await verifier.verify(make_token(KEY, "k1"))
    clock.now = 1000.0 + KEY_REFETCH_INTERVAL / 2
    with pytest.raises(Unavailable, match=r"revoked tokens could not be read from the auth service \(the read failed"):
        await verifier.verify(make_token(KEY, "k1"))
    assert reads == [1000.0]
    clock.now = 1000.0 + KEY_REFETCH_INTERVAL
    with pytest.raises(RuntimeError, match="connection closed"):
        await verifier.verify(make_token(KEY, "k1"))
    assert len(reads) == 2


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


async def test_a_key_cut_in_the_database_is_dropped_at_the_next_poll_by_the_keys_fingerprint(monkeypatch):
    """An operator's cut of a leaked key (an UPDATE of auth.signing_keys, no event: docs/security.md, "Task-run
    tokens") reached every verifier at its next 20 s poll while each poll read the JWKS; reading them only when
    KEY_MAX_AGE old made it 300 s. The poll's answer now names the keys' fingerprint (Revocations.keys), and a
    changed one reads the keys at that poll: the cut key's token (cached too) is refused after the next poll, with
    no key read at the polls that name the same fingerprint."""
    monkeypatch.setattr(authz.random, "random", lambda: 0.0)
    answers = [jwks(KEY, "k1") + jwks(OTHER_KEY, "k2")]
    fingerprint = ["f1"]
    key_reads, polls = [], []

    async def keys():
        key_reads.append(1)
        return answers[-1]

    async def fetch():
        polls.append(1)
        return Revocations(users={}, position="7", keys=fingerprint[-1])

    async def changes(since):
        polls.append(1)
        return Revocations(users={}, position="7", keys=fingerprint[-1])

    verifier = TokenVerifier(SETTINGS, keys)
    feed = VerifierFeed(verifier, fetch, 0.02, changes=changes)
    await feed.start(Bus())
    try:
        await _until(lambda: len(polls) >= 6, "6 polls")
        assert len(key_reads) == 1, f"{len(key_reads)} key reads in {len(polls)} polls"
        cut = make_token(OTHER_KEY, "k2")
        assert (await verifier.verify(cut)).subject == "u1"  # verified and cached
        answers.append(jwks(KEY, "k1"))  # k2 cut in the database: the next poll's fingerprint is another
        fingerprint.append("f2")
        seen = len(polls)
        await _until(lambda: len(key_reads) >= 2, "the changed keys' read")
        assert len(polls) <= seen + 2, f"read {len(polls) - seen} polls after the cut"  # the poll that named it
        assert not verifier.keys_stale  # fresh keys, read under f2: nothing more to read
        with pytest.raises(Unauthorized, match="unknown key"):  # at 9950f2f9: accepted until KEY_MAX_AGE
            await verifier.verify(cut)
        seen = len(polls)
        await _until(lambda: len(polls) >= seen + 4, "4 more polls")
    finally:
        await feed.stop()
    assert len(key_reads) == 2, f"{len(key_reads)} key reads"
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"


async def test_an_auth_naming_no_fingerprint_leaves_the_keys_to_their_max_age(monkeypatch):
    """An auth of before session 33 names no `keys` (and refuses `with_keys`): the verifier asks without it and reads
    the keys once they are KEY_MAX_AGE old, as before; the next whole read asks for it again (an upgraded auth)."""
    from shared.errors import InvalidRequest

    asked = []

    async def request(broker, subject, body, timeout, reply_model):
        asked.append(dict(body))
        if "with_keys" in body:
            raise InvalidRequest("with_keys: Extra inputs are not permitted")
        return Revocations(users={}, position="3") if body.get("with_position") or "since" in body else \
            Revocations(users={})

    monkeypatch.setattr("shared.bus.request", request)
    verifier, feed = authz.bus_verifier(object(), SETTINGS, 1.0)
    whole = await feed._fetch()
    assert whole.position == "3" and whole.keys is None
    assert asked == [{"with_position": True, "with_keys": True}, {"with_position": True}]
    changed = await feed._changes("3")
    assert asked[-1] == {"since": "3"} and changed.keys is None  # not refused again at every poll
    verifier.keys_told(changed.keys)
    verifier._fetched_at = time.monotonic()
    assert not verifier.keys_stale
    verifier._fetched_at -= authz.KEY_MAX_AGE
    assert verifier.keys_stale
    asked.clear()
    await feed._fetch()
    assert asked[0] == {"with_position": True, "with_keys": True}  # asked again at each whole read


async def test_a_token_checked_while_its_key_is_cut_is_not_cached():
    """A token whose check waits for the first revocation read (a service just started) while a key read finds its
    key gone: that read empties the cache, then the token would be put in it and accepted from it until it
    expired (a task run's: a day). It is refused instead, and the next use is refused too."""
    answers = [jwks(KEY, "k1") + jwks(OTHER_KEY, "k2")]
    release = asyncio.Event()

    async def keys():
        return answers[-1]

    async def fetch():
        await release.wait()
        return Revocations(users={})

    verifier = TokenVerifier(SETTINGS, keys)
    verifier.read_revocations_from(fetch)
    await verifier.refresh_keys()
    cut = make_token(OTHER_KEY, "k2")
    check = asyncio.ensure_future(verifier.verify(cut))
    await asyncio.sleep(0.05)  # verified its signature, waiting for the revocation list
    answers.append(jwks(KEY, "k1"))  # k2 cut
    await verifier.refresh_keys()
    release.set()
    with pytest.raises(Unauthorized, match="unknown key"):  # before: accepted, and cached until it expired
        await check
    assert cut not in verifier._verified
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(cut)
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"


async def test_a_failed_first_read_of_the_feed_counts_towards_the_interval_for_the_tokens_after_it(monkeypatch):
    """The feed's poll reads the list again after 0.5, 1, 2 ... s while it was never read (auth not answering): its
    failed reads did not count towards KEY_REFETCH_INTERVAL (session 34 counted the tokens' own only), so a token
    right after a failed poll read the failing list again. Now it is refused 503 without a read within the interval
    after any failed read, the poll's too, and reads once the interval has passed."""
    monkeypatch.setattr(authz, "STARTUP_GRACE", 0.0)  # past the start: the poll's failures count
    clock, reads, down, verifier, feed = _feed_of_a_failing_list(monkeypatch, "auth's database did not answer")
    await feed.start(Bus())  # its first read fails
    try:
        assert reads == [1000.0] and not verifier.revocations_read
        clock.now += KEY_REFETCH_INTERVAL / 2
        for step in range(3):
            with pytest.raises(Unavailable, match=r"revoked tokens could not be read.*database did not answer"):
                await verifier.verify(make_token(KEY, "k1", jti=f"t{step}"))
        assert reads == [1000.0]  # was: [1000.0, 1000.5]
        clock.now = 1000.0 + KEY_REFETCH_INTERVAL
        down[0] = False
        assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
        assert reads == [1000.0, 1000.0 + KEY_REFETCH_INTERVAL] and verifier.revocations_read
    finally:
        await feed.stop()


async def test_the_feeds_first_read_and_a_tokens_share_one_read():
    """While the list was never read, the poll's read and a token's are one: a token met while the poll's read is
    under way waits for it, and a poll meanwhile a token's read is under way waits for that one (each started a read
    of its own: two reads of a failing auth at once)."""
    release, reads = asyncio.Event(), []

    async def keys():
        return jwks(KEY, "k1")

    async def fetch():
        reads.append(1)
        await release.wait()
        return Revocations(users={"u2": time.time() + 5})

    verifier = TokenVerifier(SETTINGS, keys)
    feed = VerifierFeed(verifier, fetch, 20.0)
    poll = asyncio.ensure_future(feed._poll_once())
    await _until(lambda: reads, "the poll's read")
    token = asyncio.ensure_future(verifier.verify(make_token(KEY, "k1")))
    for _ in range(20):  # the token on its way to the read (in-memory awaits only)
        await asyncio.sleep(0)
    assert len(reads) == 1 and not token.done()  # was: 2, the token's own read
    release.set()
    await poll
    assert (await token).subject == "u1" and len(reads) == 1 and verifier.revocations_read
    with pytest.raises(Unauthorized, match="revoked"):  # the one read applied (u2 named)
        await verifier.verify(make_token(KEY, "k1", sub="u2"))


async def test_keys_read_with_no_key_in_them_are_a_503_not_a_401(monkeypatch):
    """A good read of the keys that listed none (every key cut by an operator): the verifier knows no key, so it
    cannot tell a bad token from one of a key it has not read. The token that read them and those met within
    KEY_REFETCH_INTERVAL after (no read of their own) were 401 'unknown key' (a client told to sign in again), now 503
    'try again'; once keys are listed the token is checked; a kid they do not name is 401 as before."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    answers, key_reads = [[]], []

    async def keys():
        key_reads.append(clock.now)
        return answers[-1]

    verifier = TokenVerifier(SETTINGS, keys)
    for kid in ("k1", "k1", "bogus"):
        with pytest.raises(Unavailable, match=r"signing keys could not be read.*auth listed no signing keys"):
            await verifier.verify(make_token(KEY, kid))
    assert key_reads == [1000.0]  # one read: the others within the interval
    answers.append(jwks(KEY, "k1"))
    clock.now += KEY_REFETCH_INTERVAL
    assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
    with pytest.raises(Unauthorized, match="unknown key"):  # the keys read a moment ago do not name it
        await verifier.verify(make_token(KEY, "bogus"))
    assert len(key_reads) == 2


async def test_a_failed_start_up_poll_does_not_refuse_the_tokens_after_it(monkeypatch):
    """Within STARTUP_GRACE of the feed's start auth not answering is the stack starting: a token right after the
    poll's failed first read reads the list itself (refused 503 for a second after each failed start-up poll, the
    first requests after a healthy stack start failed: session 35's bench and integration set-ups)."""
    clock, reads, down, verifier, feed = _feed_of_a_failing_list(monkeypatch, "auth is not running")
    await feed.start(Bus())  # its first read fails: auth not up yet
    try:
        assert reads == [1000.0] and not verifier.revocations_read
        clock.now += KEY_REFETCH_INTERVAL / 2
        down[0] = False  # auth up
        assert (await verifier.verify(make_token(KEY, "k1"))).subject == "u1"
        assert reads == [1000.0, 1000.0 + KEY_REFETCH_INTERVAL / 2] and verifier.revocations_read
    finally:
        await feed.stop()
