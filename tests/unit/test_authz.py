"""Token verification in memory, with a locally generated key."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared import authz
from shared.authz import (
    Principal,
    TokenVerifier,
    deployment_not_found,
    require_admin,
    require_inference_access,
    require_member,
    require_owner_or_member,
    require_unscoped,
    require_user,
    scoped_workspace,
)
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.settings import AuthSettings

SETTINGS = AuthSettings()
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key=KEY, kid="k1"):
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, alg="RS256", use="sig")
    return [jwk]


def make_token(key=KEY, kid="k1", **changes) -> str:
    now = int(time.time())
    claims = {"iss": SETTINGS.issuer, "aud": SETTINGS.audience, "sub": "u1", "iat": now, "exp": now + 60,
              "typ": "Bearer", "azp": "api-client", "railyard_kind": "user", "railyard_admin": False}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def verifier():
    fetches = []

    async def fetch():
        fetches.append(1)
        return jwks()

    v = TokenVerifier(SETTINGS, fetch)
    v.fetches = fetches
    return v


async def test_valid_token_gives_the_principal(verifier):
    principal = await verifier.verify(make_token(railyard_admin=True))
    assert principal == Principal(subject="u1", kind="user", admin=True, client_id="api-client", username=None,
                                  issued_at=principal.issued_at)


@pytest.mark.parametrize("token_kwargs, message", [
    ({"exp": int(time.time()) - 60}, "expired"),
    ({"iss": "someone-else"}, "issuer"),
    ({"aud": "other"}, "audience"),
    ({"typ": "Refresh"}, "not an access token"),
    ({"exp": None}, "invalid"),
    ({"key": OTHER_KEY}, "invalid"),
    ({"kid": "unknown"}, "unknown key"),
    ({"railyard_kind": "superuser"}, "invalid"),
    ({"railyard_kind": "inference"}, "without a workspace"),  # minted before inference tokens were scoped
])
async def test_bad_tokens_are_unauthorized(verifier, token_kwargs, message):
    with pytest.raises(Unauthorized, match=message):
        await verifier.verify(make_token(**token_kwargs))


async def test_alg_none_and_hs256_are_refused(verifier):
    none_token = jwt.encode({"sub": "u1"}, None, algorithm="none")
    with pytest.raises(Unauthorized, match="RS256"):
        await verifier.verify(none_token)
    hs = jwt.encode({"sub": "u1"}, "s" * 32, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized, match="RS256"):
        await verifier.verify(hs)
    with pytest.raises(Unauthorized, match="missing"):
        await verifier.verify(None)
    with pytest.raises(Unauthorized, match="malformed"):
        await verifier.verify("a.b")


async def test_keys_are_cached_and_an_unknown_kid_refetches_at_most_every_few_seconds(verifier):
    for _ in range(5):
        await verifier.verify(make_token())
    assert len(verifier.fetches) == 1
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await verifier.verify(make_token(kid="rotated"))
    assert len(verifier.fetches) == 1  # within the refetch interval: no storm of fetches


async def test_revoked_users_tokens_issued_before_are_refused(verifier):
    old = make_token(iat=int(time.time()) - 10)
    verifier.revoke("u1", int(time.time()) - 5)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(old)
    assert (await verifier.verify(make_token())).subject == "u1"
    verifier.set_revocations({"u1": 0})  # an older list never un-revokes
    with pytest.raises(Unauthorized):
        await verifier.verify(old)


async def test_a_revoked_sessions_tokens_are_all_refused_and_no_other(verifier):
    """A reused authorization code's session: every token of it, whenever issued (one minted while the session was
    being revoked too), from the event or the revocation list; the user's other sessions keep working."""
    cached = make_token(session_state="s1")
    await verifier.verify(cached)  # a verified token is cached: revocation is checked on every use all the same
    later = make_token(session_state="s1", iat=time.time() + 1)
    verifier.revoke_session("s1", time.time())
    for token in (cached, later):
        with pytest.raises(Unauthorized, match="revoked"):
            await verifier.verify(token)
    assert (await verifier.verify(make_token(session_state="s2"))).session == "s2"
    assert (await verifier.verify(make_token())).session is None
    verifier.set_revocations({}, {"s2": time.time()})  # from the list (a missed event)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(make_token(session_state="s2"))
    # forgotten once no access token of it can be valid any more
    verifier.revoke_session("s3", time.time() - SETTINGS.access_token_ttl - 61)
    assert "s3" not in verifier._revoked_sessions and "s1" in verifier._revoked_sessions


async def test_role_rules():
    user = Principal("u1", "user", False, "c", None, 0)
    admin = Principal("a1", "user", True, "c", None, 0)
    machine = Principal("s1", "inference", False, "c", None, 0)
    assert require_user(user) is user
    with pytest.raises(Forbidden, match="inference"):
        require_user(machine)
    with pytest.raises(Forbidden, match="administrators"):
        require_admin(user, "do this")
    assert require_admin(admin, "do this") is admin

    async def lookup(user_id, workspace_id):
        return "OWNER" if (user_id, workspace_id) == ("u1", 7) else None

    assert await require_member(lookup, user, 7) == "OWNER"
    with pytest.raises(NotFound):
        await require_member(lookup, user, 8)
    with pytest.raises(Forbidden):
        await require_member(lookup, machine, 7)


async def test_inference_access_is_one_workspace_and_looks_like_not_found(verifier):
    machine = await verifier.verify(make_token(railyard_kind="inference", railyard_workspace=7))
    assert machine.kind == "inference" and machine.workspace_id == 7
    user = Principal("u1", "user", False, "c", None, 0)

    async def lookup(user_id, workspace_id):
        return "COLLABORATOR" if (user_id, workspace_id) == ("u1", 7) else None

    missing = deployment_not_found("d-1")
    await require_inference_access(lookup, machine, 7, missing)
    await require_inference_access(lookup, user, 7, missing)
    for principal in (machine, user):
        with pytest.raises(NotFound) as raised:
            await require_inference_access(lookup, principal, 8, missing)
        assert raised.value.msg == "deployment 'd-1' not found"


async def test_a_task_run_token_reaches_its_own_workspace_only(verifier):
    scoped = await verifier.verify(make_token(railyard_workspace=7, railyard_task="t-1"))
    assert scoped.kind == "user" and scoped.workspace_id == 7 and scoped.scoped_task == "t-1"
    plain = await verifier.verify(make_token(railyard_workspace=7))
    assert plain.workspace_id is None and plain.scoped_task is None  # the claim alone scopes nothing
    run = await verifier.verify(make_token(railyard_workspace=7, railyard_task="t-1", railyard_task_run="r-1"))
    assert (run.scoped_task, run.scoped_run) == ("t-1", "r-1") and scoped.scoped_run is None
    assert (await verifier.verify(make_token(railyard_task_run="r-1"))).scoped_run is None  # only with a task
    asked = []

    async def lookup(user_id, workspace_id):
        asked.append(workspace_id)
        return "OWNER"  # the owner is a member of both workspaces

    assert await require_member(lookup, scoped, 7) == "OWNER"
    with pytest.raises(NotFound):
        await require_member(lookup, scoped, 8)
    assert asked == [7]
    with pytest.raises(NotFound):
        await require_inference_access(lookup, scoped, 8, deployment_not_found("d"))
    with pytest.raises(NotFound):  # owning a resource does not reach past the run's workspace
        await require_owner_or_member(lookup, scoped, "u1", [8], "connection")
    await require_owner_or_member(lookup, scoped, "u1", [8, 7], "connection")
    # "my workspaces" narrow to the run's; what reaches beyond a workspace is 403 out_of_scope
    assert (scoped_workspace(scoped), scoped_workspace(plain)) == (7, None)
    require_unscoped(plain, "create workspaces")
    with pytest.raises(Forbidden) as refused:
        require_unscoped(scoped, "create workspaces")
    assert refused.value.code == "out_of_scope" and "create workspaces" in refused.value.msg


class _Bus:
    """Enough of a nats client for VerifierFeed.start: subscriptions that never deliver."""

    async def subscribe(self, subject, cb):
        class _Subscription:
            async def unsubscribe(self):
                pass

        return _Subscription()


async def test_no_token_is_accepted_before_the_revocation_list_was_read_once(verifier, monkeypatch):
    """A service that started while auth was not answering (the services start together) read no revocation list:
    a token of a user deactivated before that start must not pass until the list comes. The first token met
    reads the list itself; while auth cannot answer, tokens get 503 with a message to retry."""
    from shared.authz import KEY_REFETCH_INTERVAL, VerifierFeed
    from shared.errors import Unavailable
    from shared.messages.auth import Revocations

    # the verifier's clock stands still: a failed read is read again KEY_REFETCH_INTERVAL later, moved by hand
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    answers = [Unavailable("auth is not running"), Revocations(users={"u1": time.time() - 5})]

    async def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    VerifierFeed(verifier, fetch, 20.0)  # built, its first read not yet done (or failed)
    old = make_token(iat=int(time.time()) - 10)
    with pytest.raises(Unavailable, match="revoked tokens could not be read.*auth is not running"):
        await verifier.verify(old)
    clock.now += KEY_REFETCH_INTERVAL  # (within it, the same 503 with no read: test_authz_key_reads.py)
    with pytest.raises(Unauthorized, match="revoked"):  # the list read at this token: u1 was deactivated
        await verifier.verify(old)
    assert (await verifier.verify(make_token())).subject == "u1"  # issued after: fine, and no read again
    assert answers == []


async def _steps_until(condition, what: str) -> None:
    """Let the loop run until `condition()` (in-memory awaits only: a few steps), failing at once if it never holds
    (a spin with no bound hung until pytest's timeout, 5 minutes, when a change stopped the read from starting)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not within 1000 steps of the loop: {what}")


def _feed_waits(monkeypatch, feed) -> list[float]:
    """The timeouts of the feed's waits between its reads (`asyncio.wait_for` on its stop event), in order."""
    waits: list[float] = []
    wait_for = asyncio.wait_for

    def recorded(awaitable, timeout):
        frame = getattr(awaitable, "cr_frame", None)
        if frame is not None and frame.f_locals.get("self") is feed._stop:
            waits.append(timeout)
        return wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recorded)
    return waits


async def test_a_failed_first_read_is_retried_within_seconds_and_told_at_info(verifier, caplog, monkeypatch):
    """Auth not answering at a service's start is expected: the feed reads again after 0.5, 1, 2 ... s (not an
    interval later) and says so at INFO, not as a warning in every service's log at every start."""
    import logging

    from shared.authz import VerifierFeed
    from shared.errors import Unavailable
    from shared.messages.auth import Revocations

    calls = []

    async def fetch():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Unavailable("auth is not running")
        return Revocations(users={})

    feed = VerifierFeed(verifier, fetch, 20.0)
    waits = _feed_waits(monkeypatch, feed)
    caplog.set_level(logging.INFO, logger="railyard.authz")
    started = time.monotonic()
    await feed.start(_Bus())
    try:
        while not verifier.revocations_read and time.monotonic() - started < 30:  # noqa: ASYNC110 - a flag, no event
            await asyncio.sleep(0.05)
    finally:
        await feed.stop()
    assert verifier.revocations_read and len(calls) == 3
    # 0.5 + 1 s of backing off, not 10-20 s: the waits the feed took, not the wall time (a bound of 3 s failed on a
    # loaded machine)
    assert waits[:3] == [0.5, 1.0, pytest.approx(20.0 * 0.75, abs=5.0)], waits
    failures = [r for r in caplog.records if "could not refresh revocations" in r.getMessage()]
    assert len(failures) == 2 and all(r.levelno == logging.INFO for r in failures)


async def test_tokens_met_during_the_first_read_share_it_and_its_failure(verifier, monkeypatch):
    """While the list was never read, the tokens met during one read wait for that read, not each for one of its
    own in turn: with auth taking its full timeout to fail, the n-th request waited n timeouts (a lock around a
    read each). A caller that goes away does not cancel the read the others wait for."""
    from shared.authz import KEY_REFETCH_INTERVAL, VerifierFeed
    from shared.errors import Unavailable, UpstreamTimeout
    from shared.messages.auth import Revocations

    calls, release, outcome = [], asyncio.Event(), []
    # the verifier's clock stands still: a failed read is read again KEY_REFETCH_INTERVAL later, moved by hand
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))

    async def fetch():
        calls.append(1)
        await release.wait()
        if outcome:
            return outcome[0]
        raise UpstreamTimeout("auth did not answer within 5s")

    VerifierFeed(verifier, fetch, 20.0)
    token = make_token()
    waiting = [asyncio.create_task(verifier.verify(token)) for _ in range(5)]
    await _steps_until(lambda: calls, "the first read has started")
    for _ in range(20):  # every verify on its way to the read (in-memory awaits only: a few steps each)
        await asyncio.sleep(0)
    assert len(calls) == 1 and not any(task.done() for task in waiting)
    waiting[0].cancel()  # one client gone: the read goes on for the others
    release.set()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert len(calls) == 1  # one read for the five
    assert isinstance(answers[0], asyncio.CancelledError)
    assert all(isinstance(answer, Unavailable) for answer in answers[1:]), answers
    # the next token met reads again, KEY_REFETCH_INTERVAL after the failed read; this time the list comes, and it
    # names u1
    clock.now += KEY_REFETCH_INTERVAL
    release.clear()
    outcome.append(Revocations(users={"u1": time.time() + 5}))
    again = [asyncio.create_task(verifier.verify(token)) for _ in range(3)]
    await _steps_until(lambda: len(calls) == 2, "the second read has started")
    release.set()
    answers = await asyncio.gather(*again, return_exceptions=True)
    assert len(calls) == 2 and verifier.revocations_read
    assert all(isinstance(answer, Unauthorized) and "revoked" in str(answer) for answer in answers), answers


async def test_tokens_met_while_auth_cannot_give_the_keys_get_503_from_one_shared_fetch(monkeypatch):
    """A service that started before auth answers knows no signing key: the first tokens met fetch them. That fetch
    failing was answered 401 'token signed with an unknown key' (a client told its token is bad, and the 503 of the
    revocation read above never reached), each token fetching in turn under the lock (n-th request: n timeouts).
    Now one fetch for the tokens met meanwhile, and 503 while auth cannot answer; then the keys come and the token
    passes."""
    from shared.authz import VerifierFeed
    from shared.errors import Unavailable, UpstreamTimeout
    from shared.messages.auth import Revocations

    calls, release, answer = [], asyncio.Event(), []
    # the verifier's clock stands still: a host stalled past KEY_REFETCH_INTERVAL after the failed read read again
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: 1000.0, time=time.time))

    async def keys():
        calls.append(1)
        await release.wait()
        if answer:
            return answer[0]
        raise UpstreamTimeout("auth did not answer within 5s")

    async def revocations():
        return Revocations(users={})

    verifier = TokenVerifier(SETTINGS, keys)
    VerifierFeed(verifier, revocations, 20.0)
    token = make_token()
    waiting = [asyncio.create_task(verifier.verify(token)) for _ in range(5)]
    await _steps_until(lambda: calls, "the first fetch has started")
    for _ in range(20):  # every verify on its way to the fetch (in-memory awaits only)
        await asyncio.sleep(0)
    assert len(calls) == 1 and not any(task.done() for task in waiting)
    release.set()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert len(calls) == 1
    assert all(isinstance(a, Unavailable) and "signing keys could not be read" in str(a) for a in answers), answers
    answer.append(jwks())
    with pytest.raises(Unavailable, match="signing keys could not be read"):  # read again a second later, not now
        await verifier.verify(token)
    assert len(calls) == 1
    verifier._keys_failed_at -= 1.0  # KEY_REFETCH_INTERVAL later
    assert (await verifier.verify(token)).subject == "u1" and len(calls) == 2
    with pytest.raises(Unauthorized, match="unknown key"):  # auth answered, and has no such key: 401 as before
        await verifier.verify(make_token(kid="other"))


async def test_the_poll_goes_on_after_an_error_no_read_expects(verifier):
    """The feed's poll caught RailyardError only: anything else (nats-py's OutboundBufferLimitError while NATS was
    away, before the bus mapped it) ended it for the life of the process, so revocations whose events were missed
    were never read and the revoked tokens passed until they expired. One read is lost; the poll goes on."""
    from shared.authz import VerifierFeed
    from shared.messages.auth import Revocations

    token = make_token(iat=int(time.time()) - 10)
    calls = []

    async def fetch():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("an error of the bus's client")
        return Revocations(users={"u1": time.time()} if len(calls) > 2 else {})

    feed = VerifierFeed(verifier, fetch, 0.2)
    await feed.start(_Bus())
    try:
        assert (await verifier.verify(token)).subject == "u1"  # not revoked at the first read
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 - a count, no event to wait on
            await asyncio.sleep(0.05)
    finally:
        await feed.stop()
    assert len(calls) >= 3, "the poll ended at the unexpected error"
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)


@pytest.mark.parametrize("grace, level", [(30.0, "INFO"), (0.0, "WARNING")])
async def test_keys_not_answered_at_start_are_told_at_info(monkeypatch, caplog, grace, level):
    """At a fresh start auth answers the revocation list a moment before its keys subject (its subscribers start
    one by one), so the poll's key refetch right after the first good read met 'auth is not running': a WARNING
    in three services' logs on every `make run`. Within STARTUP_GRACE it is INFO; after it, still a WARNING."""
    import logging

    from shared import authz
    from shared.authz import VerifierFeed
    from shared.errors import Unavailable
    from shared.messages.auth import Revocations

    monkeypatch.setattr(authz, "STARTUP_GRACE", grace)

    async def keys():
        raise Unavailable("auth is not running")

    reads = []

    async def fetch():
        reads.append(1)
        return Revocations(users={})

    feed = VerifierFeed(TokenVerifier(SETTINGS, keys), fetch, 0.1)
    caplog.set_level(logging.INFO, logger="railyard.authz")
    await feed.start(_Bus())
    try:
        deadline = time.monotonic() + 10
        while not any("refetch signing keys" in r.getMessage() for r in caplog.records) \
                and time.monotonic() < deadline:  # noqa: ASYNC110 - a log line, no event to wait on
            await asyncio.sleep(0.05)
    finally:
        await feed.stop()
    told = [r.levelname for r in caplog.records if "could not refetch signing keys" in r.getMessage()]
    assert told and set(told) == {level}


async def test_the_poll_after_the_starts_retries_is_phased_again(verifier, monkeypatch):
    """The start's retries (0.5, 1, 2 ... s) are the same in every service, which start together: the first poll
    after them waits half to all of the interval at random, as the first wait does, or the services polled auth in
    step for good (it then held one PostgreSQL connection per overlapping poll; docs/performance.md, item 61).
    Before, it waited the whole interval: with random() at 0, 2.0 s here instead of 1.0."""
    from shared import authz
    from shared.errors import Unavailable
    from shared.messages.auth import Revocations

    monkeypatch.setattr(authz, "STARTUP_RETRY", 0.01)
    monkeypatch.setattr(authz.random, "random", lambda: 0.0)
    calls = []
    polled_after_read = asyncio.Event()

    async def fetch():
        calls.append(time.monotonic())
        if len(calls) == 4:
            polled_after_read.set()
        if len(calls) < 3:
            raise Unavailable("auth is not running")
        return Revocations(users={})

    feed = authz.VerifierFeed(verifier, fetch, 2.0)
    waits = _feed_waits(monkeypatch, feed)
    await feed.start(_Bus())
    try:
        await asyncio.wait_for(polled_after_read.wait(), 10)
    finally:
        await feed.stop()
    # the wait before the poll after the read (start's read and two retries failed, the third read answered): the
    # interval's half (random() 0), not the whole 2.0 s. The waits the feed took, not the wall time between the
    # calls (a window of 0.9-1.9 s a loaded machine can miss)
    assert waits[:3] == [0.01, 0.02, 1.0], waits
