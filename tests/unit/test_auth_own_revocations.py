"""Auth's own verifier reads the revocation list from its database (services/auth/app.py own_revocations), as it
reads its signing keys (own_keys, test_auth_own_keys.py). With the database down when that list was never read (its
start's read failed), asyncpg's or the socket's error went out of the verifier: each token auth checked was a 500
'internal error' with a logged traceback. Now it is Unavailable: the verifier's 503 'try again in a moment', and
the next read at most KEY_REFETCH_INTERVAL later (shared/authz.py). Through the start hook's own wiring (the
feed it builds), with the bootstrap and the bus replaced."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import asyncpg
import pytest

from services.auth import app as auth_app
from shared import authz
from shared.authz import KEY_REFETCH_INTERVAL, VerifierFeed
from shared.errors import Unavailable
from shared.service import Runtime
from shared.settings import Settings
from tests.unit.auth_start import Broker, start_without_database_or_bus
from tests.unit.test_authz import jwks, make_token
from tests.unit.test_bus_database_unavailable import asyncpg_outage


class Pool:
    """The keys answer; the revocation list's statements fail while `fails` is set."""

    def __init__(self, fails: BaseException | None) -> None:
        self.fails, self.reads = fails, 0

    async def fetch(self, sql: str, *args):
        if "public_jwk" in sql:
            return [{"public_jwk": json.dumps(jwk)} for jwk in jwks()]
        return []  # a part of the list: nothing revoked

    async def fetchrow(self, sql: str, *args):  # the list's first statement: its position and the keys' fingerprint
        self.reads += 1
        if self.fails is not None:
            raise self.fails
        return {"position": 7, "keys": "f1"}

    async def execute(self, sql: str, *args) -> str:  # the auth state sweep's (not within the test)
        return "DELETE 0"


class QuietFeed(VerifierFeed):
    """The start hook's feed without the bus (no subscription, no poll): its verifier reads the list itself."""

    async def start(self, nats_client, on_membership_changed=None) -> None:
        pass

    async def stop(self) -> None:
        pass


class Outbox:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def wake(self) -> None:
        pass

    async def send_round(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self, task) -> None:
        task.cancel()


@pytest.mark.parametrize("fails", ["refused", "timed_out",  # asyncpg's own OSErrors (asyncpg_outage)
                                   asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")])
async def test_a_database_that_is_down_before_the_list_was_read_is_a_503_and_read_at_most_once_a_second(
        fails, monkeypatch):
    start_without_database_or_bus(monkeypatch, QuietFeed)
    monkeypatch.setattr(auth_app, "Outbox", Outbox)
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(authz, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    pool = Pool(await asyncpg_outage(fails) if isinstance(fails, str) else fails)
    runtime = Runtime(name="auth", settings=Settings(), broker=Broker(), db=pool)  # type: ignore[arg-type]
    await auth_app.start(runtime)
    try:
        verifier = runtime.extras["verifier"]
        for step in range(3):
            with pytest.raises(Unavailable, match=r"revoked tokens could not be read.*auth's database did not answer"):
                await verifier.verify(make_token(jti=f"t{step}"))
        assert pool.reads == 1
        clock.now += KEY_REFETCH_INTERVAL  # the database back
        pool.fails = None
        assert (await verifier.verify(make_token())).subject == "u1" and pool.reads == 2
        assert verifier.position == "7"
    finally:
        await auth_app.stop(runtime)


async def test_another_error_is_not_taken_for_a_database_that_is_down():
    """A fault of ours (a bug) is not hidden behind a 503."""
    class Broken(Pool):
        async def fetchrow(self, sql: str, *args):
            raise KeyError("position")

    with pytest.raises(KeyError):
        await auth_app.own_revocations(Broken(None), Settings().auth)


@pytest.mark.parametrize("fails", [
    ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 9000)"),  # not asyncpg's: object storage's, a URL's
    asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),  # a misuse
], ids=lambda exc: type(exc).__name__)
async def test_an_error_that_is_not_the_database_being_down_is_not_a_503(fails):
    """As own_keys: DATABASE_DOWN took any OSError and any InterfaceError for the database being down."""
    class Broken(Pool):
        async def fetchrow(self, sql: str, *args):
            raise fails

    with pytest.raises(type(fails)):
        await auth_app.own_revocations(Broken(None), Settings().auth)
