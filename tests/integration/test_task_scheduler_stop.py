"""A task scheduler stopped by the embedded stack (`railyard down`) records its runs' end as stopped, even when a
run's process ignores its SIGTERM (services/task_scheduler/scheduler.py, Scheduler.stop; shared/embedded/stack.py,
service_stop_grace). Before, the stack gave the service the services' grace (5 s) while the scheduler's stop waited
up to 15 s for its runs, a run's process getting runner.TERM_GRACE (5 s) after its SIGTERM: the scheduler was killed
before it recorded anything and the run stayed 'running' until another process failed it as lost.

The service stand-in is a real Scheduler in a process of its own (a Child of a real EmbeddedStack, stopped by its
real stop) on a schema of this test's on the stack's PostgreSQL; the run's sandbox is replaced by a plain process
that ignores SIGTERM (the sandbox's launcher acts on it at once: the stand-in is what a launcher not answering looks
like to the scheduler). And a stop through a database that stopped answering (a FreezingProxy) ends within its
bound, what it could not record left to the lost-run step: before, its connection's release, its beats and the
outbox's last send each waited for the server (past the pool's 30-s command timeout, whose cancel waits too)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from services.task_scheduler import runner, scheduler, store
from services.task_scheduler.scheduler import Scheduler
from shared.embedded.stack import Child, EmbeddedStack
from shared.settings import TASK_STOP_TIMEOUT, Settings, StackSettings, TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.pg_proxy import through_a_proxy
from tests.integration.task_scheduler_setup import MIGRATIONS, a_supervised_run, scheduler_on, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = 11
SHA = "2" * 64

# the service stand-in: argv postgres settings (JSON), schema, work root. SIGTERM stops the scheduler as the
# service's stop hook does, then the process ends
SERVICE = """
import asyncio, signal, sys
from pathlib import Path
from services.task_scheduler import runner
from services.task_scheduler.scheduler import Scheduler
from shared.db import create_pool
from shared.settings import PostgresSettings, TaskSettings
from tests.integration.task_scheduler_setup import scheduler_on

STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('started', flush=True);"
            " time.sleep(120)")

async def spawn(spec, **kwargs):  # in this process's group: the stack's sweep of it takes it too
    return await asyncio.create_subprocess_exec(sys.executable, "-c", STUBBORN, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

runner.spawn = spawn

async def main(postgres, schema, work_root):
    pool = await create_pool(PostgresSettings.model_validate_json(postgres), schema)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    scheduler = scheduler_on(Scheduler, pool, Path(work_root), "stopping", TaskSettings(heartbeat_interval=1.0))
    await stop.wait()
    await scheduler.stop()
    await pool.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_stack_stop_records_a_run_whose_process_ignores_its_sigterm_as_stopped(stack, tmp_path):
    async with service_schema(stack, "task_scheduler_stop", MIGRATIONS) as pool:
        orch_id, task_id = uuid.uuid4(), uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=WORKSPACE, sha=SHA, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        async with pool.acquire() as conn, conn.transaction():
            await store.insert_task(conn, id=task_id, workspace_id=WORKSPACE, orch_id=orch_id, orch_sha=SHA,
                                    name=None, owner_id="u", args={}, timeout_seconds=600, schedule=None,
                                    missed_run_policy=None, next_fire=None)
            run_id = await store.queue_once(conn, task_id, WORKSPACE)
        work_root = tmp_path / "work"
        archive = work_root / "orchestrations" / f"{SHA}.zip"  # as if fetched before
        archive.parent.mkdir(parents=True)
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("main.py", "print('never run: the stand-in sandbox runs its own code')\n")
        schema = await pool.fetchval("SELECT current_schema()")

        # the services' grace well under the run's TERM_GRACE: before, the scheduler had only that
        railyard = EmbeddedStack(Settings(stack=StackSettings(data_dir=tmp_path / "data", stop_grace=1.0)))
        service = Child("task_scheduler", [sys.executable, "-c", SERVICE, stack.settings().postgres.model_dump_json(),
                                           schema, str(work_root)],
                        {**os.environ, "PYTHONPATH": str(REPO)}, tmp_path / "task_scheduler.log",
                        stop_grace=railyard.service_stop_grace("task_scheduler"), cwd=REPO)
        service.start()
        railyard.services = [service]
        try:
            async def going() -> bool:  # its process ignores SIGTERM from here on
                assert service.alive(), (tmp_path / "task_scheduler.log").read_text()
                return bool(await pool.fetchval("SELECT count(*) FROM run_logs WHERE run_id = $1 AND line = 'started'",
                                                 run_id))
            await until("the run's process started", going)
            began = time.monotonic()
            await asyncio.to_thread(railyard.stop)
            took = time.monotonic() - began
        finally:
            service.kill_group()
        said = (tmp_path / "task_scheduler.log").read_text()
        row = await pool.fetchrow("SELECT status, reason, supervisor FROM runs WHERE id = $1", run_id)
        assert (row["status"], row["reason"]) == ("failure", "stopped: its task scheduler process shut down"), \
            (dict(row), took, said[-3000:])
        assert service.proc.returncode == 0, said[-3000:]
        # the stop did wait for the process's SIGTERM grace (it ignored the signal), and no longer than its bound
        assert runner.TERM_GRACE - 0.5 < took < TASK_STOP_TIMEOUT + railyard.cfg.stop_grace, took


class Stopping(Scheduler):
    """The service's Scheduler whose runs end when stopped (their process gone at once)."""

    async def _run(self, row) -> runner.RunOutcome:
        await self.kills[row["id"]].wait()
        return runner.RunOutcome("failure", None, runner.KILLED)


async def test_a_stop_through_a_database_that_does_not_answer_ends_within_its_bound(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "TASK_STOP_TIMEOUT", 6.0)
    monkeypatch.setattr(scheduler, "STOP_STEP", 1.0)
    async with service_schema(stack, "task_scheduler_stop", MIGRATIONS) as pool:
        run_id = await a_supervised_run(pool, supervisor="frozen")
        async with through_a_proxy(stack, pool) as (proxy, proxied):
            supervisor = scheduler_on(Stopping, proxied, tmp_path, "frozen", TaskSettings(tick=60))
            supervisor.kills[run_id] = asyncio.Event()
            supervising = supervisor.runs[run_id] = asyncio.create_task(supervisor._supervise({"id": run_id}))

            async def listening() -> bool:  # its loop's connection taken (LISTENing), a pass done
                return supervisor.passes > 0 and supervisor._conn is not None
            await until("the scheduler's first pass", listening)
            proxy.freeze()
            began = time.monotonic()
            stopping = asyncio.create_task(supervisor.stop())
            await asyncio.wait({stopping}, timeout=30)  # not asyncio.timeout: that would wait for a hung stop
            took = time.monotonic() - began
            proxy.thaw()
            if not stopping.done():  # was: its connection's release still waited for the server
                await asyncio.wait({stopping}, timeout=60)
                pytest.fail(f"the stop still waited for the database after {took:.1f} s")
            assert stopping.exception() is None, stopping.exception()
            # its bound (6 s) and the event loop's lateness at each of its bounded steps on a loaded machine (it took
            # 6.0 s on an idle one): before, more than 30 s
            assert took < 6.0 + 3.0, took
            # the end record, retried in the background, lands once the database answers (or the lost-run step's)
            await asyncio.wait({supervising}, timeout=30)
            assert supervising.done() and supervising.exception() is None
        assert (await pool.fetchval("SELECT status FROM runs WHERE id = $1", run_id)) == "failure"


async def test_the_loop_connection_dropped_on_a_database_that_does_not_answer_is_terminated(stack, tmp_path,
                                                                                        monkeypatch):
    """Scheduler._drop_connection (a pass's failure, a stop) on a server that stopped answering: its UNLISTEN and
    release given up at DROP_SECONDS and the connection terminated. Before, the UNLISTEN had no bound (then the pool's
    30-s command timeout, whose cancel waits for the server too): the loop was held as long as the server was away."""
    monkeypatch.setattr(scheduler, "DROP_SECONDS", 1.0)
    async with service_schema(stack, "task_scheduler_stop", MIGRATIONS) as pool:
        async with through_a_proxy(stack, pool) as (proxy, proxied):
            supervisor = scheduler_on(Scheduler, proxied, tmp_path, "dropping", TaskSettings(tick=60))
            try:
                async def listening() -> bool:
                    return supervisor.passes > 0 and supervisor._conn is not None
                await until("the scheduler's first pass", listening)
                conn = supervisor._conn._con  # the pool's proxy of it is detached once it is back in the pool
                proxy.freeze()
                began = time.monotonic()
                dropping = asyncio.create_task(supervisor._drop_connection())
                await asyncio.wait({dropping}, timeout=15)  # not asyncio.timeout: it would wait for a hung drop
                took = time.monotonic() - began
                proxy.thaw()
                if not dropping.done():  # was: the UNLISTEN still waited for the server
                    await asyncio.wait({dropping}, timeout=60)
                    pytest.fail(f"dropping the connection still waited for the database after {took:.1f} s")
                assert dropping.exception() is None, dropping.exception()
                assert took < 1.0 + 2.0, took
                assert conn.is_closed() and supervisor._conn is None
            finally:
                proxy.thaw()
                await supervisor.stop()
