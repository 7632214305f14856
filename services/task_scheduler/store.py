"""SQL of the task_scheduler service (asyncpg, `$n` parameters only), in schema `task_scheduler`.

Every scheduler process works from these tables alone. The claims that make work happen once are here:
a schedule point becomes a run through `INSERT ... ON CONFLICT (task_id, scheduled_for) DO NOTHING` inside the
transaction that moves the task's `next_fire` (rows locked `FOR UPDATE SKIP LOCKED`, so two processes never
handle one task at once); a queued run starts under a per-workspace advisory lock that counts the running ones;
a running run belongs to the process whose heartbeat it carries.

Every write that makes work for a scheduler (a queued run, a new schedule, a kill, a freed place in a workspace, an
environment to install) also sends `NOTIFY` on `WORK_CHANNEL` in its transaction, so the schedulers, which sleep
until the next due point, wake at its commit. A notification carries nothing: a woken scheduler reads the tables.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared import subjects
from shared.messages.tasks import TaskRunFailed, TaskRunQueued, TaskRunStarted, TaskRunSucceeded
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's
from shared.pg_text import no_nul

# advisory lock namespace of "start queued runs of workspace N" (any constant; 'task' in ASCII)
WORKSPACE_LOCK = 0x7461736B
# the channel scheduler processes LISTEN on (scheduler.py): "there may be work", delivered at the writer's commit
WORK_CHANNEL = "railyard_task_scheduler_work"


async def notify_work(conn: asyncpg.Pool | asyncpg.Connection) -> None:
    """Wake the schedulers (at the commit of the transaction this runs in, at once outside one)."""
    await conn.execute("SELECT pg_notify($1, '')", WORK_CHANNEL)


# --- environments and orchestrations ---------------------------------------------------------------------------

async def ensure_env(conn: asyncpg.Connection, requirements_sha: str, requirements: str) -> str:
    """The env row for a requirements file (created as installing when new); its status."""
    await conn.execute(
        "INSERT INTO envs (requirements_sha, requirements, status) VALUES ($1, $2, 'installing') "
        "ON CONFLICT (requirements_sha) DO NOTHING", requirements_sha, requirements)
    status = await conn.fetchval("SELECT status FROM envs WHERE requirements_sha = $1", requirements_sha)
    if status == "installing":
        await notify_work(conn)
    return status


async def insert_orchestration(conn: asyncpg.Connection, *, id: uuid.UUID, workspace_id: int, sha: str,
                               name: str | None, file_name: str, entrypoint: str, requirements_sha: str | None,
                               owner_id: str, status: str, reason: str | None) -> None:
    await conn.execute(
        "INSERT INTO orchestrations (id, workspace_id, sha, name, file_name, entrypoint, requirements_sha, "
        "packaging_id, owner_id, status, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        id, workspace_id, sha, name, file_name, entrypoint, requirements_sha, uuid.uuid4(), owner_id, status, reason)


async def orchestrations(pool: asyncpg.Pool, workspace_id: int, after: tuple[datetime, uuid.UUID] | None = None,
                         limit: int | None = None) -> list[asyncpg.Record]:
    """A workspace's orchestrations, oldest first: those after `after` (a page's cursor: created_at, id), `limit` at
    most (None: all)."""
    return await pool.fetch("SELECT * FROM orchestrations WHERE workspace_id = $1 AND ($2::timestamptz IS NULL OR"
                            " (created_at, id) > ($2, $3::uuid)) ORDER BY created_at, id LIMIT $4", workspace_id,
                            *(after or (None, None)), limit)


async def orchestration(pool: asyncpg.Pool | asyncpg.Connection, orch_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM orchestrations WHERE id = $1", orch_id)


async def claim_env(pool: asyncpg.Pool | asyncpg.Connection, worker: str, lost_after: float) -> asyncpg.Record | None:
    """An environment waiting to be installed (or whose installer stopped beating), now this worker's."""
    return await pool.fetchrow(
        "UPDATE envs SET worker = $1, heartbeat_at = now() WHERE requirements_sha = ("
        "  SELECT requirements_sha FROM envs WHERE status = 'installing' AND (heartbeat_at IS NULL OR "
        "  heartbeat_at < now() - make_interval(secs => $2)) ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING *", worker, lost_after)


async def beat_env(pool: asyncpg.Pool, requirements_sha: str, worker: str) -> bool:
    """Beat an install's claim; whether `worker` still holds it. False: another process claimed the install (this
    one's beats came too late: `supervisor_lost_after`) and may have ended it; the caller stops its install."""
    return bool(await pool.fetchval(
        "UPDATE envs SET heartbeat_at = now() WHERE requirements_sha = $1 AND worker = $2 AND status = 'installing' "
        "AND heartbeat_at IS NOT NULL RETURNING true", requirements_sha, worker))


@dataclass(frozen=True)
class EnvEnd:
    """finish_env's answer, true when the end is recorded (written now, or there already); else what it found: the
    environment's status and claimant (`worker`) then, None if it is gone."""

    recorded: bool
    status: str | None = None
    worker: str | None = None
    claimed: bool = True  # heartbeat_at set; an environment set to be installed again is nobody's until claimed

    def __bool__(self) -> bool:
        return self.recorded


async def finish_env(pool: asyncpg.Pool, requirements_sha: str, worker: str, ok: bool, reason: str | None) -> EnvEnd:
    """The environment is ready (or failed): so are the orchestrations waiting on it; only if `worker` still holds
    the install's claim (false, nothing written, with what it found: another process claimed it and records its own
    end, or, for a retry, an earlier attempt recorded it and the environment was set to be installed again). Before, any
    installer's end was written: one whose claim was taken over recorded it over the new claimant's (`ready` while
    that one was still installing, `failed` over its `ready`). True as well when this worker's end is there already
    (an earlier attempt whose answer was lost: nothing is written twice). `heartbeat_at IS NOT NULL`: a failed
    environment set to be tried again (handlers.upload_orchestration) is nobody's until claimed, though its `worker`
    is still the last one's. The reason quotes the installer's output (a package's build may print anything): kept
    without NULs (shared/pg_text.py)."""
    status = "ready" if ok else "failed"
    reason = None if reason is None else no_nul(reason)
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE envs SET status = $3, reason = $4, updated_at = now() WHERE requirements_sha = $1 AND worker = $2 "
            "AND status = 'installing' AND heartbeat_at IS NOT NULL RETURNING true", requirements_sha, worker, status,
            reason)
        if not done:
            row = await conn.fetchrow("SELECT status, worker, heartbeat_at IS NOT NULL AS claimed FROM envs "
                                      "WHERE requirements_sha = $1", requirements_sha)
            if row is None:
                return EnvEnd(False)
            return EnvEnd((row["worker"], row["status"]) == (worker, status), row["status"], row["worker"],
                          row["claimed"])
        await conn.execute("UPDATE orchestrations SET status = $2, reason = $3, updated_at = now() "
                           "WHERE requirements_sha = $1 AND status = 'packaging'", requirements_sha, status, reason)
    return EnvEnd(True, status, worker)


async def env_status(pool: asyncpg.Pool, requirements_sha: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT status, reason FROM envs WHERE requirements_sha = $1", requirements_sha)


# --- tasks -------------------------------------------------------------------------------------------------------

async def insert_task(conn: asyncpg.Connection, *, id: uuid.UUID, workspace_id: int, orch_id: uuid.UUID,
                      orch_sha: str, name: str | None, owner_id: str, args: dict[str, Any], timeout_seconds: int,
                      schedule: str | None, missed_run_policy: str | None, next_fire: datetime | None,
                      concurrency_policy: str | None = None, max_queued: int | None = None) -> bool:
    """Insert the task; whether it was inserted (False: a task of that id exists already, unchanged: a caller's
    chosen id given again, RunTaskOnce.id). `concurrency_policy` and `max_queued` None: allow, QUEUED_PER_TASK."""
    inserted = await conn.fetchval(
        "INSERT INTO tasks (id, workspace_id, orch_id, orch_sha, name, owner_id, args, timeout_seconds, schedule, "
        "missed_run_policy, next_fire, concurrency_policy, max_queued)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT (id) DO NOTHING RETURNING true",
        id, workspace_id, orch_id, orch_sha, name, owner_id, json.dumps(args), timeout_seconds, schedule,
        missed_run_policy, next_fire, concurrency_policy, max_queued)
    if inserted and next_fire is not None:
        await notify_work(conn)  # a point the sleeping schedulers do not know yet
    return bool(inserted)


async def task(pool: asyncpg.Pool | asyncpg.Connection, task_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)


async def tasks_in(pool: asyncpg.Pool, workspace_id: int, after: tuple[datetime, uuid.UUID] | None = None,
                   limit: int | None = None) -> list[asyncpg.Record]:
    """A workspace's tasks, oldest first: those after `after` (a page's cursor: created_at, id), `limit` at most
    (None: all)."""
    return await pool.fetch("SELECT * FROM tasks WHERE workspace_id = $1 AND ($2::timestamptz IS NULL OR"
                            " (created_at, id) > ($2, $3::uuid)) ORDER BY created_at, id LIMIT $4", workspace_id,
                            *(after or (None, None)), limit)


async def tasks_by_sha(pool: asyncpg.Pool, sha: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, workspace_id FROM tasks WHERE orch_sha = $1 ORDER BY created_at, id", sha)


async def last_runs(pool: asyncpg.Pool, task_ids: list[uuid.UUID], per_task: int) -> dict[uuid.UUID, list]:
    """Each task's last `per_task` runs, newest first (created_at DESC, then id: ties in the id's order), whatever
    their status. Per task, `ORDER BY ... LIMIT` in a LATERAL subquery on index runs_task (task_id, created_at DESC;
    an incremental sort puts runs of one created_at in id order): it reads about `per_task` + 1 index entries a task.
    Before, a window function (row_number() OVER (PARTITION BY task_id ...)) read and sorted every run each listed task
    ever had, and runs are kept (docs/orchestrations.md, "Retention"): on PostgreSQL 16, 500 scheduled tasks of 2,000
    finished runs each, task/list took 1.6-2.2 s, and a task/get of a task with 202,000 runs 110-140 ms; now 18-45 ms
    and 0.3 ms (docs/performance.md, item 109). The tasks are read from `tasks` (its primary key): an id given twice
    is answered once, as before; a run's task always exists (foreign key). `running`: queued or running; `started`:
    the run was started (started_at set: running, or ended after its start; a run put back in the queue is not)."""
    rows = await pool.fetch(
        "SELECT r.task_id, r.id, r.status, r.created_at, r.running, r.started FROM tasks t CROSS JOIN LATERAL (SELECT"
        " task_id, id, status, created_at, status IN ('queued', 'running') AS running, started_at IS NOT NULL AS"
        " started FROM runs WHERE runs.task_id = t.id ORDER BY created_at DESC, id LIMIT $2) r"
        " WHERE t.id = ANY($1::uuid[]) ORDER BY r.created_at DESC, r.id",
        task_ids, per_task)
    found: dict[uuid.UUID, list] = {}
    for row in rows:
        found.setdefault(row["task_id"], []).append(row)
    return found


async def with_active_runs(pool: asyncpg.Pool, tasks: list[asyncpg.Record]) -> set[uuid.UUID]:
    """Those of `tasks` (rows with `id` and `workspace_id`) that have a run queued or running, however old: read
    through the workspaces' queued and running runs (indexes runs_queued, runs_running_workspace), not through every
    run the tasks ever had. Before, a killed task's `pending_kill` was read from its last LAST_RUNS runs only: a
    long run with 10 later runs read `killed` while it was still being stopped."""
    if not tasks:
        return set()
    ids, workspaces = [t["id"] for t in tasks], list({t["workspace_id"] for t in tasks})
    rows = await pool.fetch(
        "SELECT task_id FROM runs WHERE workspace_id = ANY($2::bigint[]) AND status = 'running'"
        " AND task_id = ANY($1::uuid[])"
        " UNION SELECT task_id FROM runs WHERE workspace_id = ANY($2::bigint[]) AND status = 'queued'"
        " AND task_id = ANY($1::uuid[])", ids, workspaces)
    return {r["task_id"] for r in rows}


async def with_runs_out_of_queue(pool: asyncpg.Pool, task_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of `task_ids` with a run that left the queue, i.e. was started (started_at set: running, or ended after
    its start; not one replaced while it waited, store.replace_active, which ended without starting): asked only for a
    scheduled task none of whose last runs started (handlers._records), each stopped at its first such run. Before
    (64fd7ec8), any run not `queued` counted, a replaced one too. One probe a task of the partial index
    runs_task_started (migration 009), not a walk back through every replaced run."""
    rows = await pool.fetch("SELECT t.id FROM unnest($1::uuid[]) AS t(id) WHERE EXISTS (SELECT 1 FROM runs"
                            " WHERE runs.task_id = t.id AND runs.started_at IS NOT NULL)", task_ids)
    return {r["id"] for r in rows}


async def kill_task(pool: asyncpg.Pool, task_id: uuid.UUID) -> int:
    """Stop a task: no more schedule points, queued runs fail (with their events.task_run.failed in the outbox, as
    every other end of a run), running ones are stopped by their supervisor. How many queued runs failed."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE tasks SET killed = true, next_fire = NULL, updated_at = now() WHERE id = $1",
                           task_id)
        killed = await conn.fetch(
            "UPDATE runs SET status = 'failure', reason = 'killed before it started', finished_at = now(), "
            "updated_at = now() WHERE task_id = $1 AND status = 'queued' RETURNING *", task_id)
        for run in killed:  # monitoring ends a continuous training at its run's end event; lineage draws it
            await add_run_event(conn, run, "failure", None, run["reason"])
        # task/kill is what its supervisor reads from now on (kill_reason NULL), also for a run a replace flagged and
        # whose supervisor has not acted on that yet: it is ended by this kill, and the run that was to replace it
        # failed above before it started. A supervisor that acted on the replace already keeps that reason (its kill
        # was set then: scheduler.Scheduler._kill). Before, such a run read "replaced by the task's run for ..." though
        # the task was killed and its replacement never ran
        await conn.execute("UPDATE runs SET kill_requested = true, kill_reason = NULL, updated_at = now() "
                           "WHERE task_id = $1 AND status = 'running'", task_id)
        await notify_work(conn)  # the supervisor stops the run at its next pass
    return len(killed)


# --- schedule points ---------------------------------------------------------------------------------------------

async def due_tasks(conn: asyncpg.Connection, limit: int, held: list[uuid.UUID] | None = None) -> list[asyncpg.Record]:
    """Scheduled tasks whose next point has come, locked for this transaction (others skip them); not those `held`
    (the caller leaves them out for a while: scheduler.fire_due)."""
    return await conn.fetch(
        "SELECT id, workspace_id, schedule, missed_run_policy, concurrency_policy, max_queued, next_fire,"
        " now() AS now FROM tasks "
        "WHERE schedule IS NOT NULL AND NOT killed AND next_fire <= now() AND NOT (id = ANY($2::uuid[])) "
        "ORDER BY next_fire LIMIT $1 FOR UPDATE SKIP LOCKED", limit, held or [])


async def fire(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int, point: datetime) -> bool:
    """One run for one schedule point; False when that point already has its run."""
    inserted = await conn.fetchval(
        "INSERT INTO runs (id, task_id, workspace_id, scheduled_for, status) VALUES ($1, $2, $3, $4, 'queued') "
        "ON CONFLICT (task_id, scheduled_for) DO NOTHING RETURNING id", uuid.uuid4(), task_id, workspace_id, point)
    if inserted is not None:
        await notify_work(conn)  # another process may have the room to start it
    return inserted is not None


async def queued_of_task(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int, at_most: int) -> int:
    """How many runs of the task wait to start (`queued`), counted up to `at_most`: read through the workspace's
    queued runs (index runs_queued), not through every run the task ever had."""
    return await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM runs WHERE workspace_id = $2 AND status = 'queued' AND task_id = $1 "
        "LIMIT $3) q", task_id, workspace_id, at_most)


async def active_of_task(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int) -> bool:
    """Whether the task has a run queued or running (through the workspace's queued and running runs: indexes
    runs_queued, runs_running_workspace)."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE workspace_id = $2 AND status = 'running' AND task_id = $1)"
        " OR EXISTS (SELECT 1 FROM runs WHERE workspace_id = $2 AND status = 'queued' AND task_id = $1)",
        task_id, workspace_id)


async def replace_active(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int, point: datetime,
                         reason: str) -> tuple[int, int]:
    """A replace policy's point (scheduler.fire_due), its run queued: under the task's row lock in the pass's
    transaction, the task's other queued runs fail at once with `reason` (and their events.task_run.failed), its
    running ones are flagged to be killed with `reason` as what their supervisor records (kill_reason; one flagged
    already, by task/kill or an earlier point, keeps its own). (queued failed, running flagged)."""
    failed = await conn.fetch(
        "UPDATE runs SET status = 'failure', reason = $4, finished_at = now(), updated_at = now() "
        "WHERE workspace_id = $2 AND status = 'queued' AND task_id = $1 AND scheduled_for IS DISTINCT FROM $3"
        " RETURNING *", task_id, workspace_id, point, reason)
    for run in failed:
        await add_run_event(conn, run, "failure", None, run["reason"])
    flagged = await conn.fetchval(
        "WITH f AS (UPDATE runs SET kill_requested = true, kill_reason = $3, updated_at = now() WHERE workspace_id = $2"
        " AND status = 'running' AND task_id = $1 AND NOT kill_requested RETURNING 1) SELECT count(*) FROM f",
        task_id, workspace_id, reason)
    if flagged:
        await notify_work(conn)  # their supervisors stop them at their next pass
    return len(failed), flagged


async def set_next_fire(conn: asyncpg.Connection, task_id: uuid.UUID, next_fire: datetime) -> None:
    await conn.execute("UPDATE tasks SET next_fire = $2 WHERE id = $1", task_id, next_fire)


async def stop_schedule(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int, point: datetime,
                        reason: str) -> bool:
    """A scheduled task whose schedule cannot be evaluated (scheduler.fire_due): its schedule stops (`next_fire`
    NULL, not killed: what no other path writes, read as the task's status `failed`) and the point that came (its
    stored `next_fire`) gets a run failed at once with `reason`, and that run's events.task_run.failed. In the pass's
    transaction, under the task's row lock; whether the failed run was inserted (False: that point had a run)."""
    await conn.execute("UPDATE tasks SET next_fire = NULL, updated_at = now() WHERE id = $1", task_id)
    run = await conn.fetchrow(
        "INSERT INTO runs (id, task_id, workspace_id, scheduled_for, status, reason, finished_at) "
        "VALUES ($1, $2, $3, $4, 'failure', $5, now()) ON CONFLICT (task_id, scheduled_for) DO NOTHING RETURNING *",
        uuid.uuid4(), task_id, workspace_id, point, no_nul(reason))
    if run is not None:
        await add_run_event(conn, run, "failure", None, run["reason"])
    return run is not None


async def queue_once(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int) -> uuid.UUID:
    run_id = uuid.uuid4()
    await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status) VALUES ($1, $2, $3, 'queued')",
                       run_id, task_id, workspace_id)
    await notify_work(conn)
    return run_id


# --- runs --------------------------------------------------------------------------------------------------------

async def workspaces_waiting(conn: asyncpg.Connection, limit: int | None = None) -> list[int]:
    """The workspaces with queued runs, fairest first: fewest runs running now (in every process), then the oldest
    queued run (the longest wait), then the id. The starting step (scheduler.start_queued) offers each a run in turn
    in this order, so freed places go round the workspaces waiting. Before, `SELECT DISTINCT` answered them in
    ascending id (its sort), and every place freed went to the lowest-id workspace with a backlog: two old workspaces
    with queued long runs held every place of a process, and newer workspaces' runs waited as long as those backlogs
    lasted (audit, session 28). With `limit` (the per-workspace limit), those running that many already are left out:
    start_queued, which counts again under the workspace's lock, would start nothing there, and the starting step
    offered each of them a transaction in every round of every pass (a place freed there sends NOTIFY: the next
    pass sees it)."""
    rows = await conn.fetch(
        "SELECT w.workspace_id FROM (SELECT workspace_id, min(created_at) AS oldest FROM runs WHERE status = 'queued'"
        " GROUP BY workspace_id) w CROSS JOIN LATERAL (SELECT count(*) AS running FROM runs r"
        " WHERE r.workspace_id = w.workspace_id AND r.status = 'running') r"
        " WHERE $1::bigint IS NULL OR r.running < $1::bigint"
        " ORDER BY r.running, w.oldest, w.workspace_id", limit)
    return [r["workspace_id"] for r in rows]


async def start_queued(conn: asyncpg.Connection, workspace_id: int, limit: int, room: int,
                       supervisor: str, *, supervised: list[uuid.UUID] | None = None) -> list[asyncpg.Record] | None:
    """Start the oldest queued runs of a workspace that fit under its limit (and under this process's room);
    one process at a time per workspace (advisory lock), so the limit holds across processes. None when another
    process holds the workspace's lock now. Not those `supervised`: runs the caller still has a task for (scheduler.
    Scheduler.runs), queued again by a put-back of that task whose answer was lost while the task retries it; claimed
    again, that task's retry put back the new claim and its end removed the new claim's supervisor (session 39,
    review of 82fa1e41). They are started once that task has ended, here or by another process."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2::int)", WORKSPACE_LOCK,
                                   workspace_id % 2**31):
            return None
        running = await conn.fetchval("SELECT count(*) FROM runs WHERE workspace_id = $1 AND status = 'running'",
                                      workspace_id)
        free = min(limit - running, room)
        if free <= 0:
            return []
        # started_at is the claim's own moment (clock_timestamp(): after the count above), not now(), the transaction's
        # start: a claim begun before another run's end committed and counting after it recorded a start before that
        # end, as if the workspace had run one more than its limit (tests/integration/test_orchestrations.py's
        # two-at-a-time test compares these records)
        started = await conn.fetch(
            "UPDATE runs SET status = 'running', supervisor = $3, heartbeat_at = now(), started_at = clock_timestamp(),"
            " updated_at = now() WHERE id IN (SELECT id FROM runs WHERE workspace_id = $1 AND status = 'queued' "
            "AND NOT (id = ANY($4::uuid[])) ORDER BY created_at, id LIMIT $2 FOR UPDATE) RETURNING *", workspace_id,
            free, supervisor, supervised or [])
        for run in started:
            await add_run_event(conn, run, "running", None, None)
        return started


async def beat_runs(pool: asyncpg.Pool | asyncpg.Connection, run_ids: list[uuid.UUID],
                    supervisor: str) -> dict[uuid.UUID, str | bool]:
    """Heartbeat this process's runs: the ids beaten (still running under `supervisor`), each with whether its kill
    was requested: False, True (task/kill) or the reason it was asked with (kill_reason: the run was replaced). An id
    asked for and not answered is no longer this supervisor's: it ended, or another process declared it lost
    (fail_lost_runs)."""
    rows = await pool.fetch(
        "UPDATE runs SET heartbeat_at = now() WHERE id = ANY($1::uuid[]) AND supervisor = $2 AND status = 'running' "
        "RETURNING id, kill_requested, kill_reason", run_ids, supervisor)
    return {r["id"]: (r["kill_reason"] or True) if r["kill_requested"] else False for r in rows}


PUT_BACK = "put back in the queue: its main.py never started"
"""The reason of a put-back run's events.task_run.queued (requeue_unstarted); its row's reason stays empty."""
UNCHECKED_PUT_BACK = ("put back in the queue: its claim could not be checked right before its main.py started "
                      "(PostgreSQL did not answer); its main.py never started")
"""The reason of the events.task_run.queued of a run put back for its claim check (requeue_unstarted's
`unchecked_cap`)."""


class RequeueCapped(Exception):
    """requeue_unstarted with `unchecked_cap`: the run was put back for its claim check that many times already."""

    def __init__(self, times: int) -> None:
        super().__init__(f"put back in the queue {times} time{'s' if times != 1 else ''} already for its claim check")
        self.times = times


async def requeue_unstarted(pool: asyncpg.Pool | asyncpg.Connection, run_id: uuid.UUID, supervisor: str, *,
                            unchecked_cap: int | None = None) -> bool | str | None:
    """A run started under `supervisor` whose main.py never started, put back in the queue (`queued`, its supervisor,
    beat and start cleared; its place in its workspace freed): its scheduler stopped before it ran it
    (scheduler.Scheduler._requeued), or, full, could not adopt it (adopt_unanswered). It keeps its `created_at`, so it
    is its workspace's oldest again. Only while it is still this supervisor's and running, and no kill was asked for
    it. False: put back; True or a reason (kill_reason): a kill was asked (task/kill, a replace), nothing written; None:
    no longer this supervisor's running run (declared lost, or put back already by an attempt whose answer was lost).
    Its events.task_run.queued (PUT_BACK its reason) is written with it, in its transaction: a run's events are its
    states, and the lineage service's card reads the latest (before, the card read `running`, from its start's
    events.task_run.started, until the run started again); events.task_run.started is sent again when it starts.
    The caller wakes the outbox (events_committed) when it answers False.

    With `unchecked_cap`: the run is put back because its claim could not be checked right before its main.py
    (scheduler.Scheduler._put_back_unchecked), counted in its `unchecked_requeues`, its event's reason
    UNCHECKED_PUT_BACK; one put back so `unchecked_cap` times already is not, and RequeueCapped is raised (a kill asked
    answers as above first). A stop's put-backs are not counted.

    Never refused for its task's `max_queued`: the run was queued within the bound when its point came, and is not a
    new one. So the task may have, for a while, more than max_queued runs waiting (one more for each run put back);
    a point that comes then makes no run (queued_of_task counts up to the bound: it reads the task full) until the
    runs started bring the queue back under it.

    Under the task's row lock (FOR SHARE), which task/kill (kill_task) and a replace's point (fire_due: due_tasks) hold
    while they fail the task's queued runs and then flag its running ones: a put-back waits for them, then finds the
    run flagged (and, belt and braces, a killed task's run is never put back); or they wait for it, and find the run
    queued. Before, a put-back that committed between their two statements took the run out of both (running for the
    first, queued for the second): it was started again for a killed task (its main.py run after task/kill answered),
    or beside the run that replaced it."""
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await requeue_unstarted(conn, run_id, supervisor, unchecked_cap=unchecked_cap)
    conn = pool
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM tasks WHERE id = (SELECT task_id FROM runs WHERE id = $1) FOR SHARE",
                           run_id)
        counted = unchecked_cap is not None
        back = await conn.fetchrow(
            "UPDATE runs SET status = 'queued', supervisor = NULL, heartbeat_at = NULL, started_at = NULL,"
            " updated_at = now(), unchecked_requeues = unchecked_requeues + $3::int WHERE id = $1 AND supervisor = $2"
            " AND status = 'running' AND NOT kill_requested AND unchecked_requeues < $4::int"
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = runs.task_id AND tasks.killed) RETURNING *",
            run_id, supervisor, int(counted), unchecked_cap if counted else 2**31 - 1)
        if back is not None:
            await add_run_event(conn, back, "queued", None, UNCHECKED_PUT_BACK if counted else PUT_BACK)
            await notify_work(conn)  # a process with room starts it (lost: the next tick's pass does)
            return False
        row = await conn.fetchrow("SELECT kill_requested, kill_reason, unchecked_requeues, (SELECT killed FROM tasks"
                                  " WHERE tasks.id = runs.task_id) AS task_killed FROM runs WHERE id = $1 AND"
                                  " supervisor = $2 AND status = 'running'", run_id, supervisor)
    if row is None:
        return None
    if row["kill_requested"]:
        return row["kill_reason"] or True
    if row["task_killed"]:
        return True
    if counted and row["unchecked_requeues"] >= unchecked_cap:
        raise RequeueCapped(row["unchecked_requeues"])
    return None


async def finish_run(pool: asyncpg.Pool, run_id: uuid.UUID, supervisor: str, status: str, exit_code: int | None,
                     reason: str | None) -> bool:
    """Record how a run ended; False if it was no longer this supervisor's (already declared lost). The reason
    may quote the run's own output (its stderr, the launcher's words): kept without NULs (shared/pg_text.py)."""
    reason = None if reason is None else no_nul(reason)
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE runs SET status = $3, exit_code = $4, reason = $5, finished_at = now(), updated_at = now() "
            "WHERE id = $1 AND supervisor = $2 AND status = 'running' RETURNING id", run_id, supervisor, status,
            exit_code, reason)
        if done is not None:
            await notify_work(conn)  # a place in its workspace is free: a queued run may start
            await add_run_event(conn, await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id), status,
                                exit_code, reason)
    return done is not None


async def own_unsupervised(conn: asyncpg.Connection, supervisor: str,
                           known: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Runs `running` under `supervisor` (the caller's own identity) other than `known` (those it supervises): a start
    of its (start_queued) that committed though its answer never came back (the connection dropped after the commit),
    or a run whose end it could not record (the caller tells them apart). Read through the running runs (index
    runs_running: `heartbeat_at IS NOT NULL` lets the planner use it)."""
    return await conn.fetch("SELECT * FROM runs WHERE status = 'running' AND heartbeat_at IS NOT NULL"
                            " AND supervisor = $1 AND NOT (id = ANY($2::uuid[])) ORDER BY started_at, id",
                            supervisor, known)


async def fail_lost_runs(conn: asyncpg.Connection, lost_after: float, supervisor: str | None = None,
                         alive: list[uuid.UUID] | None = None) -> list[asyncpg.Record]:
    """Running runs whose supervisor stopped beating: failed, with the reason. Not those of `supervisor` (the caller's
    own identity) among `alive`, the runs it supervises right now: the process looking is that supervisor, alive,
    though its beats may be older than `lost_after` (it was paused, its loop held up); it beats them next."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE runs SET status = 'failure', reason = 'the task scheduler process supervising the run died (no "
            "heartbeat for ' || $1::text || ' s)', finished_at = now(), updated_at = now() "
            "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) "
            "AND NOT (supervisor IS NOT DISTINCT FROM $2 AND id = ANY($3::uuid[])) RETURNING *", lost_after,
            supervisor, alive or [])
        if rows:
            await notify_work(conn)  # their places are free
        for run in rows:
            await add_run_event(conn, run, "failure", None, run["reason"])
    return rows


RUN_EVENTS = {"running": (TaskRunStarted, subjects.EVENT_TASK_RUN_STARTED),
              "queued": (TaskRunQueued, subjects.EVENT_TASK_RUN_QUEUED),
              "success": (TaskRunSucceeded, subjects.EVENT_TASK_RUN_SUCCEEDED)}
"""A run status's event (any other status: TaskRunFailed on events.task_run.failed). `queued` is sent only for a
started run put back in the queue (requeue_unstarted): a new run's queueing sends nothing, as before."""
EVENT_TYPES = {subjects.EVENT_TASK_RUN_STARTED: TaskRunStarted, subjects.EVENT_TASK_RUN_QUEUED: TaskRunQueued,
               subjects.EVENT_TASK_RUN_SUCCEEDED: TaskRunSucceeded, subjects.EVENT_TASK_RUN_FAILED: TaskRunFailed}
"""The outbox's subjects and their event classes (shared/outbox.py reads a row back with them)."""


async def add_run_event(conn: asyncpg.Connection, run: asyncpg.Record, status: str, exit_code: int | None,
                        reason: str | None) -> None:
    """A run's events.task_run.* in the outbox, in the caller's transaction (the one that changed the run's status;
    shared/outbox.py publishes it once that commits). Nothing for a run whose task is gone.

    Its `occurred_at` is PostgreSQL's clock (clock_timestamp(), read in that transaction), not the process's: the
    lineage card shows the event with the latest occurred_at, and one run's events come from several scheduler
    processes, on hosts whose clocks differ. A run put back (`queued`) by a stopping process is started again by
    another within milliseconds: with that host's clock a few milliseconds behind, its `running` read as older than
    the `queued` and the card read queued for the whole run (2026-12-05, review). On the one database clock, an event
    written after another's transaction committed is later."""
    task = await conn.fetchrow("SELECT *, clock_timestamp() AS event_at FROM tasks WHERE id = $1", run["task_id"])
    if task is None:
        return
    kind, subject = RUN_EVENTS.get(status, (TaskRunFailed, subjects.EVENT_TASK_RUN_FAILED))
    orch_name = await conn.fetchval("SELECT name FROM orchestrations WHERE id = $1", task["orch_id"])
    await add_event(conn, subject, kind(
        run_id=run["id"], task_id=task["id"], name=task["name"], orch_id=task["orch_id"], orch_sha=task["orch_sha"],
        orch_name=orch_name, workspace_id=task["workspace_id"], owner_id=task["owner_id"], status=status,
        exit_code=exit_code, reason=reason, occurred_at=task["event_at"]))


async def seconds_to_next_due(conn: asyncpg.Connection, lost_after: float, envs: bool,
                              held: list[uuid.UUID] | None = None) -> float | None:
    """Seconds until the earliest moment a pass can find work no notification announces: a task's next schedule
    point (not those `held`: the caller knows when it looks at them again), a running run's heartbeat deadline and
    (with `envs`: this process could install one now) an installing environment's (its supervisor or installer may
    die silently). None when there is none; negative when it has passed."""
    return await conn.fetchval(
        "SELECT extract(epoch FROM least("
        "  (SELECT min(next_fire) FROM tasks WHERE schedule IS NOT NULL AND NOT killed AND NOT (id = ANY($3::uuid[]))),"
        "  (SELECT min(heartbeat_at) FROM runs WHERE status = 'running') + make_interval(secs => $1),"
        "  (SELECT min(heartbeat_at) FROM envs WHERE $2 AND status = 'installing') + make_interval(secs => $1)"
        ") - now())::float8", lost_after, envs, held or [])


async def relay_number(pool: asyncpg.Pool | asyncpg.Connection, owner_id: str) -> int:
    """The owner's own number (relay_sources), allocated at its first call and the same ever after, in every scheduler
    process: its runs' relay address (shared.sandbox.relay_source). Read first, so that only an owner's first run
    takes a number from the sequence (an insert that conflicts takes one too, and it is never used again: over the
    ~16.7 million addresses only a race of two first runs wastes any); two processes inserting at once agree, as the
    insert of the second waits for the first's and does nothing, and both read the first's (each statement on its own,
    each reading what is committed then)."""
    query = "SELECT n FROM relay_sources WHERE owner_id = $1"
    if (number := await pool.fetchval(query, owner_id)) is None:
        await pool.execute("INSERT INTO relay_sources (owner_id) VALUES ($1) ON CONFLICT (owner_id) DO NOTHING",
                           owner_id)
        number = await pool.fetchval(query, owner_id)
    return number


async def running_among(pool: asyncpg.Pool, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await pool.fetch("SELECT id FROM runs WHERE id = ANY($1::uuid[]) AND status = 'running'", run_ids)
    return {r["id"] for r in rows}


async def run(pool: asyncpg.Pool, run_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)


async def runs_of(pool: asyncpg.Pool, task_id: uuid.UUID, status: str | None, limit: int | None,
                  after: tuple[datetime, uuid.UUID] | None = None, paged: bool = False) -> list:
    """A task's runs, `limit` at most (None: all): most recently updated first; `paged`, newest first by creation
    (created_at, id: what never changes), those before `after` (a page's cursor)."""
    if not paged:
        return await pool.fetch(
            "SELECT * FROM runs WHERE task_id = $1 AND ($2::text IS NULL OR status = $2) "
            "ORDER BY updated_at DESC, id LIMIT $3", task_id, status, limit)
    return await pool.fetch(
        "SELECT * FROM runs WHERE task_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR"
        " (created_at, id) < ($3, $4::uuid)) ORDER BY created_at DESC, id DESC LIMIT $5", task_id, status,
        *(after or (None, None)), limit)


LATE_LINES = 1.0
"""Seconds after a run ended (`finished_at`) during which lines of it are still stored. Its own supervisor writes its
last lines before it records the end; only a supervisor whose run was declared lost meanwhile (fail_lost_runs: it was
paused, or cut off from PostgreSQL, past SUPERVISOR_LOST_AFTER) writes after it, and goes on while its process runs.
Lines stored later than this would reach nobody as part of the run: `railyard tasks logs --follow` and the UI's
follower stop once two reads a second apart of a failed run bring no new line (at least 1 s after they saw it end),
and a finished run's log is complete for every other reader (its last page answers no `next_cursor`). So a log is
final LATE_LINES after its run's end: lines arriving later are refused (docs/orchestrations.md, "Logs")."""


async def append_logs(pool: asyncpg.Pool, run_id: uuid.UUID, first_seq: int,
                      lines: list[tuple[datetime, str, bool, str]]) -> int:
    """Store the run's `lines` from sequence number `first_seq` on; how many are stored: all of them while the run is
    queued or running or ended at most LATE_LINES ago, none once it ended before (checked in the same statement).
    Idempotent: a line whose sequence number is stored already is skipped and counted as stored, so the runner's retry
    of a batch whose INSERT committed but whose answer was lost (the connection dropped) stores nothing twice; before,
    that retry failed on the primary key and the batch's lines (and, the numbering stuck, every later one) were lost."""
    if not lines:
        return 0
    ats, streams, partials, texts = (list(column) for column in zip(*lines, strict=True))
    # `earlier` reads the statement's snapshot: the lines stored before it, not the ones it adds
    stored = await pool.fetchval(
        "WITH added AS (INSERT INTO run_logs (run_id, seq, at, stream, partial, line)"
        " SELECT $1, $2 + l.i::integer - 1, l.at, l.stream, l.partial, l.line"
        " FROM unnest($3::timestamptz[], $4::text[], $5::boolean[], $6::text[]) WITH ORDINALITY"
        " AS l(at, stream, partial, line, i)"
        " WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND (status IN ('queued', 'running')"
        " OR finished_at > now() - make_interval(secs => $7))) ON CONFLICT (run_id, seq) DO NOTHING RETURNING 1),"
        " earlier AS (SELECT 1 FROM run_logs WHERE run_id = $1 AND seq >= $2 AND seq < $2 + cardinality($6::text[]))"
        " SELECT ((SELECT count(*) FROM added) + (SELECT count(*) FROM earlier))::integer", run_id, first_seq, ats,
        streams, partials, texts, LATE_LINES)
    if stored < len(lines):
        # not all: refused (the run ended LATE_LINES ago), or written meanwhile by another write of the same lines (a
        # flush attempt given up on, left to end: runner.LogWriter._attempt) that committed after this statement
        # began; it waited for those rows and skipped them, and its snapshot saw them in neither count (it answered 0,
        # and the supervisor logged its run's lines refused). Counted again in a snapshot of their own
        stored = await pool.fetchval("SELECT count(*)::integer FROM run_logs WHERE run_id = $1 AND seq >= $2"
                                     " AND seq < $2 + $3::integer", run_id, first_seq, len(lines))
    return stored


async def logs_from(pool: asyncpg.Pool, run_id: uuid.UUID, first_seq: int, limit: int | None) -> list[asyncpg.Record]:
    """The run's lines from sequence number `first_seq` on, in order, `limit` at most (on the primary key)."""
    return await pool.fetch("SELECT seq, at, stream, partial, line FROM run_logs WHERE run_id = $1 AND seq >= $2"
                            " ORDER BY seq LIMIT $3", run_id, first_seq, limit)


async def logs(pool: asyncpg.Pool, run_id: uuid.UUID, last: int | None) -> list[asyncpg.Record]:
    if last is None:
        return await pool.fetch("SELECT at, stream, partial, line FROM run_logs WHERE run_id = $1 ORDER BY seq",
                                run_id)
    return await pool.fetch(
        "SELECT at, stream, partial, line FROM (SELECT * FROM run_logs WHERE run_id = $1 ORDER BY seq DESC "
        "LIMIT $2) t ORDER BY seq", run_id, last)
