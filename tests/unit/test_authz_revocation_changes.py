"""The revocation list read by what changed (shared/authz.py VerifierFeed, auth migration 020): every poll read the
whole list (paged) in every service; now the whole list is read at the start (its answer names a `position`), each poll
asks only for what was revoked since the last read's position, and the whole list is read again every
`full_interval` and whenever a read of changes cannot be answered (a position auth no longer covers, an older auth).
A revocation whose event was missed is refused after the next poll, in a verifier that has read the list before and
in one started afterwards (a restart reads the whole list first). The SQL side (positions, the triggers, the sweep):
tests/integration/test_auth_task_tokens.py."""

from __future__ import annotations

import heapq
import time

import pytest

from shared import authz
from shared.authz import Principal, TokenVerifier, VerifierFeed, bus_verifier, revocation_page_request
from shared.errors import Conflict, InvalidRequest, Unavailable
from shared.messages.auth import ListRevocations, Revocations
from shared.settings import AuthSettings
from tests.unit.test_tenant_membership_feed import _Bus

USER = "3f2a9c1e-0000-4000-8000-000000000002"
OTHER = "3f2a9c1e-0000-4000-8000-000000000003"


def _token(subject: str = USER, issued_at: float | None = None, session: str | None = None) -> Principal:
    return Principal(subject=subject, kind="user", admin=False, client_id="c", username="u",
                     issued_at=time.time() - 30 if issued_at is None else issued_at, session=session)


async def _keys():
    return []


class _Auth:
    """auth's two answers over a list of revocations, each written at a position: the whole list (with the position
    of the read) and the changes since a position; `lost` answers a change read 409 as auth does for a position it
    no longer covers."""

    def __init__(self) -> None:
        self.written: list[tuple[int, str, float]] = []  # (position, subject, moment)
        self.at = 10
        self.lost = False
        self.asked: list[str | None] = []  # None: the whole list; else the position a change read asked from

    def revoke(self, subject: str, moment: float) -> None:
        self.written.append((self.at, subject, moment))
        self.at += 1

    async def whole(self) -> Revocations:
        self.asked.append(None)
        return Revocations(users=_merged(self.written), position=str(self.at))

    async def changes(self, since: str) -> Revocations:
        self.asked.append(since)
        if self.lost:
            raise Conflict("no longer all kept", code="revocation_position_lost")
        return Revocations(users=_merged([w for w in self.written if w[0] >= int(since)]), position=str(self.at))


def _merged(written: list[tuple[int, str, float]]) -> dict[str, float]:
    users: dict[str, float] = {}
    for _, subject, moment in written:
        users[subject] = max(moment, users.get(subject, 0.0))
    return users


async def _started(auth: _Auth, full_interval: float = authz.FULL_READ_INTERVAL) -> tuple[VerifierFeed, TokenVerifier]:
    verifier = TokenVerifier(AuthSettings(), _keys)
    feed = VerifierFeed(verifier, auth.whole, 20.0, changes=auth.changes, full_interval=full_interval)
    await feed.start(_Bus())  # the events' subscriptions: none of them is ever called here (every event missed)
    return feed, verifier


async def test_a_poll_reads_only_the_changes_and_refuses_a_token_whose_event_was_missed() -> None:
    auth = _Auth()
    feed, verifier = await _started(auth)
    try:
        assert auth.asked == [None] and verifier.position == "10"  # the start reads the whole list
        await feed._poll_once()
        assert auth.asked == [None, "10"], "a poll read the whole list again"
        assert not verifier._is_revoked(_token())
        auth.revoke(USER, time.time())  # its event never comes
        await feed._poll_once()
        assert auth.asked[-1] == "10" and verifier.position == "11"
        assert verifier._is_revoked(_token()), "the poll after a revocation whose event was missed accepts its token"
        assert not verifier._is_revoked(_token(OTHER)) and not verifier._is_revoked(_token(issued_at=time.time() + 5))
        auth.revoke(OTHER, time.time())
        await feed._poll_once()
        assert auth.asked[-1] == "11" and verifier._is_revoked(_token(OTHER)) and verifier._is_revoked(_token())
        assert auth.asked.count(None) == 1
    finally:
        await feed.stop()


async def test_a_restarted_service_reads_the_whole_list_first() -> None:
    """A process starts with no position: what was revoked while it was away (and any event it missed) is in the
    whole list it reads before accepting a token, never asked for as changes since a position it does not have."""
    auth = _Auth()
    feed, verifier = await _started(auth)
    await feed._poll_once()
    await feed.stop()
    auth.revoke(USER, time.time())  # while the service is stopped
    again, restarted = await _started(auth)
    try:
        assert auth.asked[-1] is None and restarted._is_revoked(_token())
    finally:
        await again.stop()


async def test_a_change_read_auth_cannot_answer_reads_the_whole_list_in_the_same_poll() -> None:
    auth = _Auth()
    feed, verifier = await _started(auth)
    try:
        auth.revoke(USER, time.time())
        auth.lost = True  # the sweep deleted changes the position needs (a verifier that could not read for a day)
        await feed._poll_once()
        assert auth.asked[-2:] == ["10", None]
        assert verifier._is_revoked(_token()) and verifier.position == "11"
    finally:
        await feed.stop()


async def test_a_change_read_failing_with_an_error_no_read_expects_reads_the_whole_list_in_the_same_poll() -> None:
    """Not only auth's refusals: a change read that fails otherwise (the bus client's error, a reply that is no page)
    reads the whole list at once too; let through, it lost the poll, and every next one up to the full interval."""
    auth = _Auth()
    feed, verifier = await _started(auth)
    try:
        auth.revoke(USER, time.time())

        async def broken(since):
            auth.asked.append(since)
            raise RuntimeError("no page")

        feed._changes = broken
        await feed._poll_once()
        assert auth.asked[-2:] == ["10", None]
        assert verifier._is_revoked(_token()) and verifier.position == "11"
    finally:
        await feed.stop()


@pytest.mark.parametrize("since, after", [("\u00b2", None), ("\u0661\u0662", None), ("10", "c:\u00b2"),
                                          ("10", f"c:{2 ** 63}"), ("10", "0:x")])
async def test_a_change_read_of_no_position_or_page_is_400_before_the_database(since, after) -> None:
    """Refused as bad input, not a 500: digits int() takes but no position is made of ('\u0661'), or int() refuses
    ('\u00b2'), a change id past a bigint (asyncpg could not send it), the whole list's cursor."""
    from services.auth import handlers

    with pytest.raises(InvalidRequest):
        await handlers.revocation_changes(None, since, after)


async def test_the_whole_list_is_read_again_every_full_interval() -> None:
    """The safety net: a revocation the change reads do not tell (a database restored from a backup, whose positions
    moved back) is read with the whole list within `full_interval`."""
    auth = _Auth()
    feed, verifier = await _started(auth, full_interval=0.2)
    try:
        auth.written.append((3, USER, time.time()))  # below the position: no change read ever answers it
        await feed._poll_once()
        assert auth.asked[-1] == "10" and not verifier._is_revoked(_token())
        verifier._full_read_at -= 0.2  # the interval has passed
        await feed._poll_once()
        assert auth.asked[-1] is None and verifier._is_revoked(_token())
        await feed._poll_once()
        assert auth.asked[-1] == "10"  # and changes again after it
    finally:
        await feed.stop()


async def test_a_failed_change_read_keeps_the_position_and_nothing_is_missed() -> None:
    auth = _Auth()
    feed, verifier = await _started(auth)
    try:
        auth.revoke(USER, time.time())
        failing = auth.changes

        async def away(since):
            raise Unavailable("auth is away")

        async def whole_away():
            raise Unavailable("auth is away")

        feed._changes, feed._fetch = away, whole_away
        await feed._poll_once()  # both fail: what was read stays, and the position with it
        assert verifier.position == "10" and not verifier._is_revoked(_token())
        feed._changes, feed._fetch = failing, auth.whole
        await feed._poll_once()
        assert auth.asked[-1] == "10" and verifier._is_revoked(_token())
    finally:
        await feed.stop()


async def test_a_whole_read_without_a_position_reads_the_whole_list_at_the_next_poll_too() -> None:
    """An auth of before session 32 names no position: every poll reads the whole list, as before."""
    auth = _Auth()

    async def old_whole():
        auth.asked.append(None)
        return Revocations(users=_merged(auth.written))

    verifier = TokenVerifier(AuthSettings(), _keys)
    feed = VerifierFeed(verifier, old_whole, 20.0, changes=auth.changes)
    await feed.start(_Bus())
    try:
        auth.revoke(USER, time.time())
        await feed._poll_once()
        assert auth.asked == [None, None] and verifier.position is None and verifier._is_revoked(_token())
    finally:
        await feed.stop()


def test_the_page_requests_name_only_what_is_asked() -> None:
    """An auth of before session 32 refuses unknown fields: a plain read's pages stay `{}` and `{"after": ...}`."""
    assert revocation_page_request(None, ListRevocations) == {}
    assert revocation_page_request("3:run-a", ListRevocations) == {"after": "3:run-a"}
    assert revocation_page_request(None, ListRevocations, with_position=True) == {"with_position": True}
    assert revocation_page_request("c:7", ListRevocations, since="12") == {"after": "c:7", "since": "12"}


async def test_the_bus_verifier_reads_changes_and_falls_back_for_an_older_auth(monkeypatch) -> None:
    sent: list[dict] = []
    old_auth = False

    async def request(broker, subject, body, *, timeout, reply_model):
        sent.append(body)
        if old_auth and ({"since", "with_position", "with_keys"} & set(body)):
            raise InvalidRequest("with_position: Extra inputs are not permitted")
        if "since" in body:
            return Revocations(users={OTHER: time.time()}, position="21")
        return Revocations(users={}, position="20" if body.get("with_position") else None)

    monkeypatch.setattr("shared.bus.request", request)
    verifier, feed = bus_verifier(object(), AuthSettings(), 1.0)
    await verifier._read_revocations_once()
    # (session 33: the keys' fingerprint asked for too, tests/unit/test_authz_key_reads.py)
    assert sent == [{"with_position": True, "with_keys": True}] and verifier.position == "20"
    await feed._poll_once()
    assert sent[-1] == {"since": "20", "with_keys": True} and verifier.position == "21"
    assert verifier._is_revoked(_token(OTHER))

    old_auth, sent[:] = True, []
    verifier, feed = bus_verifier(object(), AuthSettings(), 1.0)
    await verifier._read_revocations_once()
    assert sent == [{"with_position": True, "with_keys": True}, {"with_position": True}, {}]
    assert verifier.revocations_read and verifier.position is None


@pytest.mark.parametrize("position", [None, "10"])
async def test_the_first_token_met_reads_the_whole_list_and_keeps_its_position(position) -> None:
    async def whole():
        return Revocations(users={USER: time.time()}, position=position)

    verifier = TokenVerifier(AuthSettings(), _keys)
    verifier.read_revocations_from(whole)
    await verifier._read_revocations_once()
    assert verifier.position == position and verifier._is_revoked(_token()) and verifier.full_read_at > 0


def test_a_read_of_many_sessions_prunes_the_expired_once_not_once_a_session() -> None:
    """A read's sessions (the whole list at a start and every FULL_READ_INTERVAL: ended runs of a day) were each
    merged with a pass over every session kept, n² steps: 8,000 took 1.5 s of the event loop, 70,000 minutes. The
    expired are forgotten once a read, and still forgotten (an event's revocation prunes as before)."""

    class Counted(dict):
        passes = 0

        def items(self):
            Counted.passes += 1
            return super().items()

    verifier = TokenVerifier(AuthSettings(), _keys)
    now = time.time()
    verifier._revoked_sessions = Counted({"expired": now - 1})
    sessions = {f"run-{i}": now - 10 for i in range(200)}
    verifier.set_revocations({}, sessions, {s: now + 3600 for s in sessions} | {"run-0": now - 120})
    assert Counted.passes <= 2, f"{Counted.passes} passes over the kept sessions for one read of 200"
    assert "expired" not in verifier._revoked_sessions and "run-0" not in verifier._revoked_sessions
    assert verifier._is_revoked(_token(session="run-199"))
    # expired meanwhile (its keep time passed): an event's revocation still prunes it (from the expiry heap)
    verifier._revoked_sessions["run-5"] = now - 1
    heapq.heappush(verifier._session_expiry, (now - 1, "run-5"))
    verifier.revoke_session("another", now)
    assert "run-5" not in verifier._revoked_sessions and verifier._is_revoked(_token(session="another"))
