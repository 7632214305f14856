"""task/list_task_runs asked whole (no `limit`) is read by the gateway a page at a time across bus replies
(services/gateway/orchestrations.py, forward_runs): before, a task whose runs passed a bus reply (8 MiB, ~25,000 runs)
was a 422 reply_too_large, though the seed answers every run. The scheduler's pages are faked here as its SQL orders
them (created_at then id, newest first); the answer must be every run once, in the order asked (the seed's: updated_at
descending, then run id, as `ORDER BY updated_at DESC, id`). The stack's truth: test_task_runs_list_pages.py."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import fastapi.routing
import orjson
import pytest
from fastapi import FastAPI

from services.gateway import handlers, orchestrations
from services.gateway.errors import error_parts
from services.gateway.http import JSON_ROUTES, _forwarding_endpoint
from services.task_scheduler import handlers as scheduler
from services.task_scheduler import store
from shared import bus, paging, subjects
from shared.authz import Principal
from shared.errors import ReplyTooLarge, TooManyRequests, UpstreamTimeout
from shared.messages import Reply
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
    return reply["runs"] if isinstance(reply, dict) else orjson.loads(reply.body)  # a limit's reply / runs' JSON


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
    claim, docs/api-paging.md; a cursor taken from updated_at instead repeats the first page: RepeatedCursor). A run
    committed between the pages whose created_at (its transaction's start: now()) is older than the first page's
    last run is answered though it was not there at the first page (docs/api-paging.md says so)."""
    rows = [{"id": uuid.UUID(r["run_id"]), "task_id": TASK, "status": r["status"], "exit_code": 0, "reason": None,
             "scheduled_for": None, "created_at": datetime.fromisoformat(r["created_at"]),
             "updated_at": datetime.fromisoformat(r["updated_at"])} for r in made_runs(1104)]
    first = {row["id"] for row in rows}
    by_creation = sorted(rows, key=lambda row: (row["created_at"], row["id"]), reverse=True)
    assert by_creation[999]["created_at"] == by_creation[1000]["created_at"]  # a page ends inside a tie
    read_early, read_late = by_creation[10], by_creation[1050]
    begun_before = {"id": uuid.uuid4(), "task_id": TASK, "status": "queued", "exit_code": None, "reason": None,
                    "scheduled_for": None, "created_at": by_creation[1060]["created_at"] - timedelta(microseconds=1),
                    "updated_at": BASE + timedelta(days=1, seconds=-1)}

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
            rows.append(begun_before)  # its transaction began before the reading, long before it committed
        answer = await scheduler.list_runs(SimpleNamespace(pool=None), alice, token, cmd)
        return answer.model_dump(mode="json")

    monkeypatch.setattr(store, "runs_of", runs_of)
    monkeypatch.setattr(scheduler, "_visible_task", visible)
    monkeypatch.setattr(handlers, "forward", forward)
    asked_whole = ListTaskRuns(task_id=TASK)
    runs = orjson.loads(asyncio.run(orchestrations.forward_runs(None, "tasks.runs", asked_whole, "token", 5.0)).body)
    assert len(asked) == 2 and asked[0] is None
    ids = [uuid.UUID(run["run_id"]) for run in runs]
    # none skipped, none twice, none begun after the first page; the one begun before it and committed later is in
    assert len(ids) == len(set(ids)) and set(ids) == first | {begun_before["id"]}
    assert ids[0] == read_late["id"] and runs[0]["status"] == "failure"  # read after its update: the newest
    assert ids[1] == begun_before["id"] and runs[1]["status"] == "queued"  # updated just before it
    early = next(run for run in runs if run["run_id"] == str(read_early["id"]))
    assert early["status"] == "success"  # read before its update: as its page read it


ALICE = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="sdk", username="alice", issued_at=0.0)
REASONS = [None, "exit code 1", 'said "no" \\ then\n\tstopped', "ünïcödé 日本語 🚀 \u2028\u2029 \ufffd",
           "\x00\x01\x1f\x7f", "x" * 3000, ""]


def scheduler_runs(count: int) -> list[dict]:
    """`count` runs as the scheduler answers them (its _run_record over rows, then the reply's JSON read back as the
    gateway's bus request reads it): nulls, failure reasons of every kind of character, times with and without
    microseconds, some runs updated at the same moment."""
    rows = [{"id": uuid.uuid4(), "task_id": TASK, "status": ("success", "failure", "queued", "running")[i % 4],
             "exit_code": (0, 1, None, -9, 137)[i % 5], "reason": REASONS[i % len(REASONS)],
             "scheduled_for": BASE + timedelta(minutes=i) if i % 3 else None,
             "created_at": BASE + timedelta(seconds=i, microseconds=(i * 7) % 3 * 250_001),
             "updated_at": BASE + timedelta(hours=2, seconds=(i * 7919) % (count // 2 + 1))} for i in range(count)]
    return [scheduler._run_record(row).model_dump(mode="json") for row in rows]


class PagedReplies(Scheduler):
    """The scheduler's pages as bus replies: encoded as encode_reply encodes them, read back as handlers.forward
    (shared.bus.request) reads them, so each page's dicts are new, as in the gateway."""

    async def forward(self, _broker, subject: str, cmd: ListTaskRuns, token: str, timeout: float) -> dict:
        assert subject == subjects.TASKS_LIST_RUNS  # the route's
        page = await super().forward(_broker, "tasks.runs", cmd, token, timeout)
        return bus._reply_data(subject, bus.encode_reply(Reply(ok=True, data=page), None, subject), None)


def route_app() -> FastAPI:
    """The gateway's task/list_task_runs route as create_app adds it (its endpoint, response model and status), the
    caller's token taken as alice's; and /model, the same runs answered through FastAPI's check and encoding against
    that response model (the route's answer before)."""
    route = next(r for r in JSON_ROUTES if r.path == "/task/list_task_runs")
    settings = SimpleNamespace(nats=SimpleNamespace(request_timeout=5.0), registry=SimpleNamespace(worker_timeout=1.0))

    async def who() -> Principal:
        return ALICE

    app = FastAPI()
    app.post("/runs", response_model=route.reply, status_code=route.status)(
        _forwarding_endpoint(SimpleNamespace(broker=None, settings=settings), route, who))
    app.post("/model", response_model=route.reply)(lambda: app.state.runs)
    return app


def posted(app: FastAPI, path: str, body: dict) -> tuple[int, dict[bytes, bytes], bytes]:
    """The app's answer to a POST, called as uvicorn calls it (ASGI), without a client."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": orjson.dumps(body, default=str), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("gateway", 80), "headers": [(b"authorization", b"Bearer token"),
                                                     (b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    bodies = [m["body"] for m in sent[1:] if m.get("body")]
    return sent[0]["status"], dict(sent[0]["headers"]), bodies[0] if len(bodies) == 1 else b"".join(bodies)


def test_the_whole_answer_is_the_bytes_the_response_model_wrote_without_that_check(monkeypatch):
    """The route answers the runs' JSON as read (orjson's, joined) instead of FastAPI checking the joined runs against
    list[TaskRunRecord] and encoding them again: at the bound that held ~9 times the answer and took ~1.5 s of the
    event loop that serves inference (session 43's review). The bytes, headers and status are what that check and
    encoding wrote for the same runs, in each order (unicode, control characters, quotes, nulls, times)."""
    app, checked = route_app(), []
    serialize = fastapi.routing.serialize_response

    async def counted(**kwargs):
        checked.append(kwargs["field"])
        return await serialize(**kwargs)

    monkeypatch.setattr(fastapi.routing, "serialize_response", counted)
    runs = scheduler_runs(1500)
    monkeypatch.setattr(handlers, "forward", PagedReplies(runs).forward)
    for order in ("updated", "created"):
        checked.clear()
        status, headers, body = posted(app, "/runs", {"task_id": TASK, "order": order})
        assert not checked  # not checked and encoded again
        app.state.runs = orjson.loads(body)
        assert [run["run_id"] for run in app.state.runs] == [run["run_id"] for run in (
            sorted(sorted(runs, key=lambda r: r["run_id"]), key=lambda r: datetime.fromisoformat(r["updated_at"]),
                   reverse=True) if order == "updated" else PagedReplies(runs).runs)]
        assert (status, headers, body) == posted(app, "/model", {}) and checked, order
    assert {"ünïcödé 日本語 🚀 \u2028\u2029 \ufffd", "\x00\x01\x1f\x7f", None} <= {r["reason"] for r in runs}


def test_the_whole_answer_holds_a_few_times_its_size_not_nine(monkeypatch):
    """Peak memory of the route's whole answer (its pages read as bus replies, sorted, answered), against the
    answer's size: ~3.4 times at the bound now (the runs' JSON, their sort keys, the joined answer), 10.9 times before
    (every run a dict, then FastAPI's model of each and its encoding; docs/api-paging.md has the figures)."""
    app = route_app()
    monkeypatch.setattr(handlers, "forward", PagedReplies(made_runs(4000)).forward)
    posted(app, "/runs", {"task_id": TASK})  # imports and caches out of the count
    tracemalloc.start()
    try:
        status, _, body = posted(app, "/runs", {"task_id": TASK})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 200 and len(orjson.loads(body)) == 4000
    assert peak < 6 * len(body), (peak, len(body))  # 4.6 times here (a page's dicts weigh more), 10.8 before


def test_a_whole_read_past_its_deadline_is_a_504_telling_to_page(monkeypatch):
    """Without a deadline a whole read of slow pages went on as long as the pages came (each within the request
    timeout), a 1000th page as well as the first. Now past WHOLE_READ_SECONDS (or the route's wait when longer) it is
    the typed 504; a page's own timeout is still its own 504 upstream_timeout."""
    pages = Scheduler(made_runs(3000))

    async def slow(broker, subject, cmd, token, timeout):
        assert timeout == 0.01  # each page's own wait: the route's
        await asyncio.sleep(0.03)
        return await pages.forward(broker, subject, cmd, token, 5.0)

    monkeypatch.setattr(handlers, "forward", slow)
    monkeypatch.setattr(orchestrations, "WHOLE_READ_SECONDS", 0.05)
    with pytest.raises(UpstreamTimeout) as late:
        asyncio.run(orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=TASK), "token", 0.01))
    assert late.value.code == "whole_read_timeout" and 'pass order "created" and limit' in late.value.msg
    assert late.value.status == 504 and len(pages.asked) in (1, 2)  # 3 pages would take 0.09 s
    monkeypatch.setattr(orchestrations, "WHOLE_READ_SECONDS", 1.0)
    assert len(answered(monkeypatch, Scheduler(made_runs(3000)))) == 3000

    async def page_timeout(*args):
        raise UpstreamTimeout("tasks did not answer")

    monkeypatch.setattr(handlers, "forward", page_timeout)
    with pytest.raises(UpstreamTimeout) as page_late:
        asyncio.run(orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=TASK), "token", 5.0))
    assert page_late.value.code == "upstream_timeout"


def test_whole_reads_past_the_slots_wait_then_are_a_429_with_retry_after(monkeypatch):
    """More than WHOLE_READS reading more than a page at once in a gateway process: the next waits for a slot
    WHOLE_READ_QUEUE_SECONDS, then is the typed 429 with Retry-After (each held up to ~3 times 32 MiB and their pages'
    decoding shared the event loop; before, any number read at once). A list of one page takes no slot; a slot is
    given back when its read ends, in error too."""
    monkeypatch.setattr(orchestrations, "WHOLE_READS", 1)
    monkeypatch.setattr(orchestrations, "WHOLE_READ_QUEUE_SECONDS", 0.05)
    many, few, go_on = Scheduler(made_runs(1500)), Scheduler(made_runs(10)), asyncio.Event()

    async def forward(broker, subject, cmd, token, timeout):
        if cmd.task_id == TASK:
            if cmd.cursor is not None and not go_on.is_set():
                await go_on.wait()  # the first whole read holds its slot here
            return await many.forward(broker, subject, cmd.model_copy(update={"task_id": TASK}), token, timeout)
        return await few.forward(broker, subject, cmd.model_copy(update={"task_id": TASK}), token, timeout)

    def read(task_id=TASK):
        return orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=task_id), "token", 5.0)

    async def reads():
        first = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        with pytest.raises(TooManyRequests) as busy:
            await asyncio.wait_for(read(), 2.0)  # before, it waited for the first read: not for ever here
        one_page = await read(uuid.uuid4())  # no slot needed
        go_on.set()
        return busy.value, len(orjson.loads((await first).body)), len(orjson.loads(one_page.body))

    monkeypatch.setattr(handlers, "forward", forward)
    busy, first, one_page = asyncio.run(reads())
    assert (busy.status, busy.code, busy.retry_after, first, one_page) == (429, "too_many_whole_reads", 0.05, 1500, 10)
    assert error_parts(busy)[1]["Retry-After"] == "1"
    monkeypatch.setattr(orchestrations, "WHOLE_RUNS_BYTES", 1000)

    async def after_an_error():
        with pytest.raises(ReplyTooLarge):
            await read()
        monkeypatch.setattr(orchestrations, "WHOLE_RUNS_BYTES", 10**9)
        return len(orjson.loads((await read()).body))

    assert asyncio.run(after_an_error()) == 1500


def test_a_slot_is_given_back_when_its_read_is_cancelled_fails_or_is_late_and_a_cancelled_waiter_takes_none(
        monkeypatch):
    """Every way a whole read that took a slot ends gives it back: a page's error, the client gone (the request's
    task cancelled) while a page is awaited, the deadline; a read cancelled or past its deadline while it waits for a
    slot takes none. Then the loop's slots are all free and a read gets one at once. (The 429 test's read after a 422
    ended before its slot: it showed none of this.)"""
    monkeypatch.setattr(orchestrations, "WHOLE_READS", 1)
    monkeypatch.setattr(orchestrations, "WHOLE_READ_QUEUE_SECONDS", 5.0)
    pages, held, fail = Scheduler(made_runs(1500)), asyncio.Event(), set()

    async def forward(broker, subject, cmd, token, timeout):
        if cmd.cursor is not None:  # a second page: the read holds its slot here
            if cmd.task_id in fail:
                raise UpstreamTimeout("tasks did not answer")
            await held.wait()
        return await pages.forward(broker, subject, cmd.model_copy(update={"task_id": TASK}), token, 5.0)

    def read(task_id=TASK):  # a route's wait under the deadline's, which is the larger of the two
        return orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=task_id), "token", 0.01)

    async def reads():
        slots = lambda: orchestrations._slots[asyncio.get_running_loop()]  # noqa: E731
        fail.add(failing := uuid.uuid4())
        with pytest.raises(UpstreamTimeout):  # a page's error after the slot was taken
            await read(failing)
        holder = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        assert slots().locked()
        waiter = asyncio.create_task(read())  # waits for the slot
        await asyncio.sleep(0.01)
        waiter.cancel()  # its client went away
        await asyncio.gather(waiter, return_exceptions=True)
        monkeypatch.setattr(orchestrations, "WHOLE_READ_SECONDS", 0.05)
        with pytest.raises(UpstreamTimeout) as late:  # past the deadline while it waits for the slot
            await read()
        assert late.value.code == "whole_read_timeout"
        holder.cancel()  # the client of the read holding the slot went away while a page was awaited
        await asyncio.gather(holder, return_exceptions=True)
        assert not slots().locked()
        with pytest.raises(UpstreamTimeout):  # past the deadline while a page is awaited, holding the slot
            await read()
        monkeypatch.setattr(orchestrations, "WHOLE_READ_SECONDS", 30.0)
        assert not slots().locked()
        held.set()
        return len(orjson.loads((await asyncio.wait_for(read(), 1.0)).body))

    monkeypatch.setattr(handlers, "forward", forward)
    assert asyncio.run(reads()) == 1500


def test_a_deadline_whose_cancel_a_page_swallowed_still_ends_the_read(monkeypatch):
    """Python 3.11's asyncio.wait_for (nats-py's request waits so) returns the reply when it came in the loop pass
    the task was cancelled in, and the cancel is gone: the deadline's timeout had fired, so the read went on with no
    deadline through every page still to come, each within its own timeout. Now it is the 504 at the next page."""
    pages = Scheduler(made_runs(5000))

    async def swallowing(broker, subject, cmd, token, timeout):
        try:
            await asyncio.sleep(0.03)
        except asyncio.CancelledError:
            pass  # as wait_for when its future is done as it is cancelled
        return await pages.forward(broker, subject, cmd, token, 5.0)

    monkeypatch.setattr(handlers, "forward", swallowing)
    monkeypatch.setattr(orchestrations, "WHOLE_READ_SECONDS", 0.05)
    with pytest.raises(UpstreamTimeout) as late:
        asyncio.run(orchestrations.forward_runs(None, "tasks.runs", ListTaskRuns(task_id=TASK), "token", 0.01))
    assert late.value.code == "whole_read_timeout" and len(pages.asked) == 2  # not all 5 pages
