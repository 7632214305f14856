"""The hourly sweep of the auth service's state that nothing else ever deletes.

Dead refresh tokens: a refresh token's row is only marked `used` when it is spent, revoked (a
password change, a reused authorization code) or replaced, and nothing else ever read it again, so
`auth.refresh_tokens` grew by one row per sign-in and refresh for ever. Every SWEEP_EVERY_SECONDS the rows that can
never be spent again (used, or past `expires_at`) are deleted, BATCH rows per statement so no statement holds many
row locks or runs long; a token being refreshed at that moment is skipped, not waited for. A live token (unused,
unexpired) is never touched, so presenting any token answers exactly as before: a deleted row and a used one are
both "expired, already used, revoked or issued to another client". Several replicas may sweep at once: they skip
each other's locked rows.

Sign-in state: attempt claims a crashed process left (auth.login_attempts per user, users/update_password's, and
auth.sign_in_attempts per name tried, older than STALE_ATTEMPT_SECONDS; the next attempt of their key and source takes
them over anyway); password-change failure counts idle for a day and not locked (auth.login_failures: sources come and
go); and failed sign-in counts per name tried that no longer count (auth.sign_in_failures: no failure for an hour and
no lock running), BATCH rows per statement. Anyone can make those rows, one per made-up name (each a failed password
check: at most HASHING_AT_ONCE hashes at a time per auth process), so they go an hour after their last failure, or
when their lock ends, at most a sweep period later: the table holds at most the last ~2 h of failed checks (every
auth replica's) and the running locks, and only time removes a row, so no flood can push out a real user's count.
None of this changes a decision: a claim that old is taken over, a failure that old no longer counts; the sweep only
bounds the tables, off the sign-in's path (the failures' delete used to run inside every failed sign-in's
transaction, an attack's hot path).

Revocation changes (auth.revocation_changes, migration 020) older than CHANGES_KEPT_SECONDS: verifiers read the changes
every 20 s and the whole list every 10 minutes, so only one that could not read for a day asks for deleted ones; it is
answered 409 revocation_position_lost and reads the whole list."""

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
CHANGES_KEPT_SECONDS = 86400.0  # far above authz.FULL_READ_INTERVAL


async def sweep(pool: asyncpg.Pool, batch: int = BATCH) -> int:
    """Delete every dead refresh token, `batch` rows per statement, then stale sign-in claims and idle failed-login
    counts; how many refresh tokens were deleted."""
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
    if idle := await store.delete_idle_login_failures(pool):
        log.info("deleted %d failed-login count(s) idle for a day", idle)
    if stale := await store.delete_stale_sign_in_attempts(pool, STALE_ATTEMPT_SECONDS):
        log.info("deleted %d sign-in claim(s) per name left by stopped processes", stale)
    names = 0
    while n := await store.delete_idle_sign_in_failures(pool, batch):
        names += n
        if n < batch:
            break
        await asyncio.sleep(0)
    if names:
        log.info("deleted %d failed sign-in count(s) per name that no longer count", names)
    if changes := await store.delete_old_revocation_changes(pool, CHANGES_KEPT_SECONDS):
        log.info("deleted %d revocation change(s) older than a day", changes)
    return deleted


class AuthStateSweep(Sweeper):
    """Runs `sweep` (refresh tokens, sign-in claims, failed-login counts) every SWEEP_EVERY_SECONDS (the database away
    for a moment: the next round tries again)."""

    task_name = "auth-state-sweep"
    every, log, failure = SWEEP_EVERY_SECONDS, log, "auth state sweep failed"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sweep(self) -> int:
        return await sweep(self.pool)
