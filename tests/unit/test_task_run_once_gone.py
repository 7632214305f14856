"""tasks/run_once and run_scheduled with a caller-chosen id (services/task_scheduler/handlers.py _insert_or_same):
the insert meets a task of that id (ON CONFLICT DO NOTHING), and the task is read to tell the caller's retry (its
first answer lost: that task) from an id taken otherwise (409). A task deleted between the two no longer holds the
id: it was a TypeError on the missing row (500); now the task is inserted again, once, and a 409 if it is gone again."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest

from services.task_scheduler import handlers, store
from shared.errors import Conflict
from shared.messages.tasks import RunTaskOnce

ORCH = uuid.uuid4()


def run_once(monkeypatch, inserted: list[bool]):
    """run_once whose inserts answer `inserted` in turn, the task of that id always gone when read; the runs queued."""
    queued, reads = [], []

    async def insert_task(conn, **fields):
        return inserted.pop(0)

    async def task(conn, task_id):
        reads.append(task_id)
        return None  # deleted between the insert that met it and this read

    async def queue_once(conn, task_id, workspace_id):
        queued.append(task_id)

    async def nothing(*args, **kwargs):
        return None

    async def orchestration(deps, workspace_id, orch_id):
        return {"id": orch_id, "sha": "s"}

    monkeypatch.setattr(store, "insert_task", insert_task)
    monkeypatch.setattr(store, "task", task)
    monkeypatch.setattr(store, "queue_once", queue_once)
    monkeypatch.setattr(handlers, "require_member", nothing)
    monkeypatch.setattr(handlers, "_orchestration_for_task", orchestration)
    conn = SimpleNamespace(transaction=lambda: _Entered(None))
    pool = SimpleNamespace(acquire=lambda: _Entered(conn))
    deps = SimpleNamespace(pool=pool, membership=lambda token: None,
                           settings=SimpleNamespace(default_timeout=60, max_timeout=3600))
    chosen = uuid.uuid4()
    cmd = RunTaskOnce(orch_id=ORCH, workspace_id=1, id=chosen)
    principal = SimpleNamespace(user_id="u")
    return (lambda: asyncio.run(handlers.run_once(deps, principal, "t", cmd))), chosen, queued, reads


class _Entered:
    """`async with` answering `value` (the pool's connection, its transaction)."""

    def __init__(self, value):
        self.value = value

    async def __aenter__(self):
        return self.value

    async def __aexit__(self, *exc):
        return False


def test_a_task_deleted_after_its_insert_met_it_is_inserted_again(monkeypatch):
    call, chosen, queued, reads = run_once(monkeypatch, [False, True])
    assert call().id == chosen
    assert reads == [chosen] and queued == [chosen]  # one run queued, for the task inserted again


def test_a_task_met_and_gone_twice_is_a_409_not_a_500(monkeypatch):
    call, chosen, queued, reads = run_once(monkeypatch, [False, False])
    with pytest.raises(Conflict) as refused:
        call()
    assert refused.value.code == "task_id_taken" and reads == [chosen, chosen] and queued == []
