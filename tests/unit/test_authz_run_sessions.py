"""An ended task run's session (shared/authz.py, TokenVerifier.revoke_session with `expires`): a run's token may
outlive access_token_ttl (its lifetime is the run's timeout + 60 s), so its revocation is kept until that token
expires, from the event or the revocation list, not access_token_ttl after the revocation as a signed-in session's."""

from __future__ import annotations

import time

import pytest

from shared.errors import Unauthorized
from tests.unit.test_authz import SETTINGS, make_token, verifier  # noqa: F401 - the fixture


async def test_a_run_session_is_kept_until_its_tokens_expire(verifier):  # noqa: F811
    ended_long_ago = time.time() - SETTINGS.access_token_ttl - 600  # a ten-hour run that ended past the usual span
    expires = time.time() + 9 * 3600
    token = make_token(session_state="run-1", exp=int(time.time()) + 60)
    verifier.revoke_session("run-1", ended_long_ago, expires)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)  # was: forgotten (revoked more than access_token_ttl + 60 s ago), accepted
    verifier.set_revocations({}, {"run-2": ended_long_ago}, {"run-2": expires})  # from the list (a missed event)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(make_token(session_state="run-2"))
    # forgotten once its tokens have expired (a minute's leeway), whatever another entry says
    verifier.revoke_session("run-3", time.time(), time.time() - 61)
    assert "run-3" not in verifier._revoked_sessions
    verifier.revoke_session("run-1", time.time())  # a later event without expiry shortens nothing
    assert verifier._revoked_sessions["run-1"] >= expires
