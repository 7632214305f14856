"""users/update_password: a wrong current password counts and locks like a failed sign-in, one check at a time
(services/auth/handlers.py update_password, PASSWORD_CHANGE_SOURCE), also when the caller names themselves by `email`.
Until session 32 that way checked it with no claim, count or lock: whoever held the user's access token could guess
the password without end, many guesses at once, each a hashing turn at a clean source's place (hashing_turns.py)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher

from services.auth import handlers
from services.auth.hashing_turns import HashingTurns
from shared.authz import Principal
from shared.errors import Forbidden
from shared.messages.auth import UpdatePassword

ALICE = uuid.uuid4()


@pytest.fixture
def calls(monkeypatch) -> dict[str, list]:
    monkeypatch.setattr(handlers, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))  # cheap
    monkeypatch.setattr(handlers, "_hashing", HashingTurns(handlers.HASHING_AT_ONCE))
    alice = {"id": ALICE, "username": "alice", "password_hash": handlers._hasher.hash("the-password")}
    calls: dict[str, list] = {"claims": [], "failed": [], "hashed": [], "locked": []}

    async def user_by_login(pool, login):
        return alice if login == "alice@example.com" else None

    async def user_by_id(pool, user_id):
        return alice if user_id == ALICE else None

    async def claim(pool, user_id, source, attempt, lease):
        calls["claims"].append((user_id, source))
        return True

    async def release(*args):
        return None

    async def login_failures(pool, user_id, source):
        return {"failures": 10, "locked_until": datetime.now(UTC) + timedelta(minutes=5)} if calls["locked"] else None

    async def record_failed_login(pool, user_id, source, lock_after, lock_seconds):
        calls["failed"].append((user_id, source))
        return len(calls["failed"])

    real_matches = handlers.secret_matches

    async def secret_matches(stored, secret, priority=0):
        calls["hashed"].append(secret)
        return await real_matches(stored, secret, priority)

    for name, fake in (("user_by_login", user_by_login), ("user_by_id", user_by_id), ("claim_login_attempt", claim),
                       ("release_login_attempt", release), ("login_failures", login_failures),
                       ("record_failed_login", record_failed_login)):
        monkeypatch.setattr(handlers.store, name, fake)
    monkeypatch.setattr(handlers, "secret_matches", secret_matches)
    return calls


def _deps() -> SimpleNamespace:
    return SimpleNamespace(pool=None, settings=SimpleNamespace(lockout_after=10, lockout_seconds=900))


def _alice() -> Principal:
    return Principal(subject=str(ALICE), kind="user", admin=False, client_id="ui", username="alice",
                     issued_at=time.time())


@pytest.mark.parametrize("email", [None, "alice@example.com"])
async def test_a_wrong_current_password_is_counted_one_check_at_a_time_by_email_too(calls, email) -> None:
    cmd = UpdatePassword(password="a-new-password", current_password="a-guess", email=email)
    with pytest.raises(Forbidden, match="current_password is missing or wrong"):
        await handlers.update_password(_deps(), _alice(), cmd)
    assert calls["claims"] == [(ALICE, handlers.PASSWORD_CHANGE_SOURCE)], "checked without the one-at-a-time claim"
    assert calls["failed"] == [(ALICE, handlers.PASSWORD_CHANGE_SOURCE)], "a wrong current password not counted"
    assert calls["hashed"] == ["a-guess"]


@pytest.mark.parametrize("email", [None, "alice@example.com"])
async def test_once_locked_no_current_password_is_checked_by_email_either(calls, email) -> None:
    calls["locked"].append(True)
    cmd = UpdatePassword(password="a-new-password", current_password="the-password", email=email)
    with pytest.raises(Forbidden) as refused:
        await handlers.update_password(_deps(), _alice(), cmd)
    assert refused.value.code == "account_locked" and calls["hashed"] == []


async def test_another_users_password_by_email_is_for_administrators_only(calls) -> None:
    bob = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="ui", username="bob",
                    issued_at=time.time())
    with pytest.raises(Forbidden):
        await handlers.update_password(_deps(), bob, UpdatePassword(password="a-new-password",
                                                                    email="alice@example.com"))
    assert calls["claims"] == [] and calls["hashed"] == []
