"""One attempt of a task run's log flush is bounded and never writes a batch twice (services/task_scheduler/runner.py
LogWriter._attempt). In memory: the sinks are stand-ins; test_task_run_log_retries.py has the real database, one that
stops answering included."""

from __future__ import annotations

import asyncio

import pytest

from services.task_scheduler import runner
from shared import db


async def test_an_attempt_that_hangs_is_given_up_cancelled_and_its_batch_kept(monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_ATTEMPT_SECONDS", 0.05, raising=False)
    monkeypatch.setattr(runner, "FLUSH_TRIES", 2)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)
    hung: list[asyncio.Task] = []

    async def sink(lines) -> None:
        hung.append(asyncio.current_task())
        await asyncio.Event().wait()  # a write the database never answers

    writer = runner.LogWriter(sink=sink, max_bytes=1000)
    writer.add("stdout", False, "one")
    with pytest.raises(TimeoutError, match="did not answer a log write within 0.05 s"):
        async with asyncio.timeout(5):  # the sink is cancellable: a missing bound fails here, it does not hang
            await writer.flush()
    assert [line for *_, line in writer.pending] == ["one"]
    # this test's own writes only: db.LEFT is the process's, and a write another test left (its loop closed before the
    # write ended) stays in it
    for _ in range(10):  # the cancelled writes' last step, then their done callbacks
        if not db.LEFT & set(hung):
            break
        await asyncio.sleep(0)
    assert len(hung) == 2 and all(task.cancelled() for task in hung)
    assert not db.LEFT & set(hung)


async def test_a_batch_written_in_the_step_its_flush_is_cancelled_is_not_put_back():
    """The flush is cancelled (the run's end stops the flusher) in the very step its write stores the batch: the sink
    numbered the lines, so putting the batch back would write it again under the next numbers (every line twice)."""
    stored: list[str] = []
    flushing: asyncio.Task | None = None

    async def sink(lines) -> None:
        flushing.cancel()  # the flush waits for this write: its wait is cancelled as the write ends
        stored.extend(line for *_, line in lines)

    writer = runner.LogWriter(sink=sink, max_bytes=1000)
    writer.add("stdout", False, "one")
    flushing = asyncio.create_task(writer.flush())
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert stored == ["one"] and writer.pending == []  # was (any copy that re-queues): ["one"] pending again
