"""A statement a scheduler process prepared before another process's migration added a column to its table (a rolling
update: 006's runs.kill_reason, 008's runs.unchecked_requeues) fails once in a transaction: PostgreSQL's "cached plan
must not change result type", asyncpg's InvalidCachedStatementError, which asyncpg retries itself outside a
transaction only, dropping the pool's statement cache. finish_run reads `SELECT * FROM runs` in its transaction, and
its retries (Scheduler._retried) took only runner.TRANSIENT: the run's end was not recorded and the run stayed
`running` until the lost-run step failed it. Now it is transient: asked again, it is prepared again and passes
(checked against PostgreSQL 15 with asyncpg: the first attempt after the ALTER fails, the second passes)."""

from __future__ import annotations

import asyncpg
import pytest

from services.task_scheduler import runner
from services.task_scheduler.scheduler import Scheduler


async def test_a_run_end_record_meeting_a_statement_prepared_before_a_migration_is_asked_again(monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)
    attempts: list[int] = []

    async def finish_run() -> bool:
        attempts.append(1)
        if len(attempts) == 1:
            raise asyncpg.exceptions.InvalidCachedStatementError(
                "cached statement plan is invalid due to a database schema or configuration change")
        return True

    assert await Scheduler._retried(finish_run, "recording a run's end") is True  # before: the error raised
    assert len(attempts) == 2


async def test_a_data_error_is_still_not_asked_again(monkeypatch):
    attempts: list[int] = []

    async def finish_run() -> bool:
        attempts.append(1)
        raise asyncpg.exceptions.StringDataRightTruncationError("value too long for type character varying(64)")

    with pytest.raises(asyncpg.exceptions.StringDataRightTruncationError):
        await Scheduler._retried(finish_run, "recording a run's end")
    assert len(attempts) == 1
