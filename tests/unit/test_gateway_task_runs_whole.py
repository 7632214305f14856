"""task/list_task_runs asked whole (no `limit`) is read by the gateway a page at a time across bus replies
(services/gateway/orchestrations.py, forward_runs): before, a task whose runs passed a bus reply (8 MiB, ~25,000 runs)
was a 422 reply_too_large, though the seed answers every run. The scheduler's pages are faked here as its SQL orders
them (created_at then id, newest first); the answer must be every run once, in the order asked (the seed's: updated_at
descending, then run id, as `ORDER BY updated_at DESC, id`). The stack's truth: test_task_runs_list_pages.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.gateway import handlers, orchestrations
from services.gateway.http import JSON_ROUTES
from services.task_scheduler import handlers as scheduler
from services.task_scheduler import store
from shared import paging
from shared.authz import Principal
from shared.errors import ReplyTooLarge
from shared.messages.tasks import ListTaskRuns

TASK = uuid.uuid4()
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def made_runs(count: int) -> list[dict]:
    """`count` runs created a second apart (every fifth at the same moment as the one before: the id orders them),
    updated in another order, many at the same moment (the id orders those too)."""
    runs = []
    for i in range(count):
        created = BASE + timedelta(seconds=i - i % 5 // 4)
        updated = BASE + timedelta(hours=1, seconds=(i * 7919) % (count // 3 + 1))
        runs.append({"task": str(TASK), "run_id": str(uuid.uuid4()), "status": "success", "exit_code": 0,
                     "reason": None, "scheduled_for": None, "created_at": created.isoformat(),
                     "updated_at": updated.isoformat()})
    return runs


class Scheduler:
    """task/list_task_runs as the scheduler pages it (order "created", `limit`, keyset cursor); the commands asked."""

    def __init__(self, runs: list[dict], repeat: bool = False) -> None:
        self.runs = sorted(runs, key=lambda r: (datetime.fromisoformat(r["created_at"]), uuid.UUID(r["run_id"])),
                           reverse=True)
        self.asked: list[ListTaskRuns] = []
        self.repeat = repeat

    async def forward(self, _broker, subject: str, cmd: ListTaskRuns, token: str, timeout: float) -> dict:
        assert (subject, token, timeout) == ("tasks.runs", "token", 5.0)
        self.asked.append(cmd)
        start = 0 if cmd.cursor is None else int(cmd.cursor)
        end = len(self.runs) if cmd.limit is None else start + cmd.limit
        more = end < len(self.runs)
        return {"runs": self.runs[start:end], "next_cursor": ("1" if self.repeat else str(end)) if more else None}


def answered(monkeypatch, scheduler: Scheduler, **asked) -> list[dict]:
    monkeypatch.setattr(handlers, "forward", scheduler.forward)
    reply = asyncio.run(orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=TASK, **asked), "token",
                                                    5.0))
    return reply["runs"]


def test_a_whole_list_is_read_in_pages_and_answered_most_recently_updated_first(monkeypatch):
    runs = made_runs(2500)
    scheduler = Scheduler(runs)
    answer = answered(monkeypatch, scheduler, status="success")
    # PostgreSQL's ORDER BY updated_at DESC, id: ties of updated_at by the uuid ascending
    seed_order = sorted(runs, key=lambda r: (-datetime.fromisoformat(r["updated_at"]).timestamp(),
                                             uuid.UUID(r["run_id"])))
    assert [r["run_id"] for r in answer] == [r["run_id"] for r in seed_order]
    assert [(c.order, c.limit, c.cursor, c.status) for c in scheduler.asked] == [
        ("created", 1000, None, "success"), ("created", 1000, "1000", "success"), ("created", 1000, "2000", "success")]


def test_order_created_asked_whole_is_its_pages_in_order_from_the_cursor(monkeypatch):
    scheduler = Scheduler(made_runs(1200))
    assert answered(monkeypatch, scheduler, order="created", cursor="100") == scheduler.runs[100:]
    assert [c.cursor for c in scheduler.asked] == ["100", "1100"]


def test_a_few_runs_are_one_request_and_a_limit_or_a_refused_cursor_is_forwarded_as_it_is(monkeypatch):
    scheduler = Scheduler(made_runs(30))
    assert len(answered(monkeypatch, scheduler)) == 30 and len(scheduler.asked) == 1
    for asked in ({"limit": 7}, {"limit": 7, "order": "created"}, {"cursor": "3"}):
        scheduler.asked.clear()
        answered(monkeypatch, scheduler, **asked)
        assert [c.model_dump(exclude_unset=True) for c in scheduler.asked] == [{"task_id": TASK, **asked}], asked


def test_past_its_bound_the_whole_list_is_a_422_telling_to_page(monkeypatch):
    monkeypatch.setattr(orchestrations, "WHOLE_RUNS_BYTES", 300_000)  # ~1,250 runs of these
    with pytest.raises(ReplyTooLarge) as refused:
        answered(monkeypatch, Scheduler(made_runs(3000)))
    assert 'pass order "created" and limit' in refused.value.msg, refused.value.msg
    assert len(answered(monkeypatch, Scheduler(made_runs(1500)))) == 1500  # its last page may pass it


def test_a_cursor_answered_twice_stops_the_reading(monkeypatch):
    with pytest.raises(paging.RepeatedCursor):
        answered(monkeypatch, Scheduler(made_runs(3500), repeat=True))


def test_the_route_reads_pages():
    route = next(r for r in JSON_ROUTES if r.path == "/task/list_task_runs")
    assert route.forward is orchestrations.forward_runs and route.unwrap == "runs"
    assert all(r.forward is None for r in JSON_ROUTES if r is not route)


def test_runs_updated_or_created_while_the_pages_are_read_are_answered_once_or_not_at_all(monkeypatch):
    """The scheduler's own list_runs (its keyset pages, cursor and page code) over its rows in memory, the rows
    changed between two pages as a schedule and its runs do: a run already read and one not read yet updated (each
    moves to the head of the update order), runs created. The pages end inside runs created at the same moment.
    Every run there at the first page is answered once, as its page read it; none created after it (the commit's
    claim, docs/api-paging.md; a cursor taken from updated_at instead repeats the first page: RepeatedCursor)."""
    rows = [{"id": uuid.UUID(r["run_id"]), "task_id": TASK, "status": r["status"], "exit_code": 0, "reason": None,
             "scheduled_for": None, "created_at": datetime.fromisoformat(r["created_at"]),
             "updated_at": datetime.fromisoformat(r["updated_at"])} for r in made_runs(1104)]
    first = {row["id"] for row in rows}
    by_creation = sorted(rows, key=lambda row: (row["created_at"], row["id"]), reverse=True)
    assert by_creation[999]["created_at"] == by_creation[1000]["created_at"]  # a page ends inside a tie
    read_early, read_late = by_creation[10], by_creation[1050]

    async def runs_of(_pool, task_id, status, limit, after=None, paged=False):
        assert paged and task_id == TASK and status is None
        kept = sorted((row for row in rows if after is None or (row["created_at"], row["id"]) < after),
                      key=lambda row: (row["created_at"], row["id"]), reverse=True)
        return [dict(row) for row in kept[:limit]]

    async def visible(_deps, principal, token, task_id):
        assert (principal, token, task_id) == (alice, "token", TASK)  # every page as the caller

    alice, asked = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="sdk", username="alice",
                             issued_at=0.0), []

    async def forward(_broker, subject, cmd, token, timeout):
        asked.append(cmd.cursor)
        if len(asked) == 2:  # between the first page and the second
            later = BASE + timedelta(days=1)
            for row in (read_early, read_late):
                row.update(updated_at=later, status="failure")
            rows.extend({"id": uuid.uuid4(), "task_id": TASK, "status": "queued", "exit_code": None, "reason": None,
                         "scheduled_for": None, "created_at": later, "updated_at": later} for _ in range(3))
        answer = await scheduler.list_runs(SimpleNamespace(pool=None), alice, token, cmd)
        return answer.model_dump(mode="json")

    monkeypatch.setattr(store, "runs_of", runs_of)
    monkeypatch.setattr(scheduler, "_visible_task", visible)
    monkeypatch.setattr(handlers, "forward", forward)
    asked_whole = ListTaskRuns(task_id=TASK)
    runs = asyncio.run(orchestrations.forward_runs(None, "tasks.runs", asked_whole, "token", 5.0))["runs"]
    assert len(asked) == 2 and asked[0] is None
    ids = [uuid.UUID(run["run_id"]) for run in runs]
    assert len(ids) == len(set(ids)) and set(ids) == first  # none skipped, none twice, none created after the first
    assert ids[0] == read_late["id"] and runs[0]["status"] == "failure"  # read after its update: the newest
    early = next(run for run in runs if run["run_id"] == str(read_early["id"]))
    assert early["status"] == "success"  # read before its update: as its page read it
