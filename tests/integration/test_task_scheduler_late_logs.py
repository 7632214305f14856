"""A task run's log is final LATE_LINES after the run ended (services/task_scheduler/store.py append_logs;
docs/orchestrations.md, "Logs"). A supervisor whose run was declared lost while it was paused wakes and goes on
writing its process's lines: stored just after the loss (a follower that saw the run fail still reads them), refused
once the run ended longer ago than that, when every follower has stopped and every reader takes the log as complete.
Before, append_logs stored a run's lines whatever its status, for as long as the woken process ran.

On the task scheduler's migrations in a schema of this test's on the stack's PostgreSQL; the loss is fail_lost_runs'
own."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from services.task_scheduler import store
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, a_supervised_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def scheduler_schema(stack, monkeypatch):
    # the window 30 s rather than 1 s: a line "just after" the end is a statement after the one that ended the run,
    # which a loaded machine (CI: 2 workers on 2 cores) may delay past 1 s; "longer ago" is LATE_LINES + 1 either way
    monkeypatch.setattr(store, "LATE_LINES", 30.0)
    async with service_schema(stack, "task_scheduler_late_logs", MIGRATIONS) as pool:
        yield pool


async def a_run(pool, status: str = "running") -> uuid.UUID:
    """A run of a run-once task of its own, supervised by 'supervisor-a' (its heartbeat a minute old)."""
    return await a_supervised_run(pool, status, beat_seconds_ago=60, started_seconds_ago=120)


def lines(*texts: str) -> list[tuple[datetime, str, bool, str]]:
    return [(datetime.now(UTC), "stdout", False, text) for text in texts]


async def stored(pool, run_id: uuid.UUID) -> list[str]:
    return [row["line"] for row in await store.logs(pool, run_id, None)]


async def test_a_lost_run_s_supervisor_writing_after_its_end_is_stored_only_just_after_it(scheduler_schema):
    pool = scheduler_schema
    run_id = await a_run(pool)
    assert await store.append_logs(pool, run_id, 0, lines("one", "two")) == 2  # while it runs
    async with pool.acquire() as conn:
        lost = await store.fail_lost_runs(conn, 30.0)  # its supervisor paused: declared lost, failed
    assert [row["id"] for row in lost] == [run_id]

    # the supervisor wakes at once: its last batch is stored (a follower that saw the failure reads it)
    assert await store.append_logs(pool, run_id, 2, lines("three")) == 1
    # ... and much later (its process still running): refused, nothing stored
    await pool.execute("UPDATE runs SET finished_at = now() - make_interval(secs => $2) WHERE id = $1", run_id,
                       store.LATE_LINES + 1)
    assert await store.append_logs(pool, run_id, 3, lines("four", "five")) == 0  # was stored
    assert await stored(pool, run_id) == ["one", "two", "three"]
    assert await pool.fetchval("SELECT status FROM runs WHERE id = $1", run_id) == "failure"


@pytest.mark.parametrize("status", ["queued", "running", "success", "failure"])
async def test_lines_are_stored_until_the_run_ended_late_lines_ago(scheduler_schema, status):
    """Whatever the end: a run not ended takes its lines; one ended (success or failure) longer than LATE_LINES ago
    takes none, one ended just now takes them."""
    pool = scheduler_schema
    run_id = await a_run(pool, status)
    ended = status in ("success", "failure")
    if ended:
        await pool.execute("UPDATE runs SET finished_at = now() WHERE id = $1", run_id)
    assert await store.append_logs(pool, run_id, 0, lines("a")) == 1
    if ended:
        await pool.execute("UPDATE runs SET finished_at = now() - make_interval(secs => $2) WHERE id = $1", run_id,
                           store.LATE_LINES + 1)
    assert await store.append_logs(pool, run_id, 1, lines("b")) == (0 if ended else 1)
    assert await stored(pool, run_id) == (["a"] if ended else ["a", "b"])
    assert await store.append_logs(pool, run_id, 2, []) == 0


async def test_a_batch_written_again_under_the_same_numbers_is_stored_once(scheduler_schema):
    """The runner retries a batch whose INSERT may have committed (its answer lost with the connection): the lines
    already stored are skipped and counted as stored, the new ones added. Before, the retry failed on the primary
    key (UniqueViolationError) and the batch was dropped, and every later one with it (the numbering stuck)."""
    pool = scheduler_schema
    run_id = await a_run(pool)
    assert await store.append_logs(pool, run_id, 0, lines("one", "two")) == 2
    assert await store.append_logs(pool, run_id, 0, lines("one", "two")) == 2  # the same batch again
    assert await store.append_logs(pool, run_id, 0, lines("one", "two", "three")) == 3  # with the lines since
    assert await stored(pool, run_id) == ["one", "two", "three"]
    await pool.execute("UPDATE runs SET status = 'failure', finished_at = now() - make_interval(secs => $2)"
                       " WHERE id = $1", run_id, store.LATE_LINES + 1)
    assert await store.append_logs(pool, run_id, 2, lines("three", "four")) == 1  # late: only what was stored
    assert await stored(pool, run_id) == ["one", "two", "three"]


async def test_a_batch_a_left_write_commits_while_it_is_written_again_is_counted_stored(scheduler_schema):
    """A flush attempt given up on is left to end in the background (runner.LogWriter._attempt) while the next attempt
    writes the same batch under the same numbers. That one's INSERT waits for the left write's rows and skips them
    once it commits; those rows, committed after its statement began, were in neither of its counts (its snapshot's):
    it answered 0 stored, so the supervisor logged that the run had ended more than LATE_LINES ago and its lines were
    refused (for a running run whose lines were all stored), and never logged a real refusal afterwards."""
    pool = scheduler_schema
    run_id = await a_run(pool)
    async with pool.acquire() as left:
        async with left.transaction():  # the left write, its INSERT done, its commit not yet
            assert await store.append_logs(left, run_id, 0, lines("one", "two")) == 2
            again = asyncio.create_task(store.append_logs(pool, run_id, 0, lines("one", "two")))
            deadline = time.monotonic() + 30
            while not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                                          left.get_server_pid()):  # until the write again waits for the left one
                assert not again.done(), again.result()
                assert time.monotonic() < deadline, "the write again never waited for the left one's rows"
                await asyncio.sleep(0.05)
    assert await again == 2  # was 0
    assert await stored(pool, run_id) == ["one", "two"]
