"""A task run's tokens stop working when the run ends (auth, schema `auth`; migration 017).

The task scheduler asks `auth.token.issue_task` for a run's token naming the run; the token carries the run's id as its
`session_state` (a session of its own) and its expiry is written here before it is handed out. The scheduler writes a
run's end (finished, failed, killed, timed out, lost) with its `events.task_run.succeeded` / `failed` in its outbox, in
the transaction of the end; auth reads those through its durable consumers of the EVENTS stream and revokes the run's
session: the revocation is written here with `events.auth.tokens_revoked` (the session and its tokens' expiry) in its
own outbox, in one transaction. Every verifier refuses the session's tokens from that event on, and reads it in the
revocation list (handlers.revocations) until the tokens have expired. So the revocation is as reliable as both
outboxes and the stream: a run that ends while auth (or NATS) is away has its token revoked when auth reads the end
from the stream; until then the token's own expiry (the run's timeout + 60 s at most) still bounds it.

A run's end read before any token of it was issued leaves a row without expiry: a token asked for afterwards (a
supervisor that was paused, its run failed as lost meanwhile) is refused."""

from __future__ import annotations

import time

import asyncpg

from shared import subjects
from shared.messages.auth import TokensRevoked
from shared.outbox import add_event

LEEWAY = 60.0  # seconds past a token's expiry its revocation is still listed (verifiers accept a token 5 s late)
UNISSUED_KEPT = 86400.0  # seconds a run's end is kept when no token of it was issued (a late issue is refused)


async def record_issue(pool: asyncpg.Pool, run_id: str, user_id: str, expires_at: float) -> bool:
    """Before a run's token is handed out: its expiry written (the latest of the run's tokens'). False when the run
    has ended already (its session revoked): no token is issued."""
    return bool(await pool.fetchval(
        "INSERT INTO task_run_tokens (run_id, user_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT (run_id) DO UPDATE"
        " SET expires_at = GREATEST(task_run_tokens.expires_at, EXCLUDED.expires_at)"
        " WHERE task_run_tokens.revoked_at IS NULL RETURNING true", run_id, user_id, expires_at))


async def revoke_run(pool: asyncpg.Pool, run_id: str, user_id: str, now: float | None = None) -> float | None:
    """The run ended: its session revoked, with its events.auth.tokens_revoked in the outbox (same transaction), when
    a token of it may still be valid; the revocation's expiry then (None: nothing to tell, no token issued or all
    expired, or revoked already: a redelivered end event changes nothing). Rows no longer needed are deleted."""
    now = time.time() if now is None else now
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM task_run_tokens WHERE COALESCE(expires_at, revoked_at + 86400) < $1::float8 - $2::float8"
            " AND run_id <> $3",
            now, LEEWAY, run_id)  # 86400: UNISSUED_KEPT, written as migration 017's index has it
        row = await conn.fetchrow(
            "INSERT INTO task_run_tokens AS t (run_id, user_id, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (run_id)"
            " DO UPDATE SET revoked_at = $3 WHERE t.revoked_at IS NULL RETURNING t.user_id, t.expires_at", run_id,
            user_id, now)
        if row is None or row["expires_at"] is None or row["expires_at"] + LEEWAY < now:
            return None
        await add_event(conn, subjects.EVENT_TOKENS_REVOKED, TokensRevoked(
            subject=row["user_id"], revoked_before=now, session=run_id, expires=row["expires_at"]))
        return row["expires_at"]


async def revoked(pool: asyncpg.Pool, now: float | None = None) -> list[asyncpg.Record]:
    """The ended runs' sessions whose tokens may still be valid: run_id (the session), revoked_at, expires_at."""
    now = time.time() if now is None else now
    return await pool.fetch("SELECT run_id, revoked_at, expires_at FROM task_run_tokens WHERE revoked_at IS NOT NULL"
                            " AND expires_at >= $1::float8 - $2::float8", now, LEEWAY)
