"""How long monitoring's background sweeps wait between looks (services/monitoring/sweeps.py; docs/performance.md
item 61, docs/monitoring.md "At rest"). The training starter, the feedback exporter and the training reference's
computer looked every 2 s with nothing to do, so an idle stack's monitoring never let its PostgreSQL connection idle
the 30 s after which the pool closes it. Each now waits until its next due work, at most IDLE_WAIT (60 s; its own
process's commands wake it at once), and still looks again soon when it must: a failed sweep, a training waiting for
the feedback loop, a claimed training's resume, another process holding a pair's or a reference's advisory lock, a
pair's back-off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

from services.monitoring import aggregates, continuous, feedback, reference, sweeps
from services.monitoring import feedback_store as fs
from services.monitoring.continuous import ContinuousDeps, TrainingStarter


class StarterPool:
    """A pool stand-in for TrainingStarter.sweep: nothing to fail, resume or start; `due` is what the look for the
    next due training answers (None: no training starting)."""

    def __init__(self, due: float | None) -> None:
        self.due = due

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield

    async def fetch(self, query: str, *args: Any) -> list:
        return []

    async def fetchval(self, query: str, *args: Any) -> Any:
        assert "min(" in query, query  # the one fetchval of a sweep with no training to start
        return self.due


def starter_wait(due: float | None) -> float:
    starter = TrainingStarter(ContinuousDeps(base=SimpleNamespace(pool=StarterPool(due)), verify=None,
                                             events_committed=lambda: None, max_task_timeout=3600))
    return starter.next_wait(asyncio.run(starter.sweep()))


def test_the_training_starter_with_no_training_starting_waits_the_longest_wait():
    assert starter_wait(None) == sweeps.IDLE_WAIT == 60.0  # was STARTER_SWEEP, 2.0


def test_the_training_starter_waits_until_a_claimed_training_is_due():
    assert starter_wait(42.5) == 42.5  # a claimed training's resume (RESUME_START after its claim)
    assert starter_wait(3600.0) == 60.0  # another process's triggers are seen within a minute
    assert starter_wait(-3.0) == continuous.STARTER_SWEEP  # due now (not taken by this sweep): soon, not at once
    starter = TrainingStarter(ContinuousDeps(base=SimpleNamespace(pool=None), verify=None,
                                             events_committed=lambda: None, max_task_timeout=3600))
    assert starter.next_wait(True) == continuous.EXPORT_POLL  # one waits for the feedback loop: as before
    assert starter.next_wait(None) == continuous.STARTER_SWEEP  # a failed sweep


def exporter_wait(monkeypatch, pairs: list[dict], export: Any, retry: dict | None = None) -> float:
    async def active_loop_datasets(pool: Any) -> list[dict]:
        return pairs

    monkeypatch.setattr(fs, "active_loop_datasets", active_loop_datasets)
    monkeypatch.setattr(feedback.Exporter, "export", export)
    exporter = feedback.Exporter(SimpleNamespace(monitoring=SimpleNamespace(pool=None)))
    exporter._retry_at.update(retry or {})
    return exporter.next_wait(asyncio.run(exporter.sweep()))


def test_the_exporter_with_nothing_to_export_waits_the_longest_wait(monkeypatch):
    async def exported(self: Any, pair: dict) -> bool:
        return True

    assert exporter_wait(monkeypatch, [], exported) == 60.0  # no loop: was 2.0
    assert exporter_wait(monkeypatch, [{"deployment_id": 1, "dataset_id": 2}], exported) == 60.0  # all written


def test_the_exporter_looks_again_soon_when_another_process_holds_a_pair(monkeypatch):
    """Another process holds the pair's advisory lock: its round may have read the reviews before this process's
    review committed (which woke this exporter), and nothing else would look for them before IDLE_WAIT."""
    async def locked_elsewhere(self: Any, pair: dict) -> bool:
        return pair["dataset_id"] != 2

    pairs = [{"deployment_id": 1, "dataset_id": 2}, {"deployment_id": 1, "dataset_id": 3}]
    assert exporter_wait(monkeypatch, pairs, locked_elsewhere) == feedback.EXPORT_SWEEP


def test_the_exporter_waits_for_a_pair_s_back_off(monkeypatch):
    async def failing(self: Any, pair: dict) -> bool:
        raise ConnectionError("lineage away")

    async def exported(self: Any, pair: dict) -> bool:
        return True

    async def record_error(pool: Any, *key: Any) -> None:
        return None

    monkeypatch.setattr(fs, "record_error", record_error)
    pair = {"deployment_id": 1, "dataset_id": 2}
    assert exporter_wait(monkeypatch, [pair], failing) == feedback.EXPORT_SWEEP  # the first back-off, as before
    backing_off = {(1, 2): (time.monotonic() + 20.0, 20.0)}
    assert 19.0 < exporter_wait(monkeypatch, [pair], exported, backing_off) <= 20.0  # skipped until its retry


def reference_wait(monkeypatch, computing: list[tuple[int, int]], computed: bool) -> float:
    async def computing_references(pool: Any) -> list[tuple[int, int]]:
        return computing

    async def compute(self: Any, deployment_id: int, attempt: int) -> bool:
        return computed

    monkeypatch.setattr(fs, "computing_references", computing_references)
    monkeypatch.setattr(reference.ReferenceComputer, "compute", compute)
    computer = reference.ReferenceComputer(SimpleNamespace(monitoring=SimpleNamespace(pool=None)))
    return computer.next_wait(asyncio.run(computer.sweep()))


def test_the_reference_computer_waits_the_longest_wait_unless_another_process_computes(monkeypatch):
    assert reference_wait(monkeypatch, [], True) == 60.0  # none computing: was 2.0
    assert reference_wait(monkeypatch, [(1, 1)], True) == 60.0  # computed here
    # another process holds its lock (it may be computing an attempt a newer set_training_data here superseded)
    assert reference_wait(monkeypatch, [(1, 2)], False) == reference.REFERENCE_SWEEP
    computer = reference.ReferenceComputer(SimpleNamespace(monitoring=SimpleNamespace(pool=None)))
    assert computer.next_wait(None) == reference.REFERENCE_SWEEP  # a failed sweep


def test_the_hour_fold_and_the_delivery_resumer_close_what_their_quiet_looks_open():
    """Both look every 30-60 s and nobody wakes them: with a quiet pool each of those looks closes the connection
    it opened (Sweeper), where the resumer's 30 s, the pool's idle time, kept its connection for good."""
    pool = object()
    assert aggregates.HourFold(pool).quiet_pool() is pool  # was None
    deps = ContinuousDeps(base=SimpleNamespace(pool=pool), verify=None, events_committed=lambda: None,
                          max_task_timeout=3600)
    assert continuous.DeliveryResumer(deps).quiet_pool() is pool  # was None
