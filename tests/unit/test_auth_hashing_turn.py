"""The auth service's argon2 turns (services/auth/handlers.py, hashing_turns.py): at most HASHING_AT_ONCE hashes run
together, and a check that cannot start within HASH_WAIT_SECONDS is answered 503 (the gateway adds Retry-After) instead
of being made after its caller has given up (the gateway answers 504 after 5 s; bench/sign_in.py measured the
collapse). Waiting checks are served fewest recent failures of their source first: a flood of failing guesses no longer
takes every turn in its order while a person's sign-in waits behind it (503, or 504 past the gateway's 5 s)."""

from __future__ import annotations

import asyncio

import pytest
from argon2 import PasswordHasher

from services.auth import handlers
from services.auth.hashing_turns import HashingTurns, SourceFailures
from shared.errors import Unavailable


@pytest.fixture
def turns(monkeypatch) -> HashingTurns:
    turns = HashingTurns(handlers.HASHING_AT_ONCE)
    monkeypatch.setattr(handlers, "_hashing", turns)
    monkeypatch.setattr(handlers, "_source_failures", SourceFailures())
    monkeypatch.setattr(handlers, "_hasher", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))  # cheap
    return turns


async def test_a_check_that_cannot_get_a_turn_in_time_is_refused_and_takes_nothing(monkeypatch, turns):
    monkeypatch.setattr(handlers, "HASH_WAIT_SECONDS", 0.2)
    stored = handlers._hasher.hash("the-password")
    for _ in range(handlers.HASHING_AT_ONCE):  # every turn taken, as by hashes under way
        await turns.acquire(0, 1.0)
    with pytest.raises(Unavailable, match="retry in a moment"):
        await asyncio.wait_for(handlers.secret_matches(stored, "the-password"), 10)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(handlers.hash_secret("another"), 10)
    assert turns.waiting == 0 and turns.held == handlers.HASHING_AT_ONCE
    turns.release(False)  # one turn free again: the refused ones took none, so a check runs at once
    assert await handlers.secret_matches(stored, "the-password")
    assert not await handlers.secret_matches(stored, "wrong")
    assert turns.held == handlers.HASHING_AT_ONCE - 1


async def test_waiting_checks_are_served_fewest_failures_first_then_in_arrival_order():
    turns, served = HashingTurns(1), []  # (one turn: the failing sources' share is that one too)
    await turns.acquire(0, 1.0)  # a hash under way

    async def check(name: str, priority: int) -> None:
        await turns.acquire(priority, 10.0)
        served.append(name)
        turns.release(priority > 0)

    waiting = []
    for name, priority in [("flood-1", 5), ("flood-2", 3), ("person", 0), ("flood-3", 3), ("typo", 1)]:
        waiting.append(asyncio.create_task(check(name, priority)))
        await asyncio.sleep(0)  # queued in this order
    assert turns.waiting == 5
    turns.release(False)
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert served == ["person", "typo", "flood-2", "flood-3", "flood-1"]  # first come first served: the flood's first
    assert turns.held == 0 and turns.waiting == 0


async def test_a_turn_granted_as_its_wait_ends_is_passed_on_not_lost():
    turns = HashingTurns(1)
    await turns.acquire(0, 1.0)
    late = asyncio.create_task(turns.acquire(0, 10.0))
    after = asyncio.create_task(turns.acquire(0, 10.0))
    await asyncio.sleep(0)
    turns.release(False)  # granted to `late`...
    late.cancel()  # ...whose caller goes away before it runs
    with pytest.raises(asyncio.CancelledError):
        await late
    await asyncio.wait_for(after, 10)  # the turn went on to the next waiter
    assert turns.held == 1
    for _ in range(3):  # waiters that gave up are skipped: the turn comes free, it is not handed to them
        with pytest.raises(TimeoutError):
            await turns.acquire(0, 0.01)
    assert turns.waiting == 0
    turns.release(False)
    assert turns.held == 0
    await asyncio.wait_for(turns.acquire(5, 0.01), 10)  # free: taken at once


async def test_a_source_that_keeps_failing_waits_behind_a_clean_one(monkeypatch, turns):
    """Through the sign-in's own path: failed checks (an unknown user's too) raise their source's count."""
    stored = handlers._hasher.hash("the-password")
    for _ in range(3):
        handlers._source_failures.failed("198.51.100.7")
    assert handlers._priority("198.51.100.7") == 3 and handlers._priority("192.0.2.1") == 0
    order = []
    for _ in range(handlers.HASHING_AT_ONCE):
        await turns.acquire(0, 1.0)

    async def sign_in(source: str) -> None:
        await handlers.secret_matches(stored, "the-password", handlers._priority(source))
        order.append(source)

    flood = asyncio.create_task(sign_in("198.51.100.7"))
    await asyncio.sleep(0)
    person = asyncio.create_task(sign_in("192.0.2.1"))
    await asyncio.sleep(0)
    turns.release(False)
    await asyncio.wait_for(asyncio.gather(flood, person), 10)
    assert order == ["192.0.2.1", "198.51.100.7"]


def test_failures_fade_and_the_table_is_bounded(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("services.auth.hashing_turns.time.monotonic", lambda: now[0])
    failures = SourceFailures(half_life=60.0, size=3)
    for _ in range(4):
        failures.failed("a")
    assert failures.priority("a") == 4
    now[0] += 60
    assert failures.priority("a") == 2
    now[0] += 600
    assert failures.priority("a") == 0
    for source in "bcd":
        failures.failed(source)
    assert failures.priority("a") == 0 and len(failures._counts) == 3  # the least recently failed, forgotten


async def test_failing_sources_leave_a_turn_for_a_clean_one():
    """Checks of sources that keep failing hold at most HASHING_AT_ONCE - 1 turns: under a flood a person's check
    starts at once, not after a flood's hash (each seconds long on a busy machine at the default cost)."""
    turns = HashingTurns(2)
    assert await turns.acquire(4, 1.0) is True  # a flood's check: the failing sources' one turn
    flood = asyncio.create_task(turns.acquire(2, 10.0))
    await asyncio.sleep(0)
    assert not flood.done() and turns.held == 1 and turns.waiting == 1  # a turn is free, not for the flood
    assert await asyncio.wait_for(turns.acquire(0, 10.0), 10) is False  # a person's: at once
    assert turns.held == 2 and turns.held_failing == 1
    turns.release(False)  # the person's hash ends: the turn stays free, the flood still waits for its own
    await asyncio.sleep(0)
    assert not flood.done() and turns.held == 1
    turns.release(True)  # the flood's hash ends: the next flood check takes its turn
    assert await asyncio.wait_for(flood, 10) is True and turns.held == 1 and turns.held_failing == 1
    turns.release(True)
    assert turns.held == 0 and turns.held_failing == 0
    # with no flood a person's checks have every turn
    assert await turns.acquire(0, 1.0) is False and await turns.acquire(0, 1.0) is False and turns.held == 2


async def test_a_sign_ins_failed_check_raises_its_sources_count_known_user_or_not(monkeypatch, turns):
    """Through handlers._password_login (the database's part stood in for): a wrong password for a known user and any
    password for an unknown one count a failure of the source alike (the order tells nothing of whether a name
    exists); a right one counts none. Without these counts every source stays clean and the order is arrival's."""
    import types
    import uuid

    from shared.errors import Unauthorized
    from shared.messages.auth import IssueToken

    stored = handlers._hasher.hash("the-password")
    monkeypatch.setattr(handlers, "_DUMMY_HASH", handlers._hasher.hash("dummy"))
    alice = {"id": uuid.uuid4(), "username": "alice", "email": None, "password_hash": stored, "enabled": True}

    async def user_by_login(pool, login):
        return alice if login == "alice" else None

    async def claim(*args):
        return True

    async def nothing(*args):
        return None

    async def failed_once(*args):
        return 1

    monkeypatch.setattr(handlers.store, "user_by_login", user_by_login)
    monkeypatch.setattr(handlers.store, "claim_sign_in_attempt", claim)
    monkeypatch.setattr(handlers.store, "release_sign_in_attempt", nothing)
    monkeypatch.setattr(handlers.store, "sign_in_failures", nothing)
    monkeypatch.setattr(handlers.store, "record_failed_sign_in", failed_once)
    monkeypatch.setattr(handlers.store, "clear_failed_sign_ins", nothing)
    deps = types.SimpleNamespace(pool=None, settings=types.SimpleNamespace(
        failed_login_delay=0.0, lockout_after=10, lockout_seconds=900))

    def sign_in(username: str, password: str, source: str) -> IssueToken:
        return IssueToken(grant_type="password", client_id="ui", client_secret="", username=username,
                          password=password, source=source)

    for username, password in (("alice", "wrong"), ("nobody", "the-password")):
        with pytest.raises(Unauthorized):
            await handlers._password_login(deps, sign_in(username, password, "198.51.100.7"))
    assert handlers._priority("198.51.100.7") == 2
    assert (await handlers._password_login(deps, sign_in("alice", "the-password", "192.0.2.1")))["id"] == alice["id"]
    assert handlers._priority("192.0.2.1") == 0 and turns.held == 0


async def test_an_unknown_users_login_checks_the_dummy_hash_made_at_the_start_with_the_configured_cost(monkeypatch,
                                                                                                        turns):
    """A login naming no user checks its password against a dummy hash, so that it takes a known user's time (the
    answer's time does not tell whether the name exists). The hash is made by configure_password_hashing, at the
    service's start, with the configured cost: not at the login (the first unknown name would take a hash longer
    than any other login) and not at argon2-cffi's default cost (64 MiB, where the configured one may be another).
    bd62b762 took it out of the import; nothing checked it was still made there and still verified against."""
    import types

    from argon2 import extract_parameters

    from shared.errors import Unauthorized
    from shared.messages.auth import IssueToken
    from shared.settings import AuthSettings

    monkeypatch.setattr(handlers, "_DUMMY_HASH", None)  # this process's, restored after (as `turns` does _hasher)
    handlers.configure_password_hashing(AuthSettings(password_hash_time_cost=1, password_hash_memory_kib=64,
                                                     password_hash_parallelism=2))
    made = handlers._DUMMY_HASH
    assert made is not None, "configure_password_hashing made no dummy hash: the first unknown name's login makes it"
    cost = extract_parameters(made)
    assert (cost.time_cost, cost.memory_cost, cost.parallelism) == (1, 64, 2)

    checked: list[str] = []
    real_matches = handlers.secret_matches

    async def secret_matches(stored, secret, priority=0):
        checked.append(stored)
        return await real_matches(stored, secret, priority)

    async def no_user(pool, login):
        return None

    async def claimed(*args):
        return True

    async def nothing(*args):
        return None

    async def failed_once(*args):
        return 1

    monkeypatch.setattr(handlers, "secret_matches", secret_matches)
    monkeypatch.setattr(handlers.store, "user_by_login", no_user)
    for name, fake in (("claim_sign_in_attempt", claimed), ("release_sign_in_attempt", nothing),
                       ("sign_in_failures", nothing), ("record_failed_sign_in", failed_once)):
        monkeypatch.setattr(handlers.store, name, fake)
    deps = types.SimpleNamespace(pool=None, settings=types.SimpleNamespace(failed_login_delay=0.5, lockout_after=10,
                                                                           lockout_seconds=900))
    with pytest.raises(Unauthorized):
        await handlers._password_login(deps, IssueToken(
            grant_type="password", client_id="ui", client_secret="", username="nobody", password="a-guess",
            source="198.51.100.9"))
    assert checked == [made] and handlers._DUMMY_HASH is made  # one check, against the hash made at the start
