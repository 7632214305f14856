"""The auth service's argon2 turns (services/auth/handlers.py): at most HASHING_AT_ONCE hashes run together, and a
check that cannot start within HASH_WAIT_SECONDS is answered 503 (the gateway adds Retry-After) instead of being
made after its caller has given up (the gateway answers 504 after 5 s; bench/sign_in.py measured the collapse)."""

from __future__ import annotations

import asyncio
import time

import pytest
from argon2 import PasswordHasher

from services.auth import handlers
from shared.errors import Unavailable


async def test_a_check_that_cannot_get_a_turn_in_time_is_refused_and_takes_nothing(monkeypatch):
    monkeypatch.setattr(handlers, "_hashing", asyncio.Semaphore(handlers.HASHING_AT_ONCE))
    monkeypatch.setattr(handlers, "HASH_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(handlers, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))  # cheap
    stored = handlers._hasher.hash("the-password")
    for _ in range(handlers.HASHING_AT_ONCE):  # every turn taken, as by hashes under way
        await handlers._hashing.acquire()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="retry in a moment"):
        await handlers.secret_matches(stored, "the-password")
    with pytest.raises(Unavailable):
        await handlers.hash_secret("another")
    assert time.monotonic() - started < 2.0
    handlers._hashing.release()  # one turn free again: the refused ones took none, so a check runs at once
    assert await handlers.secret_matches(stored, "the-password")
    assert not await handlers.secret_matches(stored, "wrong")
    assert handlers._hashing._value == 1
