"""VerifierFeed's events with numbers no event holds: JSON's 1e999 reads as infinity, and `int()` of it raised
OverflowError in the membership-changed callback (shared/authz.py), which none of its handlers caught; an infinite
`revoked_before` refused a subject's every token for good, a NaN one (`max` keeps a NaN) dropped the subject's
earlier revocation. A membership event with such a number is now a malformed event: ignored with a warning; a
revocation at no moment is applied as of the moment it is heard (failing closed: test_authz_fail_closed.py)."""

from __future__ import annotations

import json
import time

import pytest

from shared import subjects
from shared.authz import Principal, TokenVerifier, VerifierFeed
from shared.messages.auth import Revocations
from shared.settings import AuthSettings
from tests.unit.test_tenant_membership_feed import _Bus, _Message

USER = "3f2a9c1e-0000-4000-8000-000000000001"


async def _feed(heard: list) -> tuple[VerifierFeed, TokenVerifier, _Bus]:
    async def keys():
        return []

    async def fetch():
        return Revocations(users={})

    verifier = TokenVerifier(AuthSettings(), keys)
    feed, bus = VerifierFeed(verifier, fetch, 20.0), _Bus()
    await feed.start(bus, on_membership_changed=lambda user_id, workspace_id: heard.append((user_id, workspace_id)))
    return feed, verifier, bus


def _principal(issued_at: float) -> Principal:
    return Principal(subject=USER, kind="user", admin=False, client_id="c", username="u", issued_at=issued_at)


@pytest.mark.parametrize("workspace_id", ["1e999", "-1e999", "7.5", "true", '"7x"', "[7]", "null"])
async def test_a_membership_event_with_a_workspace_id_no_id_is_ignored(workspace_id, caplog):
    heard: list = []
    feed, _, bus = await _feed(heard)
    try:
        deliver = bus.callbacks[subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED]
        await deliver(_Message(f'{{"workspace_id": {workspace_id}, "user_id": "{USER}"}}'.encode()))  # no raise
        assert heard == []
        assert "ignoring a malformed" in caplog.text
        await deliver(_Message(json.dumps({"workspace_id": 7, "user_id": USER}).encode()))
        await deliver(_Message(json.dumps({"workspace_id": "8", "user_id": USER}).encode()))
        assert heard == [(USER, 7), (USER, 8)]
    finally:
        await feed.stop()


@pytest.mark.parametrize("subject, body", [
    (subjects.EVENT_USER_DEACTIVATED, '{{"user_id": "{user}", "revoked_before": {moment}}}'),
    (subjects.EVENT_TOKENS_REVOKED, '{{"subject": "{user}", "revoked_before": {moment}}}'),
], ids=["deactivated", "tokens-revoked"])
@pytest.mark.parametrize("moment", ["1e999", "NaN", "Infinity", '"nan"', "true"])
async def test_a_revocation_at_no_moment_is_applied_as_of_now_and_keeps_the_earlier_one(subject, body, moment,
                                                                                         caplog):
    feed, verifier, bus = await _feed([])
    try:
        deliver = bus.callbacks[subject]
        now = time.time()
        await deliver(_Message(body.format(user=USER, moment=now).encode()))
        assert verifier._is_revoked(_principal(now - 10))  # revoked before now
        assert not verifier._is_revoked(_principal(now + 10))
        await deliver(_Message(body.format(user=USER, moment=moment).encode()))  # no raise
        assert "no finite moment" in caplog.text  # applied as of now: test_authz_fail_closed.py
        assert verifier._is_revoked(_principal(now - 10)), "the earlier revocation was dropped"
        assert not verifier._is_revoked(_principal(now + 10)), "a later token is refused"
    finally:
        await feed.stop()
