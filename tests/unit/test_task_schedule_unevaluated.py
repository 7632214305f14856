"""A due task whose schedule cannot be evaluated stops alone (scheduler.fire_due): the other due tasks of the pass
fire, and the task gets a failed run saying why (store.stop_schedule), once. Before, the exception (croniter's, or a
stored schedule that check_schedule now refuses, as croniter's random `R` since 71adc2bc) left the pass's transaction
at every pass: no task of any workspace fired, and no run was started or beaten."""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.task_scheduler import scheduler, store
from services.task_scheduler.handlers import _task_status
from services.task_scheduler.scheduler import UNEVALUATED, Scheduler

BAD, GOOD = uuid.uuid4(), uuid.uuid4()
POINT = datetime(2026, 12, 5, 14, 0, 2, tzinfo=UTC)


class Conn:
    """The loop's connection as fire_due uses it directly: a transaction, and a savepoint in it for each task (the
    store's calls are replaced). `committed` counts the outermost's commits."""

    def __init__(self) -> None:
        self.committed = 0
        self.depth = 0

    @contextlib.asynccontextmanager
    async def transaction(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0:
            self.committed += 1


def pass_with(monkeypatch, bad_schedule: str) -> tuple[dict, Scheduler]:
    """fire_due over two due tasks of two workspaces: BAD (its schedule `bad_schedule`, due first) and GOOD (every 2 s).
    A task whose schedule was stopped is no longer due (its next_fire cleared), as due_tasks' SQL reads it."""
    seen: dict = {"fired": [], "next": [], "stopped": [], "events": 0}

    async def due_tasks(conn, limit, held=None):
        rows = [{"id": BAD, "workspace_id": 3, "schedule": bad_schedule, "missed_run_policy": None,
                 "next_fire": POINT, "now": POINT + timedelta(milliseconds=20)},
                {"id": GOOD, "workspace_id": 7, "schedule": "* * * * * */2", "missed_run_policy": None,
                 "next_fire": POINT, "now": POINT + timedelta(milliseconds=20)}]
        return [r for r in rows if r["id"] not in {s[0] for s in seen["stopped"]}]

    async def queued_of_task(conn, task_id, workspace_id, at_most):
        return 0

    async def fire(conn, task_id, workspace_id, point):
        seen["fired"].append((task_id, point))
        return True

    async def set_next_fire(conn, task_id, next_fire):
        seen["next"].append((task_id, next_fire))

    async def stop_schedule(conn, task_id, workspace_id, point, reason):
        seen["stopped"].append((task_id, workspace_id, point, reason))
        return True

    for name, fn in (("due_tasks", due_tasks), ("queued_of_task", queued_of_task), ("fire", fire),
                     ("set_next_fire", set_next_fire), ("stop_schedule", stop_schedule)):
        monkeypatch.setattr(store, name, fn, raising=False)
    settings = SimpleNamespace(missed_run_grace=30.0, max_concurrent_runs_per_workspace=2)
    sched = Scheduler(deps=SimpleNamespace(settings=settings), mint=None, gateway_url="")
    monkeypatch.setattr(sched, "events_committed", lambda: seen.__setitem__("events", seen["events"] + 1))
    return seen, sched


@pytest.mark.parametrize("bad_schedule, said", [
    ("R * * * *", "has a random field (R)"),  # stored before 71adc2bc: check_schedule refuses it now
    ("61 * * * *", "is not a valid cron expression"),  # one a newer croniter rejects
])
async def test_a_schedule_that_cannot_be_evaluated_stops_its_task_alone(monkeypatch, caplog, bad_schedule, said):
    seen, sched = pass_with(monkeypatch, bad_schedule)
    conn = Conn()
    with caplog.at_level(logging.INFO, logger=scheduler.log.name):
        await sched.fire_due(conn)
    assert conn.committed == 1  # the pass's transaction commits: the other task's run with it
    assert seen["fired"] == [(GOOD, POINT)]
    assert seen["next"] == [(GOOD, POINT + timedelta(seconds=2))]  # nothing written through the usual path for BAD
    [(task_id, workspace_id, point, reason)] = seen["stopped"]
    assert (task_id, workspace_id, point) == (BAD, 3, POINT)
    assert reason.startswith(f"{UNEVALUATED}: schedule {bad_schedule!r} ") and said in reason
    assert "schedule it again" in reason
    assert seen["events"] == 1  # the failed run's event: the outbox woken after the commit
    assert caplog.text.count(f"task {BAD}: its schedule") == 1

    # the next pass no longer takes it (next_fire cleared): no second record, no second log line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=scheduler.log.name):
        await sched.fire_due(conn)
    assert len(seen["stopped"]) == 1 and f"task {BAD}" not in caplog.text


async def test_an_exception_of_croniter_stops_its_task_alone(monkeypatch):
    seen, sched = pass_with(monkeypatch, "*/5 * * * *")
    real = scheduler.due_point

    def due_point(schedule, *args):
        if schedule == "*/5 * * * *":
            raise ValueError("croniter could not read it")
        return real(schedule, *args)

    monkeypatch.setattr(scheduler, "due_point", due_point)
    await sched.fire_due(Conn())
    assert seen["fired"] == [(GOOD, POINT)]
    [(task_id, _, _, reason)] = seen["stopped"]
    assert task_id == BAD and reason.startswith(f"{UNEVALUATED}: ValueError: croniter could not read it; ")


def test_a_stopped_schedule_reads_failed():
    stopped = {"killed": False, "schedule": "R * * * *", "next_fire": None}
    assert _task_status(stopped, [{"status": "failure", "running": False}]) == "failed"
    assert _task_status({**stopped, "killed": True}, []) == "killed"  # killed afterwards
    assert _task_status({**stopped, "next_fire": POINT}, []) == "pending"
