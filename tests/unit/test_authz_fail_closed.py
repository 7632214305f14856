"""A revocation is applied, not dropped, when its numbers are no moment (shared/authz.py): fail closed.

Since 34178300 an `events.auth.tokens_revoked` / `events.user.deactivated` event whose `revoked_before` (or a task
run's session's `expires`) was NaN, infinite or no number was ignored, so a valid revocation of a named user or
session left its tokens accepted until the next poll of the list (20 s); a NaN in the list itself (`max` keeps a
NaN) dropped the user's earlier revocation, and a NaN session was not kept at all. Now such a moment counts as the
moment the revocation is heard (an expiry as now + the longest a token can live), with a warning. An event that is
no JSON object (a list, a number, a string) raised AttributeError out of the NATS callback (`event.get`); it is a
malformed event: warned and ignored."""

from __future__ import annotations

import json
import time

import pytest

from shared import subjects
from shared.authz import TASK_TOKEN_MAX_TTL, Principal, TokenVerifier, VerifierFeed, _longest_token_lifetime
from shared.messages.auth import Revocations
from shared.messages.tasks import IssueTaskToken
from shared.settings import AuthSettings
from tests.unit.test_tenant_membership_feed import _Bus, _Message

USER = "3f2a9c1e-0000-4000-8000-000000000002"
NO_MOMENTS = ["1e999", "-1e999", "NaN", "Infinity", '"nan"', '"soon"', "true", "null", "[1]", "1" + "0" * 400]


async def _feed() -> tuple[VerifierFeed, TokenVerifier, _Bus]:
    async def keys():
        return []

    async def fetch():
        return Revocations(users={})

    verifier = TokenVerifier(AuthSettings(), keys)
    feed, bus = VerifierFeed(verifier, fetch, 20.0), _Bus()
    await feed.start(bus)
    return feed, verifier, bus


def _principal(issued_at: float, session: str | None = None) -> Principal:
    return Principal(subject=USER, kind="user", admin=False, client_id="c", username="u", issued_at=issued_at,
                     session=session)


@pytest.mark.parametrize("subject, body", [
    (subjects.EVENT_USER_DEACTIVATED, '{{"user_id": "{user}", "revoked_before": {moment}}}'),
    (subjects.EVENT_TOKENS_REVOKED, '{{"subject": "{user}", "revoked_before": {moment}}}'),
], ids=["deactivated", "tokens-revoked"])
@pytest.mark.parametrize("moment", NO_MOMENTS)
async def test_a_user_revocation_at_no_moment_refuses_the_tokens_issued_before_it_was_heard(subject, body, moment,
                                                                                               caplog):
    feed, verifier, bus = await _feed()
    try:
        now = time.time()
        await bus.callbacks[subject](_Message(body.format(user=USER, moment=moment).encode()))  # no raise
        assert "no finite moment" in caplog.text
        assert verifier._is_revoked(_principal(now - 50)), "ignored: the user's tokens were accepted until the poll"
        assert not verifier._is_revoked(_principal(time.time() + 10)), "a token issued later is refused"
    finally:
        await feed.stop()


@pytest.mark.parametrize("moment", NO_MOMENTS)
async def test_a_session_revocation_at_no_moment_refuses_the_session(moment, caplog):
    feed, verifier, bus = await _feed()
    try:
        deliver = bus.callbacks[subjects.EVENT_TOKENS_REVOKED]
        await deliver(_Message(f'{{"subject": "{USER}", "session": "s1", "revoked_before": {moment}}}'.encode()))
        assert verifier._is_revoked(_principal(time.time() - 50, "s1")), "the session's tokens were accepted"
        assert not verifier._is_revoked(_principal(time.time() - 50, "s2"))
        assert not verifier._is_revoked(_principal(time.time() - 50)), "the user's other sessions stay valid"
        assert verifier._revoked_sessions["s1"] >= time.time() + verifier._settings.access_token_ttl
    finally:
        await feed.stop()


@pytest.mark.parametrize("expires", [m for m in NO_MOMENTS if m != "null"])  # null: no expiry (a signed-in session)
async def test_a_run_session_whose_expiry_is_no_moment_is_kept_as_long_as_any_token_can_live(expires, caplog):
    feed, verifier, bus = await _feed()
    try:
        deliver = bus.callbacks[subjects.EVENT_TOKENS_REVOKED]
        await deliver(_Message(json.dumps({"subject": USER, "session": "run-1", "revoked_before": time.time()})
                               .replace("}", f', "expires": {expires}}}').encode()))
        assert verifier._is_revoked(_principal(time.time() - 50, "run-1")), "the run's token was accepted"
        kept = verifier._revoked_sessions["run-1"] - time.time()
        assert kept >= _longest_token_lifetime(verifier._settings), kept
        assert "no finite moment" in caplog.text
    finally:
        await feed.stop()


@pytest.mark.parametrize("subject", [subjects.EVENT_TOKENS_REVOKED, subjects.EVENT_USER_DEACTIVATED])
@pytest.mark.parametrize("body", ["[1, 2]", "5", '"revoke"', "null", "true", "{", '{"revoked_before": 5}'])
async def test_an_event_that_names_nobody_is_ignored_with_a_warning(subject, body, caplog):
    feed, verifier, bus = await _feed()
    try:
        await bus.callbacks[subject](_Message(body.encode()))  # no AttributeError out of the callback
        assert "ignoring a malformed" in caplog.text
        assert verifier._revoked == {} and verifier._revoked_sessions == {}
    finally:
        await feed.stop()


def test_a_list_with_no_moment_revokes_as_of_now_and_keeps_the_earlier_revocation(caplog):
    async def keys():
        return []

    verifier = TokenVerifier(AuthSettings(), keys)
    now = time.time()
    verifier.revoke(USER, now - 100)
    verifier.set_revocations({USER: float("nan")}, {"s1": float("nan"), "run-1": now}, {"run-1": float("inf")})
    assert verifier._is_revoked(_principal(now - 150)), "the earlier revocation was dropped (max kept the NaN)"
    assert verifier._is_revoked(_principal(now - 50))
    assert verifier._is_revoked(_principal(now - 50, "s1")), "a NaN session was not kept"
    assert verifier._revoked_sessions["run-1"] - time.time() >= _longest_token_lifetime(verifier._settings)
    assert verifier._revoked_sessions["run-1"] < time.time() + 2 * TASK_TOKEN_MAX_TTL, "kept for good"
    assert "no finite moment" in caplog.text


def test_the_longest_task_token_is_the_one_auth_may_issue():
    bound = next(m.le for m in IssueTaskToken.model_fields["ttl"].metadata if getattr(m, "le", None) is not None)
    assert TASK_TOKEN_MAX_TTL == bound
