"""An ended task run's session in auth's tables (services/auth/task_tokens.py, migration 017), on auth's migrations in
a schema of this test's own on the stack's PostgreSQL: a token's issue is recorded and refused once the run has ended;
the end revokes the session once, with its events.auth.tokens_revoked (session, expiry) in the outbox; the revocation
is listed until the run's tokens have expired, however long after access_token_ttl that is; rows no longer needed
go."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from services.auth import task_tokens
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "auth" / "migrations"


@pytest.fixture
async def pool(stack):
    async with service_schema(stack, "auth_task_tokens", MIGRATIONS) as pool:
        yield pool


async def revocation_events(pool) -> list[dict]:
    rows = await pool.fetch("SELECT payload FROM outbox WHERE subject = 'events.auth.tokens_revoked' ORDER BY id")
    return [json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"] for r in rows]


async def test_an_ended_runs_session_is_revoked_once_and_listed_until_its_tokens_expire(pool):
    run, owner, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
    expires = now + 10 * 3600  # a ten-hour run's token: longer than access_token_ttl (1 h)
    assert await task_tokens.record_issue(pool, run, owner, expires)
    assert await task_tokens.record_issue(pool, run, owner, expires - 5)  # a second token of the run: kept the later
    assert await task_tokens.revoked(pool, now) == []  # not ended: nothing listed

    assert await task_tokens.revoke_run(pool, run, owner, now) == expires
    [event] = await revocation_events(pool)
    assert (event["subject"], event["session"], event["expires"]) == (owner, run, expires), event
    assert await task_tokens.revoke_run(pool, run, owner, now + 1) is None  # a redelivered end: nothing more
    assert len(await revocation_events(pool)) == 1
    assert not await task_tokens.record_issue(pool, run, owner, now + 60)  # ended: no token issued

    later = now + 9 * 3600  # long past access_token_ttl, the token still valid: still listed
    assert [(r["run_id"], r["expires_at"]) for r in await task_tokens.revoked(pool, later)] == [(run, expires)]
    assert await task_tokens.revoked(pool, expires + task_tokens.LEEWAY + 1) == []


async def test_an_end_before_any_token_refuses_a_later_issue_and_rows_go_when_useless(pool):
    run, owner, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
    assert await task_tokens.revoke_run(pool, run, owner, now) is None  # no token: nothing to tell
    assert await revocation_events(pool) == []
    assert not await task_tokens.record_issue(pool, run, owner, now + 300)  # a paused supervisor's late ask
    assert await task_tokens.revoked(pool, now) == []

    expired = str(uuid.uuid4())  # a run whose token expired without its end being read
    assert await task_tokens.record_issue(pool, expired, owner, now - 3600)
    other = str(uuid.uuid4())
    await task_tokens.revoke_run(pool, other, owner, now + task_tokens.UNISSUED_KEPT + 120)  # a day later
    left = {r["run_id"] for r in await pool.fetch("SELECT run_id FROM task_run_tokens")}
    assert left == {other}, left  # the unissued end and the expired token's row went
