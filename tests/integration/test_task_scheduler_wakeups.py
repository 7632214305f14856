"""The task scheduler sleeps until something can be due and is woken by PostgreSQL notifications (scheduler.py).

Two `Scheduler`s run in this process against the test stack's real PostgreSQL, in a schema of their own (so the
stack's own scheduler never sees these rows), with the fallback poll (`tick`) at a minute: whatever they do within
seconds, a notification or a due point woke them for. Only the run itself is a stand-in (`_run` waits for its kill
or its length, instead of a sandbox): the loop, its SQL and its notifications are the service's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from services.task_scheduler import runner, store
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, scheduler_on

pytestmark = pytest.mark.timeout(120)

WORKSPACE = 7

# How soon a notification must have woken a scheduler. The fallback poll is a minute away, so anything well under it
# can only be the notification; the bound is loose because a loaded 2-core machine delays every pass (this is not a
# speed claim).
WAKE = 10


class StandInRuns(Scheduler):
    """A scheduler whose runs take `seconds` from the task's args (or until killed), recording when they ran, and
    whose environment installs end when `install_gate` is set."""

    spans: list[tuple[uuid.UUID, float, float]]
    installed: list[str]
    install_gate: asyncio.Event

    async def _install_one(self, env: asyncpg.Record) -> None:
        self.installed.append(env["requirements_sha"])
        await self.install_gate.wait()
        try:
            await store.finish_env(self.deps.pool, env["requirements_sha"], self.identity, True, None)
        finally:
            self.wake()

    async def _run(self, row: asyncpg.Record) -> runner.RunOutcome:
        task = await store.task(self.deps.pool, row["task_id"])
        seconds = float(__import__("json").loads(task["args"])["seconds"])
        begun = time.monotonic()
        try:
            await asyncio.wait_for(self.kills[row["id"]].wait(), seconds)
            return runner.RunOutcome("failure", None, runner.KILLED)
        except TimeoutError:
            return runner.RunOutcome("success", 0, None)
        finally:
            self.spans.append((row["task_id"], begun, time.monotonic()))


@pytest.fixture
async def database(stack):
    async with service_schema(stack, "task_scheduler_wake", MIGRATIONS) as pool:
        orch_id = uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=WORKSPACE, sha="0" * 64, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        yield pool, orch_id


def scheduler(pool: asyncpg.Pool, tmp_path: Path, spans: list, name: str) -> StandInRuns:
    settings = TaskSettings(tick=60, heartbeat_interval=0.5, supervisor_lost_after=2,
                            max_concurrent_runs_per_workspace=2, max_runs_per_process=4)
    made = scheduler_on(StandInRuns, pool, tmp_path / name, name, settings, start=False)
    made.spans, made.installed, made.install_gate = spans, [], asyncio.Event()
    made.install_gate.set()
    made.start()
    return made


async def new_task(pool: asyncpg.Pool, orch_id: uuid.UUID, seconds: float, schedule: str | None = None) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        next_fire = None
        if schedule is not None:
            now = await conn.fetchval("SELECT now()")
            next_fire = now.replace(microsecond=0) + timedelta(seconds=1)
        await store.insert_task(conn, id=task_id, workspace_id=WORKSPACE, orch_id=orch_id, orch_sha="0" * 64,
                                name=None, owner_id="u", args={"seconds": seconds}, timeout_seconds=60,
                                schedule=schedule, missed_run_policy=None, next_fire=next_fire)
        if schedule is None:
            await store.queue_once(conn, task_id, WORKSPACE)
    return task_id


async def stale_env(pool: asyncpg.Pool, sha: str, beat_ago: float) -> None:
    """An environment being installed by a process that stopped beating `beat_ago` seconds ago."""
    await pool.execute(
        "INSERT INTO envs (requirements_sha, requirements, status, worker, heartbeat_at) "
        "VALUES ($1, '', 'installing', 'gone', now() - make_interval(secs => $2))", sha, beat_ago)


async def settled(pool: asyncpg.Pool, task_id: uuid.UUID, status: set[str], within: float) -> asyncpg.Record:
    deadline = time.monotonic() + within
    while True:
        rows = await store.runs_of(pool, task_id, None, 1)
        if rows and rows[0]["status"] in status:
            return rows[0]
        assert time.monotonic() < deadline, (status, rows)
        await asyncio.sleep(0.05)


async def test_sleeping_schedulers_are_woken_for_each_kind_of_work(database, tmp_path):
    pool, orch = database
    spans: list = []
    first, second = scheduler(pool, tmp_path, spans, "first"), scheduler(pool, tmp_path, spans, "second")
    try:
        await asyncio.sleep(1)  # both past their first pass
        # idle: no pass at all (the old loop made one every tick)
        passes = first.passes + second.passes
        await asyncio.sleep(2)
        assert first.passes + second.passes == passes
        # a queued run: started and finished at once, though the poll is a minute away
        task = await new_task(pool, orch, 0.1)
        assert (await settled(pool, task, {"success"}, WAKE))["status"] == "success"
        # four runs in one workspace: two at a time, oldest first, each started when a place frees up
        spans.clear()
        queued = [await new_task(pool, orch, 0.5) for _ in range(4)]
        for task in queued:
            await settled(pool, task, {"success"}, 2 + WAKE)
        spans.sort(key=lambda s: s[1])
        assert [s[0] for s in spans[:2]] == queued[:2] or set(s[0] for s in spans[:2]) == set(queued[:2]), spans
        assert set(s[0] for s in spans[2:]) == set(queued[2:]), spans
        assert max(sum(b <= moment < e for _, b, e in spans) for _, moment, _ in spans) == 2, spans
        # schedule points: each fired once, on time, by whichever scheduler took it
        every = await new_task(pool, orch, 0.05, schedule="* * * * * */1")
        # until three points have fired (it was a 6-s sleep); within seconds, the fallback poll a minute away
        fired_by = time.monotonic() + 2 + WAKE
        while len({r["scheduled_for"] for r in await store.runs_of(pool, every, None, None)}) < 3:
            assert time.monotonic() < fired_by, await store.runs_of(pool, every, None, None)
            await asyncio.sleep(0.05)
        await store.kill_task(pool, every)
        points = Counter(r["scheduled_for"] for r in await store.runs_of(pool, every, None, None))
        assert all(n == 1 for n in points.values()) and len(points) >= 3, points
        # points of the schedule, each once; a pass delayed past the next point (a loaded machine) fires only the
        # latest one, so a gap may be two seconds or more, never a fraction
        moments = sorted(points)
        assert all((b - a).total_seconds() >= 1 and (b - a).total_seconds() % 1 == 0
                   for a, b in zip(moments, moments[1:], strict=False)), moments
        # a kill of a running run: its supervisor hears it at the kill's commit
        task = await new_task(pool, orch, 60)
        await settled(pool, task, {"running"}, WAKE)
        killed_at = time.monotonic()
        await store.kill_task(pool, task)
        run = await settled(pool, task, {"failure"}, WAKE)
        assert run["reason"] == runner.KILLED and time.monotonic() - killed_at < WAKE, run
        # a supervisor that stops beating (its loop and run are gone, as in a kill -9): the other one wakes at the
        # heartbeat's deadline and fails the run
        task = await new_task(pool, orch, 60)
        run = await settled(pool, task, {"running"}, WAKE)
        dead = first if run["id"] in first.runs else second
        dead._loop.cancel()
        dead.runs[run["id"]].cancel()
        await dead._drop_connection()
        gone_at = time.monotonic()
        run = await settled(pool, task, {"failure"}, 2 + WAKE)
        assert "supervising the run died" in run["reason"], run
        assert time.monotonic() - gone_at < 2 + WAKE, run  # supervisor_lost_after 2 s
        # an environment whose installer stopped beating: claimed at its deadline
        alive = second if dead is first else first
        alive.install_gate.clear()
        await stale_env(pool, "a", 2 - 1)
        alive.wake()  # a pass sees its heartbeat (a claim sends no notification: the tick would, within 5 s)
        claimed_by = time.monotonic() + 1 + WAKE
        while alive.installed != ["a"]:
            assert time.monotonic() < claimed_by, alive.installed
            await asyncio.sleep(0.05)
        # another one past its deadline while this process's installer is busy: no spin, and it is taken the
        # moment the installer is free
        await stale_env(pool, "b", 10)
        passes = alive.passes
        alive.wake()  # as any notification would
        await asyncio.sleep(1)
        assert alive.passes - passes <= 3, alive.passes - passes
        alive.install_gate.set()
        freed_at = time.monotonic()
        while alive.installed != ["a", "b"]:
            assert time.monotonic() - freed_at < WAKE, alive.installed
            await asyncio.sleep(0.05)
    finally:
        for made in (first, second):
            if not made._loop.done():
                await made.stop()
            else:
                await made._drop_connection()
