"""A run put back in the queue (its main.py never started: its scheduler stopped, or a start whose answer was lost)
tells it: store.requeue_unstarted writes its events.task_run.queued (store.add_run_event, status `queued`) with it, and
the lineage service's card of the run (services/workflow_lineage/graph.py, `_task_run`: the latest event's status)
reads `queued` until the run starts again. Before, nothing was sent, and the card read `running` from the start's
events.task_run.started for as long as the run waited. The SQL's write of the event: test_task_scheduler_wakeups.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from services.task_scheduler import store
from services.workflow_lineage import graph
from services.workflow_lineage import store as lineage_store
from shared import subjects

TASK, ORCH, RUN = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
T0 = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)


class SchedulerConn:
    """The scheduler's connection as add_run_event uses it: the task and orchestration read (with the database's
    clock_timestamp(), `database_clock`), the outbox row kept."""

    database_clock = T0

    def __init__(self) -> None:
        self.outbox: list[tuple[str, dict]] = []

    async def fetchrow(self, query: str, *args: object) -> dict:
        assert "FROM tasks" in query
        return {"id": TASK, "name": "nightly", "orch_id": ORCH, "orch_sha": "ab" * 32, "workspace_id": 5,
                "owner_id": "u", "event_at": SchedulerConn.database_clock}

    async def fetchval(self, query: str, *args: object) -> str:
        return "train"

    async def execute(self, query: str, event_id: object, subject: str, payload: str) -> None:
        assert "INSERT INTO outbox" in query
        self.outbox.append((subject, json.loads(payload)))


async def written(status: str, reason: str | None) -> tuple[str, dict]:
    conn = SchedulerConn()
    await store.add_run_event(conn, {"id": RUN, "task_id": TASK}, status, None, reason)
    [event] = conn.outbox
    return event


def a_card(monkeypatch) -> dict:
    """The run's card as graph.apply_event draws it (lineage's store faked: set_if_newer as its SQL)."""
    card: dict = {}

    async def lock_graph(conn, workspace_id):
        pass

    async def upsert_node(conn, workspace_id, kind, ref, title=None, settings=None, data=None):
        return {"id": (kind, ref)}

    async def set_if_newer(conn, node_id, stamp, at, data):  # as the SQL: unless a later event set it
        if node_id == ("task_run", str(RUN)) and card.get(stamp, at) <= at:
            card.update(data, **{stamp: at})

    async def add_edge(*_: object) -> None:
        pass

    for name, fake in (("lock_graph", lock_graph), ("upsert_node", upsert_node), ("set_if_newer", set_if_newer),
                       ("add_edge", add_edge)):
        monkeypatch.setattr(lineage_store, name, fake)
    return card


async def test_a_put_back_run_reads_queued_on_its_card_until_it_starts_again(monkeypatch):
    started = await written("running", None)
    put_back = await written("queued", store.PUT_BACK)
    assert put_back[0] == subjects.EVENT_TASK_RUN_QUEUED  # not .failed (monitoring and auth end a run at it)
    assert (put_back[1]["status"], put_back[1]["reason"]) == ("queued", store.PUT_BACK)

    card = a_card(monkeypatch)
    await graph.apply_event(None, *started, T0)
    assert card["status"] == "running"
    await graph.apply_event(None, *put_back, T0 + timedelta(seconds=1))
    assert card["status"] == "queued"  # was: running until the run started again
    await graph.apply_event(None, *started, T0 + timedelta(seconds=2))  # its start again
    assert card["status"] == "running"


async def test_a_restart_on_a_host_whose_clock_is_behind_reads_running(monkeypatch):
    """The put-back is written by the stopping process, the restart's events.task_run.started by another one a few
    milliseconds later, on a host whose clock is behind the first's: each event's occurred_at is the database's clock
    (store.add_run_event), so the card reads running. Before, each process stamped its own clock's time, the start
    read as older than the put-back, and the card read queued for the whole run (until its end's event)."""
    host_clocks = iter([T0, T0 + timedelta(milliseconds=20), T0 + timedelta(milliseconds=5)])  # B's 20 ms behind A's

    class HostClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return next(host_clocks)

    monkeypatch.setattr("shared.messages.base.datetime", HostClock)
    events = []
    for status, reason, database_clock in (("running", None, T0), ("queued", store.PUT_BACK, T0 + timedelta(seconds=1)),
                                           ("running", None, T0 + timedelta(seconds=1, milliseconds=3))):
        monkeypatch.setattr(SchedulerConn, "database_clock", database_clock)
        events.append(await written(status, reason))
    card = a_card(monkeypatch)
    for subject, payload in events:  # in the outbox's order, each at its own occurred_at, as lineage draws it
        await graph.apply_event(None, subject, payload, datetime.fromisoformat(payload["occurred_at"]))
    assert [e[1]["status"] for e in events] == ["running", "queued", "running"]
    assert card["status"] == "running"  # was: queued (its start stamped 17 ms before its put-back)
