"""The one-attempt-at-a-time rule of sign-ins holds across auth processes: while a password check of one user from
one source is being answered by any auth process, another process refuses the next one with 429 instead of checking
it alongside (docs/auth.md, "Brute force"). The two processes are the stack's auth service (reached through the
gateway) and an auth handler instance in this test process, on its own pool to the same PostgreSQL: nothing in
memory is shared between them, as between two replicas. (The rule was a set in each process's memory, so this test
failed both ways: neither process saw the other's attempt.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from services.auth import handlers, token_sweep
from shared.db import create_pool, load_migrations, migrate
from shared.errors import TooManyRequests, Unauthorized
from shared.messages.auth import IssueToken
from shared.settings import AuthSettings
from tests.integration import conftest
from tests.integration.conftest import PASSWORD, TOKEN_PATH, make_account, service_schema

NAME_KEY = handlers.store.NAME_KEY  # sha256(lower($1)): the key of a name tried
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "auth" / "migrations"
PROXY = "127.0.0.5"  # the test stack's trusted proxy (tests/stack.py): X-Forwarded-For names the source
SOURCE = "198.51.100.201"


async def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_one_attempt_at_a_time_holds_across_auth_processes(stack, admin):
    account = make_account(stack, admin, "attempts")
    account.client.close()
    secrets = stack.secrets()
    settings = AuthSettings(failed_login_delay=float(stack.env["RAILYARD_AUTH__FAILED_LOGIN_DELAY"]),
                            lockout_after=int(stack.env["RAILYARD_AUTH__LOCKOUT_AFTER"]),
                            client_secret_key=secrets["client_secret_key"])
    pool = await create_pool(stack.settings().postgres, "auth")
    here = handlers.AuthDeps(pool=pool, settings=settings, keys={})
    user_id = uuid.UUID(account.user_id)
    guess = {"grant_type": "password", "username": account.email, "password": "wrong-guess"}
    http = httpx.AsyncClient(base_url=stack.base_url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=PROXY))

    async def through_gateway() -> httpx.Response:
        return await http.post(TOKEN_PATH, auth=(secrets["client_id"], secrets["client_secret"]),
                         headers={"X-Forwarded-For": SOURCE}, data=guess)

    async def in_this_process() -> None:
        await handlers.issue_token(here, IssueToken(client_id=secrets["client_id"],
                                                    client_secret=secrets["client_secret"], source=SOURCE, **guess))

    async def claimed() -> bool:
        return bool(await pool.fetchval(f"SELECT 1 FROM sign_in_attempts WHERE name_key = {NAME_KEY} AND source = $2",
                                        account.email, SOURCE))

    def refused_as_busy(response: httpx.Response) -> bool:
        return response.status_code == 429 and "still being answered" in response.text

    try:
        answer = await through_gateway()
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text

        # another process holds the attempt (its claim, as the handler makes it): the stack's auth refuses at once
        attempt = uuid.uuid4()
        assert await handlers.store.claim_sign_in_attempt(pool, account.email, SOURCE, attempt, 30.0)
        assert refused_as_busy(await through_gateway())
        await handlers.store.release_sign_in_attempt(pool, account.email, SOURCE, attempt)

        # a claim a crashed process left is taken over once older than the lease
        await pool.execute("INSERT INTO sign_in_attempts (name_key, source, attempt, started_at)"
                           f" VALUES ({NAME_KEY}, $2, $3, now() - make_interval(secs => $4))", account.email, SOURCE,
                           uuid.uuid4(), handlers.ATTEMPT_LEASE_SECONDS + 1)
        answer = await through_gateway()  # 1 failure before: 0.5 s delay
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text
        assert not await claimed()

        # the stack's auth is answering (its 1 s delay): this process refuses its own attempt at once
        gateway = asyncio.ensure_future(through_gateway())
        await _wait_for(claimed)
        started = time.monotonic()
        with pytest.raises(TooManyRequests, match="still being answered"):
            await in_this_process()
        assert time.monotonic() - started < 0.5  # refused, not queued behind the delay
        answer = await gateway
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text

        # nobody else answering: this process checks it (its 1.5 s delay) and records it like any other
        with pytest.raises(Unauthorized) as failed:
            await in_this_process()
        assert failed.value.code == "invalid_grant"
        # every guess checked was counted, one by one; no claim is left behind
        assert await pool.fetchval(f"SELECT failures FROM sign_in_failures WHERE name_key = {NAME_KEY}"
                                   " AND source = $2", account.email, SOURCE) == 4
        assert not await claimed()

        # the hourly sweep deletes claims a crashed process left long ago, and no live one; failed-login counts idle
        # for a day go too, unless still locked (a failed sign-in no longer deletes them in its own transaction)
        await pool.execute("INSERT INTO login_attempts (user_id, source, attempt, started_at) VALUES"
                           " ($1, 'crashed', $2, now() - interval '2 hours'), ($1, 'live', $3, now())",
                           user_id, uuid.uuid4(), uuid.uuid4())
        await pool.execute("INSERT INTO login_failures (user_id, source, failures, last_failed_at, locked_until)"
                           " VALUES ($1, 'idle', 3, now() - interval '2 days', now() - interval '1 day'),"
                           " ($1, 'still-locked', 9, now() - interval '2 days', now() + interval '1 hour')", user_id)
        # per name tried (sign-ins): claims as above; counts once they no longer count (no failure for an hour and
        # no lock running), a count of the last hour or a running lock stays
        await pool.execute("INSERT INTO sign_in_attempts (name_key, source, attempt, started_at) VALUES"
                           f" ({NAME_KEY}, 'crashed', $2, now() - interval '2 hours'), ({NAME_KEY}, 'live', $3, now())",
                           account.email, uuid.uuid4(), uuid.uuid4())
        await pool.execute("INSERT INTO sign_in_failures (name_key, source, failures, last_failed_at, locked_until)"
                           f" VALUES ({NAME_KEY}, 'idle', 3, now() - interval '61 minutes', NULL),"
                           f" ({NAME_KEY}, 'lock-ended', 5, now() - interval '2 hours', now() - interval '1 minute'),"
                           f" ({NAME_KEY}, 'recent', 3, now() - interval '59 minutes', NULL),"
                           f" ({NAME_KEY}, 'still-locked', 9, now() - interval '2 days', now() + interval '1 hour')",
                           account.email)
        await token_sweep.sweep(pool, batch=1)  # one row a statement: every batch until none is left
        assert [r["source"] for r in await pool.fetch("SELECT source FROM login_attempts WHERE user_id = $1",
                                                      user_id)] == ["live"]
        assert sorted(r["source"] for r in await pool.fetch("SELECT source FROM login_failures WHERE user_id = $1",
                                                            user_id)) == ["still-locked"]
        assert [r["source"] for r in await pool.fetch(
            f"SELECT source FROM sign_in_attempts WHERE name_key = {NAME_KEY}", account.email)] == ["live"]
        assert sorted(r["source"] for r in await pool.fetch(
            f"SELECT source FROM sign_in_failures WHERE name_key = {NAME_KEY}", account.email)) == sorted(
            [SOURCE, "recent", "still-locked"])
    finally:
        await http.aclose()
        await pool.close()


class _Sleeps:
    """handlers' `asyncio`, but each sleep (a failed sign-in's delay: handlers sleeps for nothing else) is kept."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str):
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        await asyncio.sleep(seconds)


async def test_a_made_up_name_is_slowed_locked_and_claimed_as_a_users_name_is(stack, admin, monkeypatch):
    """Repeated failed sign-ins do not tell whether a name exists (docs/auth.md, "Brute force"): a user's name and a
    made-up one get the same answers, one after another, the same delays before their checks and the same lock (also
    for the name in other letter case), and both are refused 429 while another attempt at the name from the source is
    being answered. Counted per user, a made-up name was never slowed, locked nor refused: 'invalid_grant' for ever.
    An in-process handler on the stack's database, with its own small delay (the delay is read from the sleeps
    asked for, not from the clock)."""
    account = make_account(stack, admin, "enumerated")
    account.client.close()
    lock_after, delay, source = 4, 0.01, "198.51.100.202"
    pool = await create_pool(stack.settings().postgres, "auth")
    here = handlers.AuthDeps(pool=pool, settings=AuthSettings(failed_login_delay=delay, lockout_after=lock_after),
                             keys={})
    sleeps = _Sleeps()
    monkeypatch.setattr(handlers, "asyncio", sleeps)
    # the made-up name's check, at the stack's users' cost (this process made no dummy hash at the default one)
    monkeypatch.setattr(handlers, "_DUMMY_HASH", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("x"))

    async def sign_in(name: str, password: str = "wrong-guess", from_: str = source) -> str:
        try:
            await handlers._password_login(here, IssueToken(grant_type="password", client_id="ui", client_secret="",
                                                            username=name, password=password, source=from_))
        except (Unauthorized, TooManyRequests) as exc:
            return exc.code
        return "signed in"

    async def run_of_guesses(name: str) -> list[tuple[str, list[float]]]:
        """lock_after + 1 guesses, the last in upper case: each one's answer and the delays before it."""
        seen = []
        for n in range(lock_after + 2):
            sleeps.slept.clear()
            seen.append((await sign_in(name.upper() if n == lock_after + 1 else name), list(sleeps.slept)))
        return seen

    made_up = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    try:
        real, unknown = await run_of_guesses(account.email), await run_of_guesses(made_up)
        expected = [("invalid_grant", [round(delay * n, 6)] if n else []) for n in range(lock_after - 1)] + \
            [("account_locked", [round(delay * (lock_after - 1), 6)])] + [("account_locked", [])] * 2
        assert real == expected, real
        assert unknown == real, "a made-up name answered otherwise than a user's: repeating a guess tells them apart"

        # another attempt at the name from the source is being answered: 429 alike
        for name in (account.email, made_up):
            attempt = uuid.uuid4()
            assert await handlers.store.claim_sign_in_attempt(pool, name, "198.51.100.203", attempt, 30.0)
            try:
                assert await sign_in(name, from_="198.51.100.203") == "rate_limited", name
            finally:
                await handlers.store.release_sign_in_attempt(pool, name, "198.51.100.203", attempt)

        # the lock is the source's alone: the user signs in from elsewhere
        assert await sign_in(account.email, PASSWORD, from_="198.51.100.204") == "signed in"
    finally:
        await pool.close()


async def test_an_upgrade_keeps_running_counts_and_locks_under_both_of_the_users_names(stack, monkeypatch):
    """Auth migration 021 on a database with per-user counts: each sign-in count (and its lock) goes on under the
    user's username and email alike, in any letter case; the password change's count stays per user. An invited
    user's username is its email (users/invite): one name, one row (two were a primary key violation, and no auth
    replica would start). Run on auth's migrations in a schema of this test's own, migrated to 020 first."""
    migrations = load_migrations(MIGRATIONS)
    assert [(m.version, m.name) for m in migrations if m.version >= 21][0] == (21, "sign_in_failures_per_name")
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 21])
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with service_schema(stack, "authnames", MIGRATIONS) as pool:
        await pool.execute("INSERT INTO users (id, username, email, password_hash) VALUES"
                           " ($1, 'Alice', 'Alice@Example.com', 'x'), ($2, 'bob', NULL, 'x'),"
                           " ($3, 'carol@example.com', 'carol@example.com', 'x')", alice, bob, carol)
        await pool.execute("INSERT INTO login_failures (user_id, source, failures, last_failed_at, locked_until) VALUES"
                           " ($1, '198.51.100.1', 5, now(), now() + interval '15 minutes'),"
                           " ($1, 'password-change', 2, now(), NULL), ($2, '198.51.100.2', 2, now(), NULL),"
                           " ($3, '198.51.100.3', 3, now(), NULL)", alice, bob, carol)
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert (await migrate(stack.settings().postgres, schema, migrations))[0] == 21
        for name in ("alice", "ALICE@example.com"):
            counted = await handlers.store.sign_in_failures(pool, name, "198.51.100.1")
            assert counted is not None and counted["failures"] == 5 and counted["locked_until"] > datetime.now(UTC)
        assert (await handlers.store.sign_in_failures(pool, "Bob", "198.51.100.2"))["failures"] == 2
        assert (await handlers.store.sign_in_failures(pool, "Carol@Example.com", "198.51.100.3"))["failures"] == 3
        assert await handlers.store.sign_in_failures(pool, "alice", "198.51.100.2") is None
        assert [tuple(r) for r in await pool.fetch("SELECT user_id, source, failures FROM login_failures")] == [
            (alice, "password-change", 2)]


async def test_a_sign_in_clears_its_sources_counts_of_both_of_the_users_names(stack):
    """A successful sign-in clears its source's failed-sign-in counts of the user's username and email, whichever of
    the two (in any letter case) it named, and no other source's (docs/auth.md, "Brute force"): the next failure from
    that source starts again at no delay. Nothing checked it: with the clear left out, or clearing only the name typed,
    every other test passed. A user whose username is not its email (users/invite makes them one: a row of its own);
    an in-process handler on the stack's database."""
    pool = await create_pool(stack.settings().postgres, "auth")
    here = handlers.AuthDeps(pool=pool, settings=AuthSettings(failed_login_delay=0.01), keys={})
    suffix = uuid.uuid4().hex[:8]
    username, email = f"carol-{suffix}", f"Carol.{suffix}@example.com"
    cleared, elsewhere = "198.51.100.205", "198.51.100.206"
    await pool.execute("INSERT INTO users (id, username, email, password_hash) VALUES ($1, $2, $3, $4)", uuid.uuid4(),
                       username, email, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD))

    async def sign_in(name: str, password: str, source: str) -> str:
        try:
            await handlers._password_login(here, IssueToken(grant_type="password", client_id="ui", client_secret="",
                                                            username=name, password=password, source=source))
        except Unauthorized as exc:
            return exc.code
        return "signed in"

    async def counted(name: str, source: str) -> int | None:
        row = await handlers.store.sign_in_failures(pool, name, source)
        return None if row is None else row["failures"]

    try:
        for name, source in ((username, cleared), (username.upper(), cleared), (email, cleared),
                             (username, elsewhere)):
            assert await sign_in(name, "wrong-guess", source) == "invalid_grant"
        assert [await counted(username, cleared), await counted(email, cleared)] == [2, 1]
        assert await sign_in(email.lower(), PASSWORD, cleared) == "signed in"
        assert [await counted(username, cleared), await counted(email, cleared)] == [None, None]
        assert await counted(username, elsewhere) == 1  # another source's count stays
        assert await sign_in(username, "wrong-guess", cleared) == "invalid_grant"
        assert await counted(username, cleared) == 1  # started again
    finally:
        await pool.close()
