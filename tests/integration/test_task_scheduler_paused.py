"""A task-scheduler process that was paused, or that is stopping, is alive: it does not take its own runs as lost,
and beats them while its stop waits for them, so that no other process does (scheduler.py). A run declared lost is
failed with "the task scheduler process supervising the run died", and since a run's log is final store.LATE_LINES
after its end (docs/orchestrations.md, "Logs") its supervisor's later lines, the run's last words (a failed
orchestration's traceback), are refused: so a healthy run must not be declared lost by the process supervising it,
nor by another one while its own process stops it.

Real PostgreSQL (a schema of this file's), the service's loop, SQL and stop; only the run is a stand-in (it waits for
`gate`, writes its last line through store.append_logs as the runner's sink does, and ends)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.task_scheduler import runner, store
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, scheduler_on

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKSPACE = 8
LOST_AFTER = 5.0  # seconds; the stop test's run ends LOST_AFTER + 2.5 s after its kill, within the stop's 15 s
LAST_WORDS = "Traceback (most recent call last): the run's last line"


class StandIn(Scheduler):
    """Runs end when `gate` is set (or, killed, `after_kill` seconds later: a process taking its SIGTERM's time),
    writing their last line first, as the runner's final flush does before finish_run."""

    gate: asyncio.Event
    after_kill: float
    beaten: asyncio.Event

    async def heartbeat(self, conn: asyncpg.Connection) -> None:
        await super().heartbeat(conn)
        self.beaten.set()

    async def _run(self, row: asyncpg.Record) -> runner.RunOutcome:
        kill = self.kills[row["id"]]
        done = await asyncio.wait({asyncio.ensure_future(self.gate.wait()), asyncio.ensure_future(kill.wait())},
                                  return_when=asyncio.FIRST_COMPLETED)
        for waiter in done[1]:
            waiter.cancel()
        if kill.is_set():
            await asyncio.sleep(self.after_kill)  # the process's own end after its SIGTERM, not a synchronization
        await store.append_logs(self.deps.pool, row["id"], 0, [(datetime.now(UTC), "stderr", False, LAST_WORDS)])
        if kill.is_set():
            return runner.RunOutcome("failure", -15, runner.KILLED)
        return runner.RunOutcome("failure", 1, "main.py exited with status 1")


@pytest.fixture
async def database(stack):
    async with service_schema(stack, "task_scheduler_paused", MIGRATIONS) as pool:
        orch_id = uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=WORKSPACE, sha="0" * 64, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        yield pool, orch_id


def scheduler(pool: asyncpg.Pool, tmp_path: Path, name: str, after_kill: float = 0.0) -> StandIn:
    settings = TaskSettings(tick=60, heartbeat_interval=1.0, supervisor_lost_after=LOST_AFTER)
    made = scheduler_on(StandIn, pool, tmp_path / name, name, settings, start=False)
    made.gate, made.after_kill, made.beaten = asyncio.Event(), after_kill, asyncio.Event()
    made.start()
    return made


async def a_run(pool: asyncpg.Pool, orch_id: uuid.UUID) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_task(conn, id=task_id, workspace_id=WORKSPACE, orch_id=orch_id, orch_sha="0" * 64,
                                name=None, owner_id="u", args={}, timeout_seconds=60, schedule=None,
                                missed_run_policy=None, next_fire=None)
        run_id = await store.queue_once(conn, task_id, WORKSPACE)
    return run_id


async def status_of(pool: asyncpg.Pool, run_id: uuid.UUID, until: set[str], within: float = 30.0) -> asyncpg.Record:
    deadline = time.monotonic() + within
    while True:
        row = await pool.fetchrow("SELECT status, reason, supervisor FROM runs WHERE id = $1", run_id)
        if row["status"] in until:
            return row
        assert time.monotonic() < deadline, f"run {run_id} still {row['status']} after {within} s"
        await asyncio.sleep(0.05)


async def last_lines(pool: asyncpg.Pool, run_id: uuid.UUID) -> list[str]:
    return [row["line"] for row in await store.logs(pool, run_id, None)]


async def test_a_process_woken_from_a_pause_does_not_fail_its_own_runs_as_lost(database, tmp_path):
    """The process is paused (SIGSTOP, a suspended VM, a blocked loop) for longer than supervisor_lost_after: when it
    wakes, its loop's next pass looked for lost runs before it beat its own, took its own run, whose supervisor is
    this very process and alive, as lost and failed it; the run's last line, written more than LATE_LINES later, was
    refused. Now a pass does not take its own live runs as lost (their beat follows in the same pass)."""
    pool, orch_id = database
    sched = scheduler(pool, tmp_path, "paused")
    try:
        run_id = await a_run(pool, orch_id)
        await status_of(pool, run_id, {"running"})
        sched.beaten.clear()
        async with asyncio.timeout(30):  # a pass is past its beat: the next one starts with fail_lost
            await sched.beaten.wait()
        time.sleep(LOST_AFTER + 1.5)  # noqa: ASYNC251 - the pause itself: the whole process stops, its loop too
        sched.beaten.clear()
        async with asyncio.timeout(30):  # the pass after the pause, whole
            await sched.beaten.wait()
        await asyncio.sleep(store.LATE_LINES + 0.5)  # a run's last line comes after its log would be final
        sched.gate.set()
        row = await status_of(pool, run_id, {"success", "failure"})
        assert (row["status"], row["reason"]) == ("failure", "main.py exited with status 1"), dict(row)
        assert await last_lines(pool, run_id) == [LAST_WORDS]
    finally:
        sched.gate.set()
        await sched.stop()

async def test_a_stopping_process_beats_its_runs_until_they_ended(database, tmp_path):
    """A process stopping (a restart, a scale-down) kills its runs and waits for them (up to 15 s): a run's process
    may take its SIGTERM's 5 s and its output's last reads. Its loop, the one that beat them, stopped first, so
    another process took them as lost supervisor_lost_after later and failed them ("the task scheduler process
    supervising the run died"): the stop's own record was not written and the run's last lines, written later than
    LATE_LINES after that, were refused. Now the stop beats them while it waits."""
    pool, orch_id = database
    stopping = scheduler(pool, tmp_path, "stopping", after_kill=LOST_AFTER + store.LATE_LINES + 1.5)
    other = None
    try:
        run_id = await a_run(pool, orch_id)
        await status_of(pool, run_id, {"running"})
        other = scheduler(pool, tmp_path, "other")  # started after the run is taken: it looks for lost runs
        await stopping.stop()
        row = await status_of(pool, run_id, {"success", "failure"})
        assert (row["status"], row["reason"]) == ("failure", "stopped: its task scheduler process shut down"), \
            dict(row)
        assert await last_lines(pool, run_id) == [LAST_WORDS]
    finally:
        stopping.gate.set()
        if not stopping._stop.is_set():
            await stopping.stop()
        if other is not None:
            await other.stop()


@pytest.fixture
def held_record(monkeypatch):
    """store.finish_run held until `release` is set; `recording` is set when a run's end starts being recorded."""
    recording, release = asyncio.Event(), asyncio.Event()
    finish_run = store.finish_run

    async def held(*args, **kwargs):
        recording.set()
        await release.wait()
        return await finish_run(*args, **kwargs)

    monkeypatch.setattr(store, "finish_run", held)
    return recording, release


async def test_a_run_recording_its_end_is_not_taken_as_lost_by_its_own_process(database, tmp_path, held_record):
    """The run ended and its end is being recorded (finish_run waits for the database) when the process's beat is older
    than supervisor_lost_after (it was paused just then): its own pass looked for lost runs, did not count the run as
    its own (it left the process's runs just before finish_run) and failed it as lost; finish_run was then refused.
    Now a run is the process's until its end is recorded."""
    pool, orch_id = database
    recording, release = held_record
    sched = scheduler(pool, tmp_path, "recording")
    try:
        run_id = await a_run(pool, orch_id)
        await status_of(pool, run_id, {"running"})
        sched.gate.set()
        async with asyncio.timeout(30):
            await recording.wait()
        async with pool.acquire() as conn, conn.transaction():  # no beat of it in between
            await conn.execute("UPDATE runs SET heartbeat_at = now() - make_interval(secs => $2) WHERE id = $1",
                               run_id, LOST_AFTER + 1)
            await sched.fail_lost(conn)  # the first step of its pass after the pause
        release.set()
        row = await status_of(pool, run_id, {"success", "failure"})
        # was: failed as lost ("the task scheduler process supervising the run died"), finish_run refused
        assert (row["status"], row["reason"]) == ("failure", "main.py exited with status 1"), dict(row)
    finally:
        release.set()
        sched.gate.set()
        await sched.stop()


async def test_a_stop_waits_for_the_end_of_a_run_being_recorded(database, tmp_path, held_record):
    """A stop came while a run's end was being recorded: the run was out of the process's runs, so the stop did not
    wait for it and returned (the process then exits: the run stays `running` until another process fails it as lost,
    its real end never recorded). Now the stop waits for the record: it releases only once the stop waits for its
    runs, so on the old code the stop returned first."""
    pool, orch_id = database
    recording, release = held_record
    sched = scheduler(pool, tmp_path, "stopping")
    runs_ended = sched._runs_ended

    async def waited_for(within: float) -> None:
        release.set()  # the stop is waiting for the runs: the record may go on
        await runs_ended(within)

    sched._runs_ended = waited_for
    try:
        run_id = await a_run(pool, orch_id)
        await status_of(pool, run_id, {"running"})
        sched.gate.set()
        async with asyncio.timeout(30):
            await recording.wait()
        stopping = asyncio.create_task(sched.stop())
        released = asyncio.create_task(release.wait())
        await asyncio.wait({stopping, released}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        returned_first = stopping.done()  # was: True, the run's end still unrecorded
        released.cancel()
        release.set()
        await stopping
        assert not returned_first
        row = await pool.fetchrow("SELECT status, reason FROM runs WHERE id = $1", run_id)
        assert (row["status"], row["reason"]) == ("failure", "main.py exited with status 1"), dict(row)
    finally:
        release.set()
        sched.gate.set()
        if not sched._stop.is_set():
            await sched.stop()
