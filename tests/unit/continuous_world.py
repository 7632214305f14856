"""Continuous training's in-memory world for the unit tests of services/monitoring/continuous.py
(test_monitoring_continuous.py, test_monitoring_starter_log.py): its deps over stand-ins, pools whose connections
answer what the training starter asks, and one TrainingStarter sweep with start_training replaced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from services.monitoring import continuous
from services.monitoring.continuous import ContinuousDeps


def continuous_deps(**base: Any) -> ContinuousDeps:
    """ContinuousDeps over a service base holding just `base` (e.g. `pool=`), nothing verified, no outbox to wake."""
    return ContinuousDeps(base=SimpleNamespace(**base), verify=None, events_committed=lambda: None,
                          max_task_timeout=3600)


class _Conn:
    """A pooled connection whose transaction does nothing and whose queries are its pool's."""

    def __init__(self, pool: StandInPool) -> None:
        self.pool = pool

    async def __aenter__(self) -> _Conn:
        return self

    async def __aexit__(self, *exc) -> bool:
        return False

    def transaction(self) -> _Conn:
        return self

    async def fetch(self, sql: str, *args):
        return await self.pool.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args):
        return await self.pool.fetchrow(sql, *args)


class StandInPool:
    """A pool stand-in: `acquire()` is a connection asking the pool's own fetch / fetchrow, which a subclass writes."""

    def acquire(self) -> _Conn:
        return _Conn(self)

    async def fetch(self, sql: str, *args):
        raise AssertionError(f"not expected here: {sql}")

    async def fetchrow(self, sql: str, *args):
        raise AssertionError(f"not expected here: {sql}")


class StarterPool(StandInPool):
    """A pool stand-in for TrainingStarter.sweep: no claim to resume (the first fetch), `rows` the trainings to
    start, no feedback loop waiting."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.fetched = rows, 0

    async def fetch(self, sql, *args):
        self.fetched += 1
        return self.rows if "run_claimed_at IS NULL ORDER BY" in sql else []

    async def fetchval(self, sql, *args):
        return None  # no feedback loop waiting


class ClaimPool(StandInPool):
    """A pool stand-in whose claim (start_training's conditional UPDATE) claims `training`."""

    def __init__(self, training: dict) -> None:
        self.training = training

    async def fetchrow(self, sql, *args):
        assert sql.startswith("UPDATE trainings SET run_claimed_at = now()")
        return self.training


async def sweep_starting(monkeypatch, rows: list[dict],
                         start_training: Callable[..., Awaitable[bool]]) -> bool:
    """One TrainingStarter sweep over StarterPool(rows), each training started by `start_training` (in place of
    continuous.start_training); what the sweep answers."""
    monkeypatch.setattr(continuous, "start_training", start_training)
    return await continuous.TrainingStarter(continuous_deps(pool=StarterPool(rows))).sweep()
