"""`shared.background.Sweeper`'s quiet sweeps: the first sweep, and a sweep nobody woke after a wait of QUIET_WAIT
or more, run inside `shared.db.background_pass` of the sweeper's `quiet_pool()` (the connections it opened closed
when it ends); a later woken sweep, a short wait, or no pool: as before. And the automatic benchmarks' worker
(workflow lineage), which looked for claims every 5 s and so held a PostgreSQL backend for good in an idle stack, now
waits until its next claim is due, at most POLL_SECONDS (docs/performance.md, item 61)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from services.workflow_lineage import auto_benchmarks
from shared import background, db


class Recorded(background.Sweeper):
    """Each sweep records whether it ran inside a background pass; `wake_each`: each sweep wakes the next."""

    every = 0.2

    def __init__(self, pool: Any, wake_each: bool = False) -> None:
        self.pool = pool
        self.wake = asyncio.Event()
        self.wake_each = wake_each
        self.sweeps: list[bool] = []
        self.done = asyncio.Event()

    def wake_event(self) -> asyncio.Event:
        return self.wake

    def quiet_pool(self) -> Any:
        return self.pool

    async def sweep(self) -> None:
        self.sweeps.append(bool(PASSES))
        if self.wake_each and len(self.sweeps) == 1:  # the second sweep woken too
            self.wake.set()
        if len(self.sweeps) >= 2:
            self.done.set()


PASSES: list[Any] = []


@contextlib.asynccontextmanager
async def recording_pass(pool: Any):
    PASSES.append(pool)
    try:
        yield pool
    finally:
        PASSES.remove(pool)


def run_sweeps(monkeypatch, pool: Any, quiet_wait: float, wake: bool) -> list[bool]:
    """Whether each of a sweeper's first two sweeps was a background pass (`wake`: both woken)."""
    monkeypatch.setattr(db, "background_pass", recording_pass)
    monkeypatch.setattr(background, "QUIET_WAIT", quiet_wait)

    async def scenario() -> list[bool]:
        sweeper = Recorded(pool, wake_each=wake)
        if wake:
            sweeper.wake.set()
        sweeper.start()
        try:
            await asyncio.wait_for(sweeper.done.wait(), 5)
        finally:
            await sweeper.stop()
        return sweeper.sweeps[:2]

    return asyncio.run(scenario())


def test_a_sweep_nobody_woke_after_a_long_wait_is_a_background_pass(monkeypatch):
    assert run_sweeps(monkeypatch, "pool", quiet_wait=0.01, wake=False) == [True, True]  # was [.., False]: kept 30 s


def test_a_later_woken_sweep_a_short_wait_or_no_pool_is_an_ordinary_one(monkeypatch):
    """The first sweep is a background pass whatever woke it (it looks for what a stopped process left, just after
    the start, whose own close of idle connections it outlived by 30 s): every sweeper's, not only monitoring's
    (whose QuietSweeper did it alone: before, these first sweeps were ordinary)."""
    assert run_sweeps(monkeypatch, "pool", quiet_wait=0.01, wake=True) == [True, False]
    assert run_sweeps(monkeypatch, "pool", quiet_wait=30.0, wake=False) == [True, False]
    assert run_sweeps(monkeypatch, None, quiet_wait=0.01, wake=False) == [False, False]


def test_the_automatic_benchmarks_worker_waits_until_its_next_claim_is_due():
    worker = auto_benchmarks.AutoBenchmarks(deps=None, infer=None)  # type: ignore[arg-type]
    assert worker.every == auto_benchmarks.POLL_SECONDS == 60.0  # was 5 s
    assert worker.next_wait(None) == auto_benchmarks.FAILED_SWEEP_WAIT  # a failed sweep: soon again
    assert worker.next_wait(-3.0) == 1.0  # one is due now (found after the sweep's last look)
    assert worker.next_wait(12.5) == 12.5  # a retry's next_try
    assert worker.next_wait(3600.0) == 60.0  # nothing soon: another process's claims are seen within a minute


def test_a_worker_with_no_claim_at_all_waits_the_longest_wait(monkeypatch):
    """No claim pending or running (an idle stack's case): `next_auto_benchmark` answers None, which the sweep must
    not hand on as such: None is a failed sweep's result (`Sweeper`), so the worker looked again after
    FAILED_SWEEP_WAIT (5 s), every 5 s for good, its connection never idle long enough to close."""
    async def nothing(*args: Any) -> None:
        return None

    monkeypatch.setattr(auto_benchmarks.store, "take_auto_benchmark", nothing)
    monkeypatch.setattr(auto_benchmarks.store, "next_auto_benchmark", nothing)
    worker = auto_benchmarks.AutoBenchmarks(deps=SimpleNamespace(pool="pool"), infer=None)  # type: ignore[arg-type]
    assert worker.next_wait(asyncio.run(worker.sweep())) == auto_benchmarks.POLL_SECONDS  # was 5.0
