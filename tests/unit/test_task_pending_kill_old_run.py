"""A killed task reads `pending_kill` while any run of it is still stopping, however old (store.with_active_runs), not
only while one of its last LAST_RUNS (10) runs is: before, a long run with 10 later runs (a schedule whose points
outlast it) read `killed` while its supervisor was still stopping it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from services.task_scheduler import handlers, store

T0 = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)


def task(killed: bool) -> dict:
    return {"id": uuid.uuid4(), "workspace_id": 7, "orch_id": uuid.uuid4(), "orch_sha": "a" * 64, "name": "t",
            "owner_id": "u", "args": json.dumps({}), "timeout_seconds": 900, "schedule": "* * * * *",
            "missed_run_policy": "fire_once", "next_fire": None if killed else T0, "killed": killed,
            "created_at": T0, "updated_at": T0}


async def test_a_killed_task_with_an_old_run_still_stopping_reads_pending_kill(monkeypatch):
    killed, other, live = task(True), task(True), task(False)
    # each task's last 10 runs ended; `killed` has an 11th, older, still running
    last = {t["id"]: [{"id": uuid.uuid4(), "status": "success", "created_at": T0 - timedelta(minutes=i),
                       "running": False, "started": True} for i in range(handlers.LAST_RUNS)]
            for t in (killed, other, live)}
    asked: list = []

    async def last_runs(pool, task_ids, per_task):
        return {t: last[t] for t in task_ids}

    async def with_active_runs(pool, tasks):
        asked.append([t["id"] for t in tasks])
        return {killed["id"]} & {t["id"] for t in tasks}

    monkeypatch.setattr(store, "last_runs", last_runs)
    monkeypatch.setattr(store, "with_active_runs", with_active_runs, raising=False)
    deps = SimpleNamespace(pool=None, settings=SimpleNamespace())
    records = await handlers._records(deps, [killed, other, live])
    assert [r.status for r in records] == ["pending_kill", "killed", "started"]
    assert asked == [[killed["id"], other["id"]]]  # only killed tasks are asked about


def test_status_without_the_active_reading_is_read_from_the_last_runs():
    row = task(True)
    assert handlers._task_status(row, [{"status": "running", "running": True}]) == "pending_kill"
    assert handlers._task_status(row, [{"status": "success", "running": False}]) == "killed"
    assert handlers._task_status(row, [{"status": "success", "running": False}], active=True) == "pending_kill"
