"""A supervisor whose run another scheduler process declared lost stops the run's process and records nothing more
for it (services/task_scheduler/scheduler.py, Scheduler._taken_over). A process paused or cut off from PostgreSQL
past supervisor_lost_after has its runs failed by another process ("the task scheduler process supervising the run
died"), their places in the workspace given to other runs; when it comes back, its heartbeat finds the run no longer
its own. Before, only a kill request stopped a run there: the user's code went on unsupervised to its end or its
timeout, and its lines went on being written (stored for LATE_LINES after the loss).

A real scheduler runs a real sandboxed run (shared/sandbox.py, as in test_task_run_log_retries.py) against a schema of
this test's on the stack's PostgreSQL; another scheduler's own lost-run step (Scheduler.fail_lost) takes it over, in
the transaction that makes the first one's heartbeat old (so no beat of it comes in between)."""

from __future__ import annotations

import asyncio
import uuid
import zipfile
from datetime import UTC, datetime

import psutil
import pytest

from services.task_scheduler import runner, store
from services.task_scheduler.scheduler import Scheduler
from shared.settings import Settings, TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, sandbox_settings_in, scheduler_on, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WORKSPACE = 9
SHA = "1" * 64
# prints a line every 20 ms until it is stopped (the task's timeout is ten minutes)
MAIN = "import itertools, time\nprint('started')\nfor i in itertools.count():\n    print(f'tick {i}')\n" \
       "    time.sleep(0.02)\n"


class Watched(Scheduler):
    """The service's Scheduler, noting when it learnt that a run is no longer its own."""

    learnt: dict[uuid.UUID, datetime]

    def _taken_over(self, asked, beaten) -> None:
        super()._taken_over(asked, beaten)
        for run_id in self.lost:
            self.learnt.setdefault(run_id, datetime.now(UTC))


@pytest.fixture
def sandbox_settings(tmp_path, monkeypatch) -> Settings:
    return sandbox_settings_in(tmp_path, monkeypatch)


@pytest.fixture
def writes(monkeypatch) -> list[tuple[datetime, uuid.UUID, int]]:
    """Every store.append_logs that stored lines: when it was called (one under way when the supervisor learns the run
    is not its own may end after), the run, how many."""
    done: list[tuple[datetime, uuid.UUID, int]] = []
    append_logs = store.append_logs

    async def noted(pool, run_id, first_seq, lines) -> int:
        called = datetime.now(UTC)
        stored = await append_logs(pool, run_id, first_seq, lines)
        if stored:
            done.append((called, run_id, stored))
        return stored

    monkeypatch.setattr(store, "append_logs", noted)
    return done


@pytest.fixture
async def database(stack, monkeypatch):
    # lines of a run are stored for a minute after its end, not 1 s: what a supervisor declared lost writes after
    # the loss would be stored, so the test sees whether it stopped writing
    monkeypatch.setattr(store, "LATE_LINES", 60.0)
    async with service_schema(stack, "task_scheduler_takeover", MIGRATIONS) as pool:
        orch_id = uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=WORKSPACE, sha=SHA, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        yield pool, orch_id


def processes_of(run_id: uuid.UUID) -> list[psutil.Process]:
    """The processes of the run's sandbox still alive: those whose environment names the run (TASK_RUN_ID)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TASK_RUN_ID") == str(run_id) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


SETTINGS = TaskSettings(tick=60, heartbeat_interval=1.0, supervisor_lost_after=5.0)


def first_scheduler(pool, tmp_path) -> Watched:
    """The supervisor (not started), its orchestration's zip already on its machine (as if fetched before)."""
    first = scheduler_on(Watched, pool, tmp_path / "first", "first", SETTINGS, start=False)
    first.learnt = {}
    archive = first.deps.work_root / "orchestrations" / f"{SHA}.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("main.py", MAIN)
    return first


async def a_queued_run(pool, orch_id: uuid.UUID) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_task(conn, id=task_id, workspace_id=WORKSPACE, orch_id=orch_id, orch_sha=SHA, name=None,
                                owner_id="u", args={}, timeout_seconds=600, schedule=None, missed_run_policy=None,
                                next_fire=None)
        return await store.queue_once(conn, task_id, WORKSPACE)


async def taken_over(pool, other: Scheduler, run_id: uuid.UUID) -> dict:
    """`other`'s lost-run step fails the run, in the transaction that makes its heartbeat a minute old (its
    supervisor, cut off from PostgreSQL past supervisor_lost_after, did not beat it): the run's row then."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE runs SET heartbeat_at = now() - make_interval(secs => 60) WHERE id = $1", run_id)
        await other.fail_lost(conn)
    lost = await pool.fetchrow("SELECT status, reason, finished_at, supervisor FROM runs WHERE id = $1", run_id)
    assert (lost["status"], lost["supervisor"]) == ("failure", "first"), dict(lost)
    assert "supervising the run died" in lost["reason"], dict(lost)
    return dict(lost)


async def test_a_supervisor_whose_run_was_declared_lost_stops_its_process_and_records_nothing_more(
        database, sandbox_settings, writes, tmp_path):
    pool, orch_id = database
    first = first_scheduler(pool, tmp_path)
    first.start()
    other = scheduler_on(Scheduler, pool, tmp_path / "other", "other", SETTINGS, start=False)  # its steps only
    try:
        run_id = await a_queued_run(pool, orch_id)

        async def ticking() -> bool:
            return any(row["line"].startswith("tick") for row in await store.logs(pool, run_id, None))

        await until("the run writes its lines", ticking, 60)
        assert processes_of(run_id), "the run's process is not found by its TASK_RUN_ID"

        lost = await taken_over(pool, other, run_id)

        async def stopped() -> bool:  # its supervisor is done with it and its process is gone
            return run_id not in first.runs and not processes_of(run_id)

        # was: the run's process went on (main.py prints until its 600 s timeout), its supervisor with it
        await until("the run taken over is stopped by its old supervisor", stopped, 30)
        learnt = first.learnt[run_id]
        after = await pool.fetchrow("SELECT status, reason, finished_at, supervisor FROM runs WHERE id = $1", run_id)
        assert dict(after) == lost  # its end is the other process's: nothing recorded over it
        # nothing written once it learnt (was: its lines went on for LATE_LINES; the last batch, read before the
        # process was stopped, is dropped too)
        assert [write for write in writes if write[0] > learnt] == [], (learnt, writes[-3:])
    finally:
        await first.stop()


@pytest.mark.parametrize("beaten_first", [True, False], ids=["heartbeat-first", "mint-answered-first"])
async def test_a_run_taken_over_while_it_was_being_set_up_never_starts_its_process(
        database, sandbox_settings, tmp_path, monkeypatch, beaten_first):
    """Declared lost while its supervisor still set it up (an environment installing takes minutes; here its token
    being minted): the process is not started at all. Before, execute started it and stopped it at once (SIGTERM to
    a sandbox whose code had already begun). `mint-answered-first`: the mint answers before the supervisor's next
    heartbeat (the process was paused around it): the run's claim is checked before execute (Scheduler._still_claimed,
    the real store.beat_runs); before, main.py started for the failed run until that heartbeat stopped it."""
    pool, orch_id = database
    spawned = []
    spawn = runner.spawn

    async def noted(spec, **kwargs):
        spawned.append(spec)
        return await spawn(spec, **kwargs)

    monkeypatch.setattr(runner, "spawn", noted)
    minting, minted = asyncio.Event(), asyncio.Event()

    async def mint(*_: object) -> str:
        minting.set()
        await minted.wait()
        return "unused"

    first = first_scheduler(pool, tmp_path)
    first.mint = mint
    first.start()
    other = scheduler_on(Scheduler, pool, tmp_path / "other", "other", SETTINGS, start=False)
    try:
        run_id = await a_queued_run(pool, orch_id)
        async with asyncio.timeout(30):
            await minting.wait()
        lost = await taken_over(pool, other, run_id)

        async def learnt() -> bool:  # at its next heartbeat, or its check before execute
            return run_id in first.learnt

        if beaten_first:
            await until("the supervisor learns the run is not its own", learnt)
        minted.set()

        async def ended() -> bool:
            return run_id not in first.runs

        await until("the supervisor is done with the run", ended)
        assert spawned == []  # was: one sandbox started, then stopped
        assert run_id in first.learnt
        assert dict(await pool.fetchrow("SELECT status, reason, finished_at, supervisor FROM runs WHERE id = $1",
                                        run_id)) == lost
    finally:
        minted.set()
        await first.stop()
