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

import httpx
import pytest

from services.auth import handlers, token_sweep
from shared.db import create_pool
from shared.errors import TooManyRequests, Unauthorized
from shared.messages.auth import IssueToken
from shared.settings import AuthSettings
from tests.integration.conftest import TOKEN_PATH, make_account

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
        return bool(await pool.fetchval("SELECT 1 FROM login_attempts WHERE user_id = $1 AND source = $2",
                                        user_id, SOURCE))

    def refused_as_busy(response: httpx.Response) -> bool:
        return response.status_code == 429 and "still being answered" in response.text

    try:
        answer = await through_gateway()
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text

        # another process holds the attempt (its claim, as the handler makes it): the stack's auth refuses at once
        attempt = uuid.uuid4()
        assert await handlers.store.claim_login_attempt(pool, user_id, SOURCE, attempt, 30.0)
        assert refused_as_busy(await through_gateway())
        await handlers.store.release_login_attempt(pool, user_id, SOURCE, attempt)

        # a claim a crashed process left is taken over once older than the lease
        await pool.execute("INSERT INTO login_attempts (user_id, source, attempt, started_at)"
                           " VALUES ($1, $2, $3, now() - make_interval(secs => $4))", user_id, SOURCE, uuid.uuid4(),
                           handlers.ATTEMPT_LEASE_SECONDS + 1)
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
        assert await pool.fetchval("SELECT failures FROM login_failures WHERE user_id = $1 AND source = $2",
                                   user_id, SOURCE) == 4
        assert not await claimed()

        # the hourly sweep deletes claims a crashed process left long ago, and no live one; failed-login counts idle
        # for a day go too, unless still locked (a failed sign-in no longer deletes them in its own transaction)
        await pool.execute("INSERT INTO login_attempts (user_id, source, attempt, started_at) VALUES"
                           " ($1, 'crashed', $2, now() - interval '2 hours'), ($1, 'live', $3, now())",
                           user_id, uuid.uuid4(), uuid.uuid4())
        await pool.execute("INSERT INTO login_failures (user_id, source, failures, last_failed_at, locked_until)"
                           " VALUES ($1, 'idle', 3, now() - interval '2 days', now() - interval '1 day'),"
                           " ($1, 'still-locked', 9, now() - interval '2 days', now() + interval '1 hour')", user_id)
        await token_sweep.sweep(pool)
        assert [r["source"] for r in await pool.fetch("SELECT source FROM login_attempts WHERE user_id = $1",
                                                      user_id)] == ["live"]
        assert sorted(r["source"] for r in await pool.fetch("SELECT source FROM login_failures WHERE user_id = $1",
                                                            user_id)) == sorted([SOURCE, "still-locked"])
    finally:
        await http.aclose()
        await pool.close()
