"""The sweep of dead refresh tokens: a refresh token's row is only marked `used` when it is spent, revoked (a
password change, a reused authorization code) or replaced, and nothing else ever read it again, so
`auth.refresh_tokens` grew by one row per sign-in and refresh for ever. Every SWEEP_EVERY_SECONDS the rows that can
never be spent again (used, or past `expires_at`) are deleted, BATCH rows per statement so no statement holds many
row locks or runs long; a token being refreshed at that moment is skipped, not waited for. A live token (unused,
unexpired) is never touched, so presenting any token answers exactly as before: a deleted row and a used one are
both "expired, already used, revoked or issued to another client". Several replicas may sweep at once: they skip
each other's locked rows. The same round deletes sign-in attempt claims a crashed process left (auth.login_attempts,
older than STALE_ATTEMPT_SECONDS; the next attempt of their user and source takes them over anyway)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.auth import store
from shared.background import Sweeper

log = logging.getLogger("railyard.auth.token_sweep")

SWEEP_EVERY_SECONDS = 3600.0
BATCH = 1000
STALE_ATTEMPT_SECONDS = 3600.0  # far above handlers.ATTEMPT_LEASE_SECONDS: only dead claims are that old


async def sweep(pool: asyncpg.Pool, batch: int = BATCH) -> int:
    """Delete every dead refresh token, `batch` rows per statement; how many were deleted."""
    deleted = 0
    while True:
        n = await store.delete_dead_refresh_tokens(pool, batch)
        deleted += n
        if n < batch:
            break
        await asyncio.sleep(0)  # let the service's requests run between batches
    if deleted:
        log.info("deleted %d dead refresh token(s)", deleted)
    if stale := await store.delete_stale_login_attempts(pool, STALE_ATTEMPT_SECONDS):
        log.info("deleted %d sign-in attempt claim(s) left by stopped processes", stale)
    return deleted


class RefreshTokenSweep(Sweeper):
    """Runs `sweep` every SWEEP_EVERY_SECONDS (the database away for a moment: the next round tries again)."""

    task_name = "refresh-token-sweep"
    every, log, failure = SWEEP_EVERY_SECONDS, log, "refresh token sweep failed"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sweep(self) -> int:
        return await sweep(self.pool)
