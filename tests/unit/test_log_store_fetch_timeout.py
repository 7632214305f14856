"""The log store's consumer loop (`Ingestor.run`) reads a fetch that ends without messages as "no message in
time", whichever timeout nats-py raises. Since nats-py 2.15 `fetch` raises the builtin `TimeoutError` (not
`nats.errors.TimeoutError`) when its deadline runs out between its two pull requests, which is what happens to the
loop's short fetches while it gathers a segment (the remaining part of `flush_interval`). Before, that was taken for
bus trouble: a WARNING "fetching inference logs failed: " with an empty message and a 0.5 s pause before the
segment was written, seen after most inferences of a walk-through on an idle stack (shared/faststream_logs.py has
the same nats-py change for FastStream's own pull loops)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import nats.errors

from services.log_store.handlers import Ingestor
from shared.settings import LogSettings


class FakeSubscription:
    """One message, then a fetch that raises `error`, then fetches that time out as nats-py's do when nothing
    came (`nats.errors.TimeoutError` after their timeout)."""

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error
        self.calls = 0

    async def fetch(self, batch: int, timeout: float) -> list:
        self.calls += 1
        if self.calls == 1:
            return [SimpleNamespace(data=b"x" * 100)]
        await asyncio.sleep(min(timeout, 0.01))
        raise self.error() if self.calls == 2 else nats.errors.TimeoutError()


BUS_TROUBLE_PAUSE = 0.5  # handlers.Ingestor.run's sleep after a fetch that failed


def run_until_flushed(error: type[BaseException], monkeypatch) -> tuple[list, list[float]]:
    """The batches flushed, and the delays of every asyncio.sleep while the loop ran (the fake's own included)."""
    settings = LogSettings(flush_interval=0.05)
    ingestor = Ingestor(SimpleNamespace(settings=settings), js=None)
    ingestor.sub = FakeSubscription(error)
    flushed: list = []
    slept: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float, result=None):
        slept.append(delay)
        return await sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", recorded)

    async def flush_with_retry(msgs, probe=False):
        flushed.append(list(msgs))
        ingestor.running = False

    ingestor.flush_with_retry = flush_with_retry
    asyncio.run(asyncio.wait_for(ingestor.run(), 10))
    return flushed, slept


def test_a_fetch_deadline_as_builtin_timeout_error_is_no_message_in_time(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="railyard.log_store")
    flushed, slept = run_until_flushed(TimeoutError, monkeypatch)
    assert [len(batch) for batch in flushed] == [1]
    assert not [r for r in caplog.records if "fetching inference logs failed" in r.getMessage()]
    # no pause taken for bus trouble: the segment is written once due (counted, not timed: a wall-clock bound of
    # 0.5 s could fail on a loaded machine)
    assert slept and BUS_TROUBLE_PAUSE not in slept, slept


def test_the_nats_timeout_error_stays_no_message_in_time(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="railyard.log_store")
    flushed, slept = run_until_flushed(nats.errors.TimeoutError, monkeypatch)
    assert [len(batch) for batch in flushed] == [1]
    assert not [r for r in caplog.records if "fetching inference logs failed" in r.getMessage()]
    assert BUS_TROUBLE_PAUSE not in slept, slept


def test_other_fetch_errors_are_still_reported(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="railyard.log_store")
    flushed, slept = run_until_flushed(nats.errors.ConnectionClosedError, monkeypatch)
    assert [len(batch) for batch in flushed] == [1]
    assert [r for r in caplog.records if "fetching inference logs failed" in r.getMessage()]
    assert slept.count(BUS_TROUBLE_PAUSE) == 1, slept  # the pause the other tests see none of
