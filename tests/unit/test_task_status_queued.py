"""A task reads `pending` until a run of it leaves the queue (seed 001's task statuses, "pending, started, and failed";
a run's "running: The task has started"), a scheduled task as a one-shot task. Until session 42 a scheduled task read
`started` as soon as it had made a run, even one still waiting for room in its workspace, while a one-shot task whose
run waited read `pending`. A scheduled task's last LAST_RUNS runs may all be queued (its max_queued above that) while
an older one ran: that is asked of the database (store.with_runs_out_of_queue), for those tasks only."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from services.task_scheduler import handlers, store

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def task(schedule: str | None) -> dict:
    return {"id": uuid.uuid4(), "workspace_id": 7, "orch_id": uuid.uuid4(), "orch_sha": "a" * 64, "name": "t",
            "owner_id": "u", "args": json.dumps({}), "timeout_seconds": 900, "schedule": schedule,
            "missed_run_policy": None, "next_fire": T0 if schedule else None, "killed": False,
            "created_at": T0, "updated_at": T0}


def queued(count: int) -> list[dict]:
    return [{"id": uuid.uuid4(), "status": "queued", "created_at": T0 - timedelta(minutes=i), "running": True,
             "started": False} for i in range(count)]


def replaced(count: int) -> list[dict]:
    """Runs a replace policy's next point failed while they waited (store.replace_active): never started."""
    return [{"id": uuid.uuid4(), "status": "failure", "created_at": T0 - timedelta(hours=1, minutes=i),
             "running": False, "started": False} for i in range(count)]


async def test_a_task_whose_runs_all_wait_reads_pending_scheduled_or_not(monkeypatch):
    once, every, crowded, started_long_ago = task(None), task("* * * * *"), task("* * * * *"), task("* * * * *")
    last = {once["id"]: queued(1), every["id"]: queued(1), crowded["id"]: queued(handlers.LAST_RUNS),
            started_long_ago["id"]: queued(handlers.LAST_RUNS)}
    asked: list = []

    async def last_runs(pool, task_ids, per_task):
        return {t: last[t] for t in task_ids}

    async def with_active_runs(pool, tasks):
        return set()

    async def with_runs_out_of_queue(pool, task_ids):
        asked.append(list(task_ids))
        return {started_long_ago["id"]} & set(task_ids)

    monkeypatch.setattr(store, "last_runs", last_runs)
    monkeypatch.setattr(store, "with_active_runs", with_active_runs)
    monkeypatch.setattr(store, "with_runs_out_of_queue", with_runs_out_of_queue, raising=False)
    deps = SimpleNamespace(pool=None, settings=SimpleNamespace())
    records = await handlers._records(deps, [once, every, crowded, started_long_ago])
    assert [r.status for r in records] == ["pending", "pending", "pending", "started"]
    # only the scheduled tasks whose last LAST_RUNS runs are all queued are asked about
    assert asked == [[crowded["id"], started_long_ago["id"]]]
    # a run that left the queue, the last one or not: started, as a one-shot task's run that started
    last[every["id"]] = [*queued(1), {"id": uuid.uuid4(), "status": "success", "created_at": T0 - timedelta(hours=1),
                                      "running": False, "started": True}]
    assert [r.status for r in await handlers._records(deps, [every])] == ["started"]
    assert asked == [[crowded["id"], started_long_ago["id"]]]  # not asked: its last runs say it


async def test_a_scheduled_task_whose_runs_were_replaced_while_queued_reads_pending(monkeypatch):
    """A run a replace policy's next point failed while it waited never left the queue: its task reads `pending` until
    a run of it starts, and one whose last LAST_RUNS runs are such runs and a queued one is asked of the database.
    Before (64fd7ec8) any run not `queued` counted: the task whose only run was replaced read `started`, nothing run."""
    one, crowded = task("* * * * *"), task("* * * * *")
    last = {one["id"]: [*queued(1), *replaced(1)], crowded["id"]: [*queued(1), *replaced(handlers.LAST_RUNS - 1)]}
    asked: list = []

    async def last_runs(pool, task_ids, per_task):
        return {t: last[t] for t in task_ids}

    async def with_runs_out_of_queue(pool, task_ids):
        asked.append(list(task_ids))
        return set()

    monkeypatch.setattr(store, "last_runs", last_runs)
    monkeypatch.setattr(store, "with_runs_out_of_queue", with_runs_out_of_queue)
    deps = SimpleNamespace(pool=None, settings=SimpleNamespace())
    assert [r.status for r in await handlers._records(deps, [one, crowded])] == ["pending", "pending"]
    assert asked == [[crowded["id"]]]
    # a run that was started, then failed (its token refused, its main.py failing): started
    last[one["id"]][1] = {**last[one["id"]][1], "started": True}
    assert [r.status for r in await handlers._records(deps, [one])] == ["started"]
