"""Business logic of the task_scheduler service: orchestrations, tasks and task runs (the seed's section 11).

Every command checks the caller's token and workspace membership; a task, run or orchestration of a workspace
the caller is not in does not exist for them (404). The scheduler loop (scheduler.py) turns schedule points
and queued runs into sandboxed processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from croniter import CroniterBadDateError, croniter

from services.task_scheduler import packaging, store
from shared import __version__, paging
from shared.authz import MembershipLookup, Principal, require_member, require_user
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.messages.base import INT32
from shared.messages.tasks import (
    MAX_LOG_PAGE,
    GetRunLogs,
    GetTasksByOrchSha,
    LastRun,
    ListTaskRuns,
    OrchestrationCreated,
    OrchestrationRecord,
    Orchestrations,
    RunLogs,
    RunTaskOnce,
    RunTaskScheduled,
    TaskCreated,
    TaskIds,
    TaskRecord,
    TaskRunRecord,
    TaskRuns,
    Tasks,
    UploadOrchestration,
)
from shared.objectstore import BUCKET_ORCHESTRATIONS, ObjectStore, content_key
from shared.settings import TaskSettings
from shared.staging import check_staged

log = logging.getLogger("railyard.task_scheduler")

MAX_ARGS_BYTES = 64 * 1024
LAST_RUNS = 10


@dataclass
class Deps:
    """What the handlers use."""

    pool: asyncpg.Pool
    objects: ObjectStore
    settings: TaskSettings
    work_root: Path
    membership: Callable[[str | None], MembershipLookup]
    publish: Callable[[str, Any], Awaitable[None]]
    # called after a commit that wrote a run's events to the outbox (store.add_run_event): the scheduler's outbox
    # sends them now (app.py)
    events_committed: Callable[[], None] = lambda: None


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat()


def log_line(at: datetime, stream: str, partial: bool, line: str) -> str:
    """A log line in the seed's (CRI) format: `<RFC 3339 time> <stream> <F|P> <text>`."""
    return f"{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}Z {stream} {'P' if partial else 'F'} {line}"


# --- orchestrations ----------------------------------------------------------------------------------------------

async def upload_orchestration(deps: Deps, principal: Principal, token: str | None,
                               cmd: UploadOrchestration) -> OrchestrationCreated:
    """Check the staged zip; if it passes, keep it under its sha256 and record the orchestration (ready at once
    without requirements, packaging until its environment is installed otherwise). A refused zip leaves nothing.
    Only the uploader may consume their staged zip (shared/staging.py): another user's is refused (403) before
    anything is checked or deleted, so a failed membership check deletes the caller's own upload only."""
    check_staged(cmd.staged_key, principal)
    try:
        await require_member(deps.membership(token), principal, cmd.workspace_id)
        inbox = deps.work_root / "uploads"
        inbox.mkdir(parents=True, exist_ok=True)
        local = inbox / f"{uuid.uuid4()}.zip"
        try:
            sha, size = await deps.objects.download_to(BUCKET_ORCHESTRATIONS, cmd.staged_key, local)
            checked = await asyncio.to_thread(packaging.check_zip, local, deps.settings)
            key = content_key(sha)
            if not await deps.objects.exists(BUCKET_ORCHESTRATIONS, key):
                await deps.objects.copy(BUCKET_ORCHESTRATIONS, cmd.staged_key, key)
        finally:
            local.unlink(missing_ok=True)
    finally:
        await deps.objects.delete(BUCKET_ORCHESTRATIONS, cmd.staged_key)
    orch_id = uuid.uuid4()
    async with deps.pool.acquire() as conn, conn.transaction():
        requirements_sha = status = None
        if checked.requirements is not None and packaging.check_requirements(checked.requirements):
            requirements_sha = packaging.requirements_sha(checked.requirements)
            # a failed install is tried again by a new upload of the same file (the failure may have been the index)
            await conn.execute("UPDATE envs SET status = 'installing', heartbeat_at = NULL, reason = NULL "
                               "WHERE requirements_sha = $1 AND status = 'failed'", requirements_sha)
            status = await store.ensure_env(conn, requirements_sha, checked.requirements)
        await store.insert_orchestration(
            conn, id=orch_id, workspace_id=cmd.workspace_id, sha=sha, name=cmd.name, file_name=cmd.file_name,
            entrypoint=checked.entrypoint, requirements_sha=requirements_sha, owner_id=principal.user_id,
            status="ready" if status in (None, "ready") else "packaging", reason=None)
    log.info("orchestration %s (%s, %d bytes, entrypoint %s) uploaded to workspace %d", orch_id, sha[:12], size,
             checked.entrypoint, cmd.workspace_id)
    return OrchestrationCreated(id=orch_id)


def _orchestration_record(row: asyncpg.Record) -> OrchestrationRecord:
    return OrchestrationRecord(
        id=row["id"], sha=row["sha"], name=row["name"], file_name=row["file_name"], task_id=row["packaging_id"],
        owner_id=row["owner_id"], workspace_id=row["workspace_id"], status=row["status"], reason=row["reason"],
        created_at=iso(row["created_at"]), updated_at=iso(row["updated_at"]))


async def list_orchestrations(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                              limit: int | None = None, cursor: str | None = None) -> Orchestrations:
    """A workspace's orchestrations, oldest first: all, or a page (shared/paging.py; the cursor: created_at, id)."""
    after = paging.after_key(cursor, "orchestration/list")
    await require_member(deps.membership(token), principal, workspace_id)
    rows = await store.orchestrations(deps.pool, workspace_id, after, None if limit is None else limit + 1)
    records, next_cursor = await paging.page(rows, limit, _orchestration_record, paging.key_cursor)
    return Orchestrations(orchestrations=records, next_cursor=next_cursor)


# --- tasks -------------------------------------------------------------------------------------------------------

CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
"""The macros a Kubernetes CronJob takes for a whole schedule (croniter reads them: '@hourly' is '0 * * * *')."""


# croniter's random field (R, R(0-29), R/5): every croniter built from the schedule draws another value, and the
# scheduler builds one at each pass (scheduler.due_point): "R * * * *" queued a run of some minute, then took another
# minute for the next point (a point in the future queued at once, or a point repeated or left out). Not cron's, nor
# a Kubernetes CronJob's. A task stored with one before December 2026 stops at its next point (scheduler.fire_due:
# its schedule cannot be evaluated).
RANDOM_FIELD = re.compile(r"^r(\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)


def check_schedule(schedule: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week, as Kubernetes CronJobs read it), or
    6 fields whose last is seconds (Railyard), or one of CRON_MACROS; InvalidRequest otherwise. Times are UTC: a
    CRON_TZ=/TZ= prefix (which Kubernetes refuses in a CronJob's schedule too) is refused saying so."""
    fields = schedule.split()
    if fields and fields[0].upper().startswith(("CRON_TZ=", "TZ=")):
        raise InvalidRequest(f"schedule {schedule!r}: time zones are not supported ({fields[0].split('=')[0]}=): "
                             "schedules are UTC; give the times in UTC, without the prefix", code="invalid_schedule")
    # an '@' word is a macro whatever follows it: '@every 5m' (robfig/cron's interval, not cron's nor a CronJob's) was
    # refused as "has 2 fields; cron needs 5", which named neither the macro nor the ones taken. croniter decides
    # (is_valid): it reads the CronJob macros alone, nothing after them, and no '@every' nor '@reboot'
    if fields and fields[0].startswith("@"):
        if len(fields) > 1 or fields[0].lower() not in CRON_MACROS or not croniter.is_valid(fields[0].lower()):
            every = (" ('@every <interval>' is not cron: give it as fields, e.g. '*/5 * * * *' for every 5 minutes)"
                     if fields[0].lower() == "@every" else "")
            raise InvalidRequest(f"schedule {schedule!r} is not a cron macro Railyard reads: "
                                 f"{', '.join(CRON_MACROS)} (alone), or 5 fields: minute hour day-of-month month "
                                 f"day-of-week (e.g. '*/5 * * * *'), or 6 with seconds last{every}",
                                 code="invalid_schedule")
        return fields[0].lower()
    if len(fields) not in (5, 6):
        raise InvalidRequest(f"schedule {schedule!r} has {len(fields)} field{'' if len(fields) == 1 else 's'}; "
                             "cron needs 5: minute hour day-of-month month day-of-week (e.g. '*/5 * * * *'), or 6 "
                             "with seconds last, or a macro such as '@hourly'", code="invalid_schedule")
    if any(RANDOM_FIELD.match(part) for f in fields for part in f.split(",")):
        raise InvalidRequest(f"schedule {schedule!r} has a random field (R): each reading of it draws another time, so"
                             " its points are not fixed; give the minute, hour, ... (e.g. '17 * * * *')",
                             code="invalid_schedule")
    if not croniter.is_valid(" ".join(fields)):
        raise InvalidRequest(f"schedule {schedule!r} is not a valid cron expression (minute hour day-of-month "
                             "month day-of-week)", code="invalid_schedule")
    try:  # valid fields may name no date at all ('0 0 31 2 *'): croniter raised when the task was stored, a 500
        next_point(" ".join(fields), datetime.now(UTC))
    except CroniterBadDateError:
        raise InvalidRequest(f"schedule {schedule!r} never fires: no date matches it (e.g. 31 February)",
                             code="invalid_schedule") from None
    return " ".join(fields)


def next_point(schedule: str, after: datetime) -> datetime:
    """The first schedule point strictly after `after` (UTC)."""
    return croniter(schedule, after.astimezone(UTC)).get_next(datetime)


async def _orchestration_for_task(deps: Deps, workspace_id: int, orch_id: uuid.UUID) -> asyncpg.Record:
    orch = await store.orchestration(deps.pool, orch_id)
    if orch is None or orch["workspace_id"] != workspace_id:
        raise NotFound(f"orchestration {orch_id} not found in workspace {workspace_id}")
    if orch["status"] == "packaging":
        raise Conflict(f"orchestration {orch_id} is still packaging (installing its requirements); "
                       "create the task once orchestration/list shows it ready", code="orchestration_not_ready")
    if orch["status"] != "ready":
        raise Conflict(f"orchestration {orch_id} failed packaging and cannot run: {orch['reason'] or 'unknown'}",
                       code="orchestration_not_ready")
    return orch


def _timeout(deps: Deps, timeout: int | None) -> int:
    if timeout is None:
        return deps.settings.default_timeout
    if timeout > deps.settings.max_timeout:
        raise InvalidRequest(f"timeout {timeout} s is above the {deps.settings.max_timeout} s allowed")
    return timeout


def _args(args: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(args)) > MAX_ARGS_BYTES:
        raise InvalidRequest(f"json (the task's arguments) is larger than {MAX_ARGS_BYTES} bytes")
    return args


async def run_once(deps: Deps, principal: Principal, token: str | None, cmd: RunTaskOnce) -> TaskCreated:
    """A task that runs once, now (or when its workspace has room)."""
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    timeout, args = _timeout(deps, cmd.timeout), _args(cmd.args)
    orch = await _orchestration_for_task(deps, cmd.workspace_id, cmd.orch_id)
    task_id = cmd.id or uuid.uuid4()
    async with deps.pool.acquire() as conn, conn.transaction():
        if await _insert_or_same(conn, task_id, cmd, False, lambda: store.insert_task(
                conn, id=task_id, workspace_id=cmd.workspace_id, orch_id=orch["id"], orch_sha=orch["sha"],
                name=cmd.name, owner_id=principal.user_id, args=args, timeout_seconds=timeout, schedule=None,
                missed_run_policy=None, next_fire=None)):
            await store.queue_once(conn, task_id, cmd.workspace_id)
    return TaskCreated(id=task_id)


async def _insert_or_same(conn: asyncpg.Connection, task_id: uuid.UUID, cmd: RunTaskOnce | RunTaskScheduled,
                          scheduled: bool,
                          insert: Callable[[], Awaitable[bool]]) -> bool:
    """Insert the task (True), or find that a task of the caller's chosen id exists (False): then it must be the one
    an earlier call of the same command made (its answer lost: that task, no second run; same workspace,
    orchestration and kind), else the id is taken (409; a task of another workspace is not told). A task of that id
    gone between the insert that met it and the read (deleted meanwhile) no longer holds the id: inserted again, once;
    409 if that meets one again and it is gone again."""
    for _ in range(2):
        if await insert():
            return True
        existing = await store.task(conn, task_id)
        if existing is None:
            continue
        if (existing["workspace_id"], existing["orch_id"], existing["schedule"] is not None) != (
                cmd.workspace_id, cmd.orch_id, scheduled):
            raise Conflict(f"task id {task_id} is taken: give another id (or none)", code="task_id_taken")
        return False
    raise Conflict(f"task id {task_id} is being created and deleted by other calls: ask again", code="task_id_taken")


async def run_scheduled(deps: Deps, principal: Principal, token: str | None, cmd: RunTaskScheduled) -> TaskCreated:
    """A task that runs at every point of its cron schedule until killed."""
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    schedule = check_schedule(cmd.schedule)
    timeout, args = _timeout(deps, cmd.timeout), _args(cmd.args)
    orch = await _orchestration_for_task(deps, cmd.workspace_id, cmd.orch_id)
    task_id = cmd.id or uuid.uuid4()
    async with deps.pool.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        await _insert_or_same(conn, task_id, cmd, True, lambda: store.insert_task(
            conn, id=task_id, workspace_id=cmd.workspace_id, orch_id=orch["id"], orch_sha=orch["sha"], name=cmd.name,
            owner_id=principal.user_id, args=args, timeout_seconds=timeout, schedule=schedule,
            missed_run_policy=cmd.missed_run_policy, next_fire=next_point(schedule, now),
            concurrency_policy=cmd.concurrency_policy, max_queued=cmd.max_queued))
    return TaskCreated(id=task_id)


def _task_status(row: asyncpg.Record, runs: list[asyncpg.Record], active: bool | None = None,
                 left_queue: bool = False) -> str:
    """The task's status from its row and its last runs; `active`: whether it has a run queued or running, however
    old (store.with_active_runs; read for killed tasks only), else read from `runs`; `left_queue`: whether a run of
    it older than `runs` was started (store.with_runs_out_of_queue; read for a scheduled task whose last runs are all
    queued only).

    A task is `pending` until a run of it has left the queue, then `started` (or `failed`): seed 001's words,
    "pending, started, and failed", a run's "running: The task has started". Until session 42 a scheduled task read
    `started` as soon as it had made a run, even one still queued for room, while a one-shot task's queued run read
    `pending`. A scheduled task's run left the queue when it was started (given a place in its workspace: its
    `started` column, started_at set, whatever came of it, e.g. its token refused); one replaced by the next point
    while it waited (a replace policy, store.replace_active) ended without leaving it: before, such a run (`failure`)
    counted, and a task whose only run was replaced read `started` with nothing run and its next run queued. A
    one-shot task's run is never replaced (its kill reads `killed`)."""
    if active is None:
        active = any(r["running"] for r in runs)
    if row["killed"]:
        return "pending_kill" if active else "killed"
    if row["schedule"] is not None:
        if row["next_fire"] is None:  # its schedule could not be evaluated (scheduler.fire_due): it makes no runs
            return "failed"
        return "started" if left_queue or any(r["started"] for r in runs) else "pending"
    if not runs or runs[0]["status"] == "queued":
        return "pending"
    return "failed" if runs[0]["status"] == "failure" else "started"


def _task_record(row: asyncpg.Record, runs: list[asyncpg.Record], settings: TaskSettings,
                 active: bool | None = None, left_queue: bool = False) -> TaskRecord:
    args = json.loads(row["args"]) if isinstance(row["args"], str) else row["args"]
    scheduled = row["schedule"] is not None
    return TaskRecord(
        name=row["name"], id=row["id"], orch_id=row["orch_id"], image="railyard-task-local", image_tag=__version__,
        bind_secrets=[],
        extra_env_vars={"ORCH_OWNER_ID": row["owner_id"], "ORCH_SHA": row["orch_sha"], "TASK_ID": str(row["id"])},
        auth_init=True, workspace_id=row["workspace_id"],
        flavor="exec_orch_cron" if scheduled else "exec_orch_oneshot", reap_threshold_secs=row["timeout_seconds"],
        exec_type="cron_job" if scheduled else "job", schedule=row["schedule"],
        missed_run_policy=row["missed_run_policy"], concurrency_policy=row.get("concurrency_policy"),
        max_queued=row.get("max_queued"), status=_task_status(row, runs, active, left_queue), input_data=args,
        killed=row["killed"], created_at=iso(row["created_at"]), updated_at=iso(row["updated_at"]),
        last_runs=[LastRun(run_id=r["id"], status=r["status"], created_at=iso(r["created_at"])) for r in runs])


async def _records(deps: Deps, rows: list[asyncpg.Record]) -> list[TaskRecord]:
    runs = await store.last_runs(deps.pool, [r["id"] for r in rows], LAST_RUNS)
    # a killed task is pending_kill while any run of it is still stopping, not only one of its last LAST_RUNS
    active = await store.with_active_runs(deps.pool, [r for r in rows if r["killed"]])
    # a scheduled task whose last LAST_RUNS runs all wait for room (max_queued above it, or runs replaced while they
    # waited) may have started older ones
    crowded = [r["id"] for r in rows if r["schedule"] is not None and not r["killed"]
               and len(found := runs.get(r["id"], [])) >= LAST_RUNS and not any(x["started"] for x in found)]
    left_queue = await store.with_runs_out_of_queue(deps.pool, crowded) if crowded else set()
    return [_task_record(r, runs.get(r["id"], []), deps.settings, r["id"] in active if r["killed"] else None,
                         r["id"] in left_queue) for r in rows]


async def _visible_task(deps: Deps, principal: Principal, token: str | None, task_id: uuid.UUID) -> asyncpg.Record:
    """The task, if the caller is a member of its workspace; otherwise it does not exist for them."""
    require_user(principal)
    row = await store.task(deps.pool, task_id)
    if row is None or await deps.membership(token)(principal.user_id, row["workspace_id"]) is None:
        raise NotFound(f"task {task_id} not found")
    return row


async def get_task(deps: Deps, principal: Principal, token: str | None, task_id: uuid.UUID) -> TaskRecord:
    row = await _visible_task(deps, principal, token, task_id)
    return (await _records(deps, [row]))[0]


async def tasks_by_orch_sha(deps: Deps, principal: Principal, token: str | None, cmd: GetTasksByOrchSha) -> TaskIds:
    """The tasks of an orchestration sha, in the caller's workspaces only."""
    require_user(principal)
    rows = await store.tasks_by_sha(deps.pool, cmd.sha)
    lookup = deps.membership(token)
    member: dict[int, bool] = {}
    for workspace_id in {r["workspace_id"] for r in rows}:
        member[workspace_id] = await lookup(principal.user_id, workspace_id) is not None
    return TaskIds(ids=[r["id"] for r in rows if member[r["workspace_id"]]])


async def list_tasks(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                     limit: int | None = None, cursor: str | None = None) -> Tasks:
    """A workspace's tasks, oldest first: all, or a page (shared/paging.py; the cursor: created_at, id)."""
    after = paging.after_key(cursor, "task/list")
    await require_member(deps.membership(token), principal, workspace_id)
    rows = await store.tasks_in(deps.pool, workspace_id, after, None if limit is None else limit + 1)
    shown = rows if limit is None else rows[:limit]
    records = dict(zip((r["id"] for r in shown), await _records(deps, shown), strict=True))  # last runs: one query
    tasks, next_cursor = await paging.page(rows, limit, lambda r: records[r["id"]], paging.key_cursor)
    return Tasks(tasks=tasks, next_cursor=next_cursor)


async def kill_task(deps: Deps, principal: Principal, token: str | None, task_id: uuid.UUID) -> TaskRecord:
    """No more runs of the task; a run in progress is stopped (by its supervisor, within a heartbeat)."""
    await _visible_task(deps, principal, token, task_id)
    if await store.kill_task(deps.pool, task_id):
        deps.events_committed()
    return await get_task(deps, principal, token, task_id)


# --- runs --------------------------------------------------------------------------------------------------------

def _run_record(row: asyncpg.Record) -> TaskRunRecord:
    return TaskRunRecord(task=row["task_id"], run_id=row["id"], status=row["status"], exit_code=row["exit_code"],
                         reason=row["reason"], scheduled_for=iso(row["scheduled_for"]),
                         created_at=iso(row["created_at"]), updated_at=iso(row["updated_at"]))


async def list_runs(deps: Deps, principal: Principal, token: str | None, cmd: ListTaskRuns) -> TaskRuns:
    """A task's runs. The seed's answer: most recently updated first, all or the `limit` most recently updated (no
    cursor). With order "created": newest first by creation, all or a page (`limit`; shared/paging.py), the cursor
    its last run's created_at and id: a run's updated_at changes while the list is paged (queued, running, done),
    which would move it across a keyset cursor, so it is skipped or seen twice; its creation does not."""
    if cmd.order != "created" and cmd.cursor is not None:
        raise InvalidRequest('cursor: task/list_task_runs pages in order "created" only: pass order "created" with '
                             "limit and cursor")
    after = paging.after_key(cmd.cursor, "task/list_task_runs")
    await _visible_task(deps, principal, token, cmd.task_id)
    status = None if cmd.status == "all" else cmd.status
    if cmd.order != "created":  # the seed's `limit` is the number of runs answered, not a page
        return TaskRuns(runs=[_run_record(r) for r in await store.runs_of(deps.pool, cmd.task_id, status, cmd.limit)])
    rows = await store.runs_of(deps.pool, cmd.task_id, status, None if cmd.limit is None else cmd.limit + 1, after,
                               paged=True)
    runs, next_cursor = await paging.page(rows, cmd.limit, _run_record, paging.key_cursor)
    return TaskRuns(runs=runs, next_cursor=next_cursor)


async def run_logs(deps: Deps, principal: Principal, token: str | None, cmd: GetRunLogs) -> RunLogs:
    """A run's log lines (the last `lines` of them), while it runs and after."""
    require_user(principal)
    run = await store.run(deps.pool, cmd.id)
    if run is None or await deps.membership(token)(principal.user_id, run["workspace_id"]) is None:
        raise NotFound(f"task run {cmd.id} not found")
    if cmd.limit is None and cmd.cursor is None:
        rows = await store.logs(deps.pool, cmd.id, cmd.lines)
        return RunLogs(logs=[log_line(r["at"], r["stream"], r["partial"], r["line"]) for r in rows],
                       task=run["task_id"], status=run["status"])
    # pages from the first line (docs/api-paging.md): the cursor is the sequence number the next page starts at
    if cmd.lines is not None:
        raise InvalidRequest("get_logs_for_run takes lines (the last N) or limit/cursor (pages from the first line), "
                             "not both")
    start = min(paging.after(cmd.cursor, "task/get_logs_for_run") or 0, INT32[1])  # seq: a PostgreSQL integer
    # a cursor passed back without `limit` is a page too (MAX_LOG_PAGE, 4 MiB): before, it read every line from the
    # cursor in one reply, the 422 reply_too_large past 8 MiB the pages are there to avoid
    limit = MAX_LOG_PAGE if cmd.limit is None else cmd.limit
    rows = await store.logs_from(deps.pool, cmd.id, start, limit + 1)
    lines, next_cursor = await paging.page(
        rows, limit, lambda r: log_line(r["at"], r["stream"], r["partial"], r["line"]),
        lambda r: str(r["seq"] + 1))
    if next_cursor is None and run["status"] in ("queued", "running"):
        # the status is read before the lines: a run still going writes its next lines after these, so a follower
        # gets the cursor to ask from (a finished run's last page has none: every line was read)
        next_cursor = str(rows[len(lines) - 1]["seq"] + 1) if lines else str(start)
    return RunLogs(logs=lines, task=run["task_id"], status=run["status"], next_cursor=next_cursor)
