"""Orchestration and task routes of the gateway (the seed's section 11): the JSON route table, forwarded as
commands like every other JSON route, and the multipart upload.

An upload is staged in object storage (`staging/<user id>/<uuid>` in the orchestrations bucket, shared/staging.py)
and the task scheduler is told the key: it takes it from that user only, checks the caller and the zip, keeps it
under its sha256 or refuses it, and deletes the staged copy either way."""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.gateway import handlers, json_body
from shared import paging, subjects
from shared.authz import Principal
from shared.bus import byte_size
from shared.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RailyardError,
    ReplyTooLarge,
    TooManyRequests,
    UpstreamTimeout,
    validation_message,
)
from shared.messages import tasks as t
from shared.objectstore import BUCKET_ORCHESTRATIONS
from shared.service import Runtime
from shared.staging import staged_key

UPLOAD_PATH = "/v1/api/orchestration/upload"

# (path, subject, request model, reply model, summary[, unwrap]) rows for http.py's JSON route table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/orchestration/list", subjects.TASKS_ORCHESTRATIONS_LIST, t.ListOrchestrations, list[t.OrchestrationRecord],
     "List a workspace's orchestrations (status: packaging, ready or failed with the reason).", "orchestrations"),
    ("/task/run_once", subjects.TASKS_RUN_ONCE, t.RunTaskOnce, t.TaskCreated,
     "Run an orchestration once (json: the run's task_args(); timeout in seconds)."),
    ("/task/run_scheduled", subjects.TASKS_RUN_SCHEDULED, t.RunTaskScheduled, t.TaskCreated,
     "Run an orchestration on a cron schedule (minute hour day-of-month month day-of-week, in UTC) until killed "
     "(concurrency_policy allow, forbid or replace: what a point does while a run of the task is queued or running)."),
    ("/task/get_by_id", subjects.TASKS_GET, t.GetTask, t.TaskRecord, "Get a task with its last runs."),
    ("/task/get_tasks_by_orch_sha", subjects.TASKS_BY_ORCH_SHA, t.GetTasksByOrchSha, t.TaskIds,
     "The ids of the tasks of an orchestration sha."),
    ("/task/list", subjects.TASKS_LIST, t.ListTasks, list[t.TaskRecord], "List a workspace's tasks.", "tasks"),
    ("/task/kill", subjects.TASKS_KILL, t.KillTask, t.TaskRecord,
     "Kill a task: no new runs; a run in progress is stopped."),
    ("/task/list_task_runs", subjects.TASKS_LIST_RUNS, t.ListTaskRuns, list[t.TaskRunRecord],
     "A task's runs, most recently updated first.", "runs"),
    ("/task/get_logs_for_run", subjects.TASKS_RUN_LOGS, t.GetRunLogs, t.RunLogs,
     "A task run's log lines ('<RFC 3339 time> stdout F <line>'), the last `lines` of them."),
]


WHOLE_RUNS_BYTES = 32 * 1024 * 1024
"""JSON bytes of a task's runs the gateway reads for task/list_task_runs asked whole (4 bus replies): ~110,000 runs
without a reason (a minute's schedule for 11 weeks), fewer with long ones. Held as each run's JSON bytes and joined
(`_WholeRuns`), ~3 times the answer's size at the peak (docs/api-paging.md has the figures)."""

WHOLE_READS = 2
"""Whole reads of more than a page at once per gateway process (`_slots`): each holds up to ~3 times WHOLE_RUNS_BYTES
(~100 MiB at the bound) and its pages' decoding runs on the event loop that serves inference, so two at once, as many
as the reference machine's cores; another waits WHOLE_READ_QUEUE_SECONDS for a slot, then is the 429."""

WHOLE_READ_QUEUE_SECONDS = 5.0
"""Seconds a whole read waits for one of the WHOLE_READS slots (a read at the bound should take a few seconds)
before its 429 `too_many_whole_reads` with Retry-After (the same seconds)."""

WHOLE_READ_SECONDS = 30.0
"""Seconds a whole read may take from its first page to its answer (its slot's wait included), or the route's own
wait when longer: then the 504 `whole_read_timeout` telling to page. Under the SDK's 60 s for the route, so the
caller reads why instead of a dropped connection; a read at the bound should take a few seconds (115 pages of
~20-30 ms, estimated)."""

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
"""Each event loop's WHOLE_READS slots (one loop per gateway process; tests run several)."""


_EPOCH, _MICROSECOND, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1), 2**62


class _WholeRuns:
    """The runs read, each as its JSON bytes (orjson's: the bytes FastAPI's check and encoding against
    TaskRunRecord wrote for the scheduler's runs, a test compares them) with its sort key when the order is the
    update order; the page's dicts are dropped as it is read. Answered as a JSON list joined from those bytes: the
    route's response is not checked against its model again (as users/query's encoded answer), which held ~9 times the
    answer and took ~1.5 s of the event loop at the bound."""

    def __init__(self, by_update: bool) -> None:
        self.by_update, self.runs, self.keys, self.size = by_update, [], [], 0

    def add(self, runs: list[dict[str, Any]]) -> None:
        for run in runs:  # a copy of orjson's bytes: they hold its 4 KiB buffer (115,000 runs: 450 MiB, not 30)
            self.runs.append(encoded := memoryview(orjson.dumps(run)).tobytes())
            self.size += len(encoded) + 1
            if self.by_update:  # the scheduler's ORDER BY updated_at DESC, id (PostgreSQL's uuid order: its text's)
                since = (datetime.fromisoformat(run["updated_at"]) - _EPOCH) // _MICROSECOND
                self.keys.append(f"{_LATEST - since:019d}{run['run_id']}")  # one str: sorts 4 times faster

    def answer(self) -> Response:
        runs = self.runs
        if self.by_update:
            order = sorted(range(len(runs)), key=self.keys.__getitem__)
            self.keys = []
            runs = [runs[i] for i in order]
        self.runs = []
        return Response(b"[" + b",".join(runs) + b"]", media_type="application/json")


async def forward_runs(broker: Any, subject: str, command: t.ListTaskRuns, token: str,
                       timeout: float) -> dict | Response:
    """task/list_task_runs asked whole (no `limit`): the seed's answer is every run of the task, which past ~25,000
    runs (a schedule every minute for 17 days) is more than a bus reply carries (8 MiB) and was the 422
    reply_too_large. So the gateway reads them a page at a time across bus replies (order "created", 1000 a page:
    keyset pages that neither skip nor repeat a run while runs are added or updated; one request when they fit a
    page) and answers them in the order asked: by creation, as read, or (the seed's) most recently updated first, as
    the scheduler's SQL sorts them (updated_at descending, then run id). A run updated while the pages are read is
    answered once, as its page read it. The answer is the JSON bytes of the runs (`_WholeRuns`). Past
    WHOLE_RUNS_BYTES: 422 reply_too_large, telling to page; past WHOLE_READ_SECONDS: 504 whole_read_timeout; more
    than WHOLE_READS reading more than a page at once: the next waits, then 429 too_many_whole_reads. A `limit`, or
    a cursor without order "created" (a 400 there), is forwarded as it is."""
    if command.limit is not None or (command.cursor is not None and command.order != "created"):
        return await handlers.forward(broker, subject, command, token, timeout)
    deadline = asyncio.timeout(seconds := max(WHOLE_READ_SECONDS, timeout))
    try:
        async with deadline:
            return await _read_whole(broker, subject, command, token, timeout, deadline)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise UpstreamTimeout(f"task/list_task_runs asked whole took more than the {seconds:g} s the gateway gives "
                              f"it: {t.RUNS_PAGES_HINT}", code="whole_read_timeout") from None


async def _read_whole(broker: Any, subject: str, command: t.ListTaskRuns, token: str, timeout: float,
                      deadline: asyncio.Timeout) -> Response:
    whole, cursor, seen, slots = _WholeRuns(command.order != "created"), command.cursor, set(), None
    try:
        while True:
            page = await handlers.forward(broker, subject, command.model_copy(
                update={"order": "created", "limit": paging.MAX_PAGE, "cursor": cursor}), token, timeout)
            whole.add(page["runs"])
            if (cursor := page.get("next_cursor")) is None:
                return whole.answer()
            if deadline.expired():  # its cancel was swallowed: Python 3.11's wait_for (the bus request's) answers a
                raise TimeoutError  # reply that came as it was cancelled, and the read went on with no deadline
            del page
            if whole.size > WHOLE_RUNS_BYTES:
                raise ReplyTooLarge(f"the task's runs are more than the {byte_size(WHOLE_RUNS_BYTES)} "
                                    f"task/list_task_runs answers whole: {t.RUNS_PAGES_HINT}")
            if cursor in seen:  # a list that does not advance (shared.paging.pages)
                raise paging.RepeatedCursor(f"task/list_task_runs answered cursor {cursor!r} again")
            seen.add(cursor)
            if slots is None:  # more than a page: one of this process's WHOLE_READS slots
                slots = await _slot()
    finally:
        if slots is not None:
            slots.release()


async def _slot() -> asyncio.Semaphore:
    """One of the running loop's WHOLE_READS slots, taken (the caller releases it), or the 429 once none frees up
    within WHOLE_READ_QUEUE_SECONDS."""
    loop = asyncio.get_running_loop()
    if (slots := _slots.get(loop)) is None:
        slots = _slots[loop] = asyncio.Semaphore(WHOLE_READS)
    try:
        async with asyncio.timeout(WHOLE_READ_QUEUE_SECONDS):
            await slots.acquire()
    except TimeoutError:
        raise TooManyRequests(f"{WHOLE_READS} task/list_task_runs asked whole are being read by this gateway: try "
                              f"again shortly, or {t.RUNS_PAGES_HINT}", retry_after=WHOLE_READ_QUEUE_SECONDS,
                              code="too_many_whole_reads") from None
    return slots


FORWARDS = {"/task/list_task_runs": forward_runs}
"""Routes of JSON_ROUTE_SPECS whose command is not forwarded as one request (http.py's Route.forward)."""


def add_orchestration_routes(app: FastAPI, runtime: Runtime, user_caller: Any, bearer_token: Any) -> None:
    """The multipart upload route (the JSON ones come from JSON_ROUTE_SPECS)."""
    settings = runtime.settings
    timeout = settings.nats.request_timeout

    @app.post(UPLOAD_PATH, tags=["orchestration"], response_model=t.OrchestrationCreated)
    async def upload_orchestration(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Upload an orchestration: multipart with a `file` part (the zip) and a `metadata` JSON part
        (workspace_id, optional name)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.tasks.max_zip_bytes + 1024 * 1024:
            raise PayloadTooLarge(f"the orchestration zip is larger than {settings.tasks.max_zip_bytes} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":  # its form was empty: the answer named a missing 'metadata' part
            sent = kind or "a body without a Content-Type"
            raise InvalidRequest("orchestration/upload takes multipart/form-data (a 'file' part with the zip and a "
                                 f"'metadata' part with {{\"workspace_id\": ...}}), not {sent}")
        form = await request.form(max_files=2, max_fields=10)  # the seed sends metadata as a file part too
        raw = form.get("metadata")
        if raw is None:
            raise InvalidRequest("the multipart body needs a 'metadata' part with {\"workspace_id\": ...}")
        try:
            metadata = json_body.loads(raw if isinstance(raw, str) else await raw.read(), "metadata")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("the 'metadata' part is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise InvalidRequest("the 'metadata' part must be a JSON object")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("the multipart body needs a 'file' part with the orchestration zip")
        if upload.size is not None and upload.size > settings.tasks.max_zip_bytes:
            raise PayloadTooLarge(f"the orchestration zip is larger than {settings.tasks.max_zip_bytes} bytes")
        try:
            command = t.UploadOrchestration.model_validate(
                {"file_name": upload.filename or "orchestration.zip", **metadata, "staged_key": "staging/"})
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors(), "metadata")) from None
        json_body.refuse_lax_scalars(metadata, command, "metadata")
        staged = staged_key(principal)  # the task scheduler takes it from this user and token scope only
        size = upload.size if upload.size is not None else -1
        await runtime.objects.put_stream(BUCKET_ORCHESTRATIONS, staged, upload.file, length=size)
        command = command.model_copy(update={"staged_key": staged})
        try:
            return await handlers.forward(runtime.broker, subjects.TASKS_ORCHESTRATIONS_UPLOAD, command,
                                          bearer_token(request), timeout + 60)
        except RailyardError as exc:
            if exc.code in ("upstream_timeout", "unavailable"):  # the scheduler never saw it: clean up here
                await runtime.objects.delete(BUCKET_ORCHESTRATIONS, staged)
            raise
