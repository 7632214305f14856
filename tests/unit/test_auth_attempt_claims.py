"""One attempt at a time (services/auth/handlers.py `_one_at_a_time`), the one helper over the store's two claim and
release pairs (a sign-in's per name tried, users/update_password's per user; two copies of the same context manager
until session 42, `duplicates`): the claim is released with the attempt that took it, a claim held elsewhere is 429
and releases nothing, and a release that fails is logged naming the user where there is one and never a typed name
(people type passwords into the name field). The pairs' rows are tests/integration/test_auth_attempts.py's."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest

from services.auth import handlers
from shared.errors import TooManyRequests

TYPED = "alice@example.com"  # a sign-in's key: the name typed
USER = uuid.uuid4()  # users/update_password's key: the signed-in user's id


class Store:
    """A claim/release pair recording its calls; `held` claims nothing, `broken` fails its release."""

    def __init__(self, *, held: bool = False, broken: bool = False) -> None:
        self.held, self.broken, self.calls = held, broken, []

    async def claim(self, pool, key, source, attempt, lease):
        self.calls.append(("claim", key, source, attempt))
        assert lease == handlers.ATTEMPT_LEASE_SECONDS
        return not self.held

    async def release(self, pool, key, source, attempt):
        self.calls.append(("release", key, source, attempt))
        if self.broken:
            raise asyncpg.PostgresConnectionError("connection lost")


KEYS = [(TYPED, "198.51.100.7", None), (USER, handlers.PASSWORD_CHANGE_SOURCE, USER)]
IDS = ["sign-in", "password-change"]


@pytest.mark.parametrize("key, source, user_id", KEYS, ids=IDS)
async def test_the_claim_is_released_with_its_attempt_after_the_answer(key, source, user_id):
    store = Store()
    async with handlers._one_at_a_time(None, store.claim, store.release, key, source, user_id=user_id):
        assert [call[0] for call in store.calls] == ["claim"]
    (claimed, *taken), (released, *given) = store.calls
    assert (claimed, released) == ("claim", "release") and taken == given == [key, source, taken[2]]
    with pytest.raises(ValueError):  # an attempt that fails releases its claim too
        async with handlers._one_at_a_time(None, store.claim, store.release, key, source, user_id=user_id):
            raise ValueError("the check failed")
    assert [call[0] for call in store.calls[2:]] == ["claim", "release"]


@pytest.mark.parametrize("key, source, user_id", KEYS, ids=IDS)
async def test_an_attempt_cancelled_while_answered_releases_its_claim(key, source, user_id):
    """An attempt whose task is cancelled mid-check: CancelledError is no Exception, so
    a release written as `except Exception` rather than `finally` would keep the claim for its 30 s lease, and that
    name's next sign-ins from the address would be 429."""
    store, inside = Store(), asyncio.Event()

    async def attempt():
        async with handlers._one_at_a_time(None, store.claim, store.release, key, source, user_id=user_id):
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(attempt())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (claimed, *taken), (released, *given) = store.calls
    assert (claimed, released) == ("claim", "release") and taken == given


@pytest.mark.parametrize("key, source, user_id", KEYS, ids=IDS)
async def test_an_attempt_already_being_answered_is_429_and_releases_nothing(key, source, user_id):
    store = Store(held=True)
    with pytest.raises(TooManyRequests) as refused:
        async with handlers._one_at_a_time(None, store.claim, store.release, key, source, user_id=user_id):
            pytest.fail("answered while another attempt held the claim")
    assert refused.value.retry_after == 1.0
    assert [call[0] for call in store.calls] == ["claim"]


@pytest.mark.parametrize("key, source, user_id", KEYS, ids=IDS)
async def test_a_failed_release_is_logged_with_the_user_and_never_the_typed_name(key, source, user_id, caplog):
    store = Store(broken=True)
    caplog.set_level(logging.WARNING, logger=handlers.log.name)
    async with handlers._one_at_a_time(None, store.claim, store.release, key, source, user_id=user_id):
        pass  # the attempt's answer stands: the release's failure is logged, not raised
    (record,) = [r for r in caplog.records if "could not release a sign-in attempt" in r.getMessage()]
    said = record.getMessage()
    assert "the claim lapses in 30 s" in said and "connection lost" in said, said
    if user_id is None:
        assert TYPED not in said and " of user " not in said, said
    else:
        assert f"of user {USER}" in said, said
