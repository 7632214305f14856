"""A task's runs waiting to start are capped (scheduler.QUEUED_PER_TASK): a schedule point that comes while the task
has that many `queued` is not queued, and the scheduler says so, its next point set as for any other. Before, a task
whose runs outlast its interval (its workspace at its limit) queued one more run at every point without end."""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.task_scheduler import scheduler, store
from services.task_scheduler.scheduler import QUEUED_PER_TASK, Scheduler

TASK = uuid.uuid4()
POINT = datetime(2026, 12, 5, 14, 0, 2, tzinfo=UTC)


class Conn:
    """The loop's connection as fire_due uses it directly: a transaction (the store's calls are replaced)."""

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield


def fire_due(monkeypatch, waiting: int) -> tuple[dict, Scheduler]:
    """One pass's fire_due for a per-2-second task due at POINT whose workspace holds `waiting` of its runs queued."""
    seen: dict = {"fired": [], "next": [], "counted": []}

    async def due_tasks(conn, limit, held=None):
        return [{"id": TASK, "workspace_id": 7, "schedule": "* * * * * */2", "missed_run_policy": None,
                 "next_fire": POINT, "now": POINT + timedelta(milliseconds=20)}]

    async def queued_of_task(conn, task_id, workspace_id, at_most):
        seen["counted"].append((task_id, workspace_id, at_most))
        return min(waiting, at_most)

    async def fire(conn, task_id, workspace_id, point):
        seen["fired"].append(point)
        return True

    async def set_next_fire(conn, task_id, next_fire):
        seen["next"].append(next_fire)

    for name, fn in (("due_tasks", due_tasks), ("queued_of_task", queued_of_task), ("fire", fire),
                     ("set_next_fire", set_next_fire)):
        monkeypatch.setattr(store, name, fn, raising=False)
    settings = SimpleNamespace(missed_run_grace=30.0, max_concurrent_runs_per_workspace=2)
    return seen, Scheduler(deps=SimpleNamespace(settings=settings), mint=None, gateway_url="")


@pytest.mark.parametrize("waiting", [0, 1, QUEUED_PER_TASK - 1])
async def test_a_point_is_queued_below_the_cap(monkeypatch, waiting):
    seen, sched = fire_due(monkeypatch, waiting)
    await sched.fire_due(Conn())
    assert seen["fired"] == [POINT]
    assert seen["next"] == [POINT + timedelta(seconds=2)]


@pytest.mark.parametrize("waiting", [QUEUED_PER_TASK, QUEUED_PER_TASK + 5])
async def test_a_point_past_the_cap_is_not_queued_and_said(monkeypatch, caplog, waiting):
    seen, sched = fire_due(monkeypatch, waiting)
    with caplog.at_level(logging.INFO, logger=scheduler.log.name):
        await sched.fire_due(Conn())
    assert seen["fired"] == []  # no run for the point
    assert seen["next"] == [POINT + timedelta(seconds=2)]  # and the schedule goes on from the next one
    assert seen["counted"] == [(TASK, 7, QUEUED_PER_TASK)]
    assert f"task {TASK}: point {POINT.isoformat()} not queued: {QUEUED_PER_TASK} runs of the task are still" \
           f" waiting to start" in caplog.text

