"""Auth's own verifier reads the signing keys from its database (services/auth/app.py own_keys). With the database
down, that read raised asyncpg's or the socket's error out of the verifier: each token of an unknown kid was a 500
'internal error' with a logged traceback. Now it is Unavailable: the verifier's 503 'try again in a moment', and the
next read at most KEY_REFETCH_INTERVAL later (shared/authz.py)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import asyncpg
import pytest

from services.auth import app as auth_app
from shared import authz
from shared.authz import TokenVerifier
from shared.errors import Unavailable
from tests.unit.test_authz import SETTINGS, jwks, make_token
from tests.unit.test_bus_database_unavailable import asyncpg_outage


class Pool:
    def __init__(self, fails: BaseException | None) -> None:
        self.fails, self.reads = fails, 0

    async def fetch(self, sql: str, *args):
        self.reads += 1
        if self.fails is not None:
            raise self.fails
        return [{"public_jwk": json.dumps(jwk)} for jwk in jwks()]


@pytest.mark.parametrize("fails", ["refused", "timed_out",  # asyncpg's own OSErrors (asyncpg_outage)
                                   asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")])
async def test_a_database_that_is_down_is_a_503_for_the_tokens_auth_checks_and_read_at_most_once_a_second(
        fails, monkeypatch):
    # the verifier's clock stands still: a host stalled past KEY_REFETCH_INTERVAL between two tokens read again
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: 1000.0, time=time.time))
    pool = Pool(await asyncpg_outage(fails) if isinstance(fails, str) else fails)
    verifier = TokenVerifier(SETTINGS, lambda: auth_app.own_keys(pool, SETTINGS))
    for kid in ("k1", "bogus-1", "bogus-2"):
        with pytest.raises(Unavailable, match="signing keys could not be read.*auth's database did not answer"):
            await verifier.verify(make_token(kid=kid))
    assert pool.reads == 1
    verifier._keys_failed_at -= 1.0  # KEY_REFETCH_INTERVAL later, the database back
    pool.fails = None
    assert (await verifier.verify(make_token())).subject == "u1" and pool.reads == 2


async def test_another_error_is_not_taken_for_a_database_that_is_down():
    """A fault of ours (a bug) is not hidden behind a 503."""
    verifier = TokenVerifier(SETTINGS, lambda: auth_app.own_keys(Pool(KeyError("public_jwk")), SETTINGS))
    with pytest.raises(KeyError):
        await verifier.verify(make_token())


@pytest.mark.parametrize("fails", [
    ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 9000)"),  # not asyncpg's: object storage's, a URL's
    asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),  # a misuse
    asyncpg.exceptions.ProtocolViolationError("invalid message format"),  # asked again, the same
], ids=lambda exc: type(exc).__name__)
async def test_an_error_that_is_not_the_database_being_down_is_not_a_503(fails):
    """DATABASE_DOWN took any OSError and any InterfaceError for the database being down: a bug read as 'try again in
    a moment'. auth asks shared.data_errors.is_database_unavailable, as every command's 503 does."""
    verifier = TokenVerifier(SETTINGS, lambda: auth_app.own_keys(Pool(fails), SETTINGS))
    with pytest.raises(type(fails)):
        await verifier.verify(make_token())
